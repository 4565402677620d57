/**
 * MemoryDevice: a growable, sparse in-memory BlockDevice for tests. Bytes live in fixed-size
 * pages (64 KiB by default) created on first write, so a 1 TiB device costs nothing until
 * written; zeroed and discarded pages are dropped again.
 */
import { checkOpen, checkRange, checkUint } from './assert.js';
import type { BlockDevice, BlockStatus, WriteZeroesOptions } from './block-device.js';
import { ReadOnlyError, UsageError } from './errors.js';
import { isZero } from './zero.js';

/** Options for {@link MemoryDevice}. */
export interface MemoryDeviceOptions {
  /** Initial size in bytes; defaults to `data.length`, or 0. */
  size?: number;
  /** Initial contents (copied); all-zero pages of it are not stored. */
  data?: Uint8Array;
  /** Refuse writes, discards and resizes with a ReadOnlyError. */
  readOnly?: boolean;
  /** Page size in bytes, a power of two from 512; default 64 KiB. */
  pageSize?: number;
}

/**
 * An in-memory BlockDevice with host-file semantics: reads past the end return zeroes, writes
 * and `writeZeroes` past the end grow the device, `discard` stops at the end.
 *
 * `blockStatus` reports pages held in memory as `data` and everything else (never written,
 * zeroed, discarded, beyond the end) as `zero`; `allocatedSize` is pages held × page size.
 */
export class MemoryDevice implements BlockDevice {
  readonly readOnly: boolean;
  /** Bytes per page: the allocation and blockStatus granularity. */
  readonly pageSize: number;
  readonly #pages = new Map<number, Uint8Array>();
  #size: number;
  #closed = false;

  constructor(options: MemoryDeviceOptions = {}) {
    const pageSize = options.pageSize ?? 64 * 1024;
    if (!Number.isSafeInteger(pageSize) || pageSize < 512 || (pageSize & (pageSize - 1)) !== 0) {
      throw new UsageError(`page size must be a power of two of at least 512, got ${pageSize}`);
    }
    this.pageSize = pageSize;
    this.readOnly = options.readOnly ?? false;
    const size = options.size ?? options.data?.length ?? 0;
    checkUint(size, 'size');
    this.#size = size;
    if (options.data !== undefined) {
      this.#store(0, options.data.subarray(0, size));
      for (const [index, page] of this.#pages) if (isZero(page)) this.#pages.delete(index);
    }
  }

  /** A copy of the whole device, `size()` bytes (also works after `close()`). */
  contents(): Uint8Array {
    const out = new Uint8Array(this.#size);
    this.#load(0, out);
    return out;
  }

  size(): number {
    checkOpen(this.#closed);
    return this.#size;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkOpen(this.#closed);
    checkRange(offset, into.length);
    this.#load(offset, into);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#checkWritable();
    checkRange(offset, data.length);
    if (data.length === 0) return;
    this.#store(offset, data);
    this.#size = Math.max(this.#size, offset + data.length);
  }

  async writeZeroes(offset: number, length: number, _options?: WriteZeroesOptions): Promise<void> {
    this.#checkWritable();
    checkRange(offset, length);
    if (length === 0) return;
    // Pages are dropped whether or not unmapping is allowed: memory has no "allocated zeroes".
    this.#zero(offset, Math.min(offset + length, this.#size));
    this.#size = Math.max(this.#size, offset + length);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.#checkWritable();
    checkRange(offset, length);
    this.#zero(offset, Math.min(offset + length, this.#size));
  }

  async flush(): Promise<void> {
    checkOpen(this.#closed);
  }

  async resize(size: number): Promise<void> {
    this.#checkWritable();
    checkUint(size, 'size');
    // Invariant: bytes at and past #size are zero in every held page, so growing needs nothing.
    if (size < this.#size) this.#zero(size, this.#size);
    this.#size = size;
  }

  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    checkOpen(this.#closed);
    checkRange(offset, length);
    if (length < 1) throw new UsageError('blockStatus length must be at least 1');
    const ps = this.pageSize;
    const end = offset + length;
    let index = Math.floor(offset / ps);
    if (this.#pages.has(index)) {
      while (this.#pages.has(index + 1) && (index + 1) * ps < end) index++;
      return { kind: 'data', offset, length: Math.min(end, (index + 1) * ps) - offset };
    }
    // A zero run lasts until the next held page; scan the keys, not the (maybe huge) range.
    let next = Infinity;
    for (const i of this.#pages.keys()) if (i > index && i < next) next = i;
    return { kind: 'zero', offset, length: Math.min(end, next * ps) - offset };
  }

  async allocatedSize(): Promise<number> {
    checkOpen(this.#closed);
    return this.#pages.size * this.pageSize;
  }

  async close(): Promise<void> {
    checkOpen(this.#closed);
    this.#closed = true;
  }

  #checkWritable(): void {
    checkOpen(this.#closed);
    if (this.readOnly) throw new ReadOnlyError();
  }

  /** Copies the device's bytes at `offset` into `into`; missing pages read as zeroes. */
  #load(offset: number, into: Uint8Array): void {
    const ps = this.pageSize;
    let done = 0;
    while (done < into.length) {
      const pos = offset + done;
      const inPage = pos % ps;
      const n = Math.min(ps - inPage, into.length - done);
      const page = this.#pages.get((pos - inPage) / ps);
      if (page === undefined) into.fill(0, done, done + n);
      else into.set(page.subarray(inPage, inPage + n), done);
      done += n;
    }
  }

  #store(offset: number, data: Uint8Array): void {
    const ps = this.pageSize;
    let done = 0;
    while (done < data.length) {
      const pos = offset + done;
      const inPage = pos % ps;
      const n = Math.min(ps - inPage, data.length - done);
      const index = (pos - inPage) / ps;
      let page = this.#pages.get(index);
      if (page === undefined) this.#pages.set(index, (page = new Uint8Array(ps)));
      page.set(data.subarray(done, done + n), inPage);
      done += n;
    }
  }

  /** Zeroes `[start, end)`: drops whole pages, clears parts of others (dropping them if now zero). */
  #zero(start: number, end: number): void {
    if (start >= end) return;
    const ps = this.pageSize;
    const first = Math.floor(start / ps);
    const last = Math.floor((end - 1) / ps);
    const zeroPage = (index: number): void => {
      const page = this.#pages.get(index);
      if (page === undefined) return;
      const from = Math.max(start - index * ps, 0);
      const to = Math.min(end - index * ps, ps);
      if (from > 0 || to < ps) {
        page.fill(0, from, to);
        if (!isZero(page)) return;
      }
      this.#pages.delete(index);
    };
    // Walk whichever is smaller: the page range or the pages held.
    if (last - first + 1 > this.#pages.size) {
      for (const index of [...this.#pages.keys()]) if (index >= first && index <= last) zeroPage(index);
    } else {
      for (let index = first; index <= last; index++) zeroPage(index);
    }
  }
}
