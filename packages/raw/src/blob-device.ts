/**
 * BlobDevice: a read-only BlockDevice over a `Blob` (a browser `File` from an `<input>` or a
 * drop, or any Blob in Node), read with `blob.slice(a, b).arrayBuffer()`.
 */
import { checkOpen, checkRange } from './assert.js';
import type { BlockDevice, BlockStatus } from './block-device.js';
import { IoError, ReadOnlyError, UsageError } from './errors.js';
import { BDRV_SECTOR_SIZE } from './limits.js';

/** A Blob read by slices; writes, discards and resizes are refused. */
export class BlobDevice implements BlockDevice {
  readonly readOnly = true;
  readonly #blob: Blob;
  #closed = false;

  /** Reads `blob` (its size is fixed: a File changed on disk makes its reads fail). */
  constructor(blob: Blob) {
    this.#blob = blob;
  }

  size(): number {
    return this.#blob.size;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkOpen(this.#closed);
    checkRange(offset, into.length);
    const end = Math.min(offset + into.length, this.#blob.size);
    // Past the end reads as zeroes, as the file driver's does.
    if (end < offset + into.length) into.fill(0, Math.max(0, end - offset));
    if (end <= offset) return;
    let bytes: ArrayBuffer;
    try {
      bytes = await this.#blob.slice(offset, end).arrayBuffer();
    } catch (err) {
      // A File whose bytes changed or went away since it was picked (NotReadableError).
      throw new IoError(`Could not read the file at byte ${offset}: ${(err as Error).message}`, { cause: err, errno: 'EIO' });
    }
    into.set(new Uint8Array(bytes), 0);
  }

  async write(): Promise<never> {
    throw new ReadOnlyError();
  }

  async writeZeroes(): Promise<never> {
    throw new ReadOnlyError();
  }

  async discard(): Promise<never> {
    throw new ReadOnlyError();
  }

  async resize(): Promise<never> {
    throw new ReadOnlyError();
  }

  async flush(): Promise<void> {
    checkOpen(this.#closed);
  }

  /** All data (a Blob says nothing of holes), in whole sectors as the block layer counts. */
  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    checkOpen(this.#closed);
    checkRange(offset, length);
    if (length < 1) throw new UsageError('blockStatus length must be at least 1');
    const end = Math.ceil(this.#blob.size / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE;
    if (offset >= end) return { kind: 'zero', offset, length };
    return { kind: 'data', offset, length: Math.min(length, end - offset), hostOffset: offset };
  }

  async allocatedSize(): Promise<undefined> {
    checkOpen(this.#closed);
    return undefined;
  }

  async close(): Promise<void> {
    checkOpen(this.#closed);
    this.#closed = true;
  }
}
