/** Argument checks shared by the devices: offsets and lengths are non-negative safe integers. */
import { UsageError } from './errors.js';

/** Throws a UsageError unless `value` is a non-negative safe integer. */
export function checkUint(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new UsageError(`${what} must be a non-negative integer, got ${value}`);
  }
}

/** Throws a UsageError unless `[offset, offset+length)` is a valid byte range. */
export function checkRange(offset: number, length: number): void {
  checkUint(offset, 'offset');
  checkUint(length, 'length');
  if (!Number.isSafeInteger(offset + length)) {
    throw new UsageError(`range ${offset}+${length} is beyond the largest supported offset`);
  }
}

/** Throws a UsageError when a device is used after `close()`. */
export function checkOpen(closed: boolean): void {
  if (closed) throw new UsageError('device is closed');
}
