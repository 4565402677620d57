/** readOnlyDevice: a view of a device that refuses every change. */
import type { BlockDevice, BlockStatus } from './block-device.js';
import { ReadOnlyError } from './errors.js';

/**
 * Wraps `device` so that `write`, `writeZeroes`, `discard` and `resize` throw a ReadOnlyError
 * (code `read-only`, "Block node is read-only") without reaching it. Reads, blockStatus and
 * flush pass through; `close` closes `device`.
 */
export function readOnlyDevice(device: BlockDevice): BlockDevice {
  const refuse = async (): Promise<never> => {
    throw new ReadOnlyError();
  };
  return {
    readOnly: true,
    size: (): number => device.size(),
    read: (offset: number, into: Uint8Array): Promise<void> => device.read(offset, into),
    write: refuse,
    writeZeroes: refuse,
    discard: refuse,
    flush: (): Promise<void> => device.flush(),
    resize: refuse,
    blockStatus: (offset: number, length: number): Promise<BlockStatus> => device.blockStatus(offset, length),
    allocatedSize: (): Promise<number | undefined> => device.allocatedSize(),
    close: (): Promise<void> => device.close(),
  };
}
