/**
 * ReadOnlySource: what the read-only byte sources (BlobDevice, HttpDevice) share — argument
 * checks, zeroes past the end, refused changes, and a block status of all data (such a source
 * says nothing of holes). A source supplies its size and the reading of in-range bytes.
 */
import { checkOpen, checkRange } from './assert.js';
import type { BlockDevice, BlockStatus } from './block-device.js';
import { ReadOnlyError, UsageError } from './errors.js';
import { BDRV_SECTOR_SIZE } from './limits.js';

async function refuseChange(): Promise<never> {
  throw new ReadOnlyError();
}

/**
 * The block status of a device that says nothing of holes (a Blob, a URL, an OPFS file): data
 * up to `size` rounded up to whole sectors (the block layer counts sectors, so a partial last
 * one is data, as file-posix says), zero past that.
 */
export function allDataStatus(size: number, offset: number, length: number): BlockStatus {
  if (length < 1) throw new UsageError('blockStatus length must be at least 1');
  const end = Math.ceil(size / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE;
  if (offset >= end) return { kind: 'zero', offset, length };
  return { kind: 'data', offset, length: Math.min(length, end - offset), hostOffset: offset };
}

/** A read-only device over a source of fixed size; writes, discards and resizes are refused. */
export abstract class ReadOnlySource implements BlockDevice {
  readonly readOnly = true;
  #closed = false;

  abstract size(): number;

  /** Fills `into` from `offset`; the range lies inside the source. */
  protected abstract readInside(offset: number, into: Uint8Array): Promise<void>;

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkOpen(this.#closed);
    checkRange(offset, into.length);
    const end = Math.min(offset + into.length, this.size());
    // Past the end reads as zeroes, as the file driver's does.
    if (end < offset + into.length) into.fill(0, Math.max(0, end - offset));
    if (end > offset) await this.readInside(offset, into.subarray(0, end - offset));
  }

  readonly write = refuseChange;
  readonly writeZeroes = refuseChange;
  readonly discard = refuseChange;
  readonly resize = refuseChange;

  async flush(): Promise<void> {
    checkOpen(this.#closed);
  }

  /** All data (see allDataStatus). */
  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    checkOpen(this.#closed);
    checkRange(offset, length);
    return allDataStatus(this.size(), offset, length);
  }

  /** Unknown (qemu-img info: "disk size: unavailable"). */
  async allocatedSize(): Promise<undefined> {
    checkOpen(this.#closed);
    return undefined;
  }

  async close(): Promise<void> {
    checkOpen(this.#closed);
    this.#closed = true;
    this.closed();
  }

  /** Called once by close(), to let go of what the source holds. */
  protected closed(): void {}
}
