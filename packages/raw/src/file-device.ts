/**
 * FileDevice: a host file as a BlockDevice, on node:fs positioned I/O, keeping the file sparse.
 *
 * Measured (Node 20, page cache warm, 256 MiB in 64 KiB … 8 MiB blocks): the callback API
 * wrapped in a Promise beats `fs/promises` FileHandle for reads (64 KiB: 2.3 vs 1.8 GB/s;
 * 1 MiB: 15.8 vs 10.9 GB/s) and ties on writes, so the callback API is used.
 *
 * `blockStatus` reports allocation as qemu's file-posix driver does, when it can:
 * - With SEEK_DATA/SEEK_HOLE (Linux, and the optional native module `fs-ext` installed — see
 *   seek.ts; loaded on the first blockStatus, not at start-up): a data extent runs from the
 *   asked offset to the next hole, a hole to the next data, and a hole with no data after it
 *   (lseek says ENXIO) runs to the end of the request, past EOF. Blocks written with zeroes are
 *   data, as in `qemu-img map`; nothing is read. Finding one extent costs two lseek calls, so a
 *   1 TiB sparse file with a few extents is walked in well under a millisecond.
 * - Otherwise (no `fs-ext`, not Linux, or `allocation: 'scan'`), it reads the file and reports
 *   zero runs found in the content at a 4 KiB granularity (the usual file-system block), see
 *   {@link FILE_STATUS_GRANULARITY}: then blocks written with zeroes are zero. Reading a hole is
 *   not free: the kernel fills page-cache pages with zeroes, ≈0.8 s per GiB the first time. One
 *   shortcut avoids it for files without any allocated block (a fresh `create`): on file systems
 *   whose `st_blocks` counts every allocated and delayed-allocation block (ext2/3/4, xfs, btrfs,
 *   tmpfs), a file of 64 KiB or more with 0 blocks is all holes. Elsewhere (FUSE, NFS, ...)
 *   st_blocks is not trusted.
 * Both report everything past the end of the file as `zero`.
 *
 * Node has no fallocate (punch hole, zero range), so:
 * - `writeZeroes`/`discard` whose range reaches the end of the file truncate down to the start
 *   of the range and back up: the tail becomes a hole. This is two ftruncate calls, not one
 *   atomic fallocate — a crash in between leaves the file short (it reads back as zeroes past
 *   the new end, so only the size is wrong). Every other I/O on the device waits meanwhile.
 * - Inside the file, zeroes are written in 4 MiB chunks from one zero buffer, so the range
 *   becomes allocated. With `mayUnmap` (and for `discard`), chunks that already read as zero
 *   are skipped instead, so holes stay holes — a read is cheaper than a write; with
 *   SEEK_DATA/SEEK_HOLE the holes are skipped without even reading them.
 */
import fs from 'node:fs';
import { checkOpen, checkRange, checkUint } from './assert.js';
import type { BlockDevice, BlockStatus, WriteZeroesOptions } from './block-device.js';
import { ReadOnlyError, systemError, UsageError } from './errors.js';
import { findAllocation, loadLseek, type Lseek } from './seek.js';
import { dataRunLength, isZero, zeroRunLength } from './zero.js';

/** Options for {@link FileDevice.open}. */
export interface FileDeviceOptions {
  /** Open read-only: writes, discards and resizes throw a ReadOnlyError. */
  readOnly?: boolean;
  /** Create the file if missing and truncate it to 0 bytes if present (like `qemu-img create`). */
  create?: boolean;
  /**
   * `'async'` (default): reads and writes run on libuv's thread pool, so several can be in flight.
   * `'sync'`: blocking `readSync`/`writeSync`. Measured from the page cache, a 64 KiB read then
   * costs ≈3 µs instead of ≈30–50 µs (a 4 KiB write ≈7 µs instead of ≈20 µs; from 1 MiB on
   * the two are equal), but the event loop waits for every I/O, so there is no I/O concurrency
   * and a slow disk stalls the process. Good for metadata-heavy single-threaded work.
   */
  io?: 'async' | 'sync';
  /**
   * How `blockStatus` finds data and zeroes. `'auto'` (default): SEEK_DATA/SEEK_HOLE when the
   * optional `fs-ext` module is available (see {@link hasSeekData}), else `'scan'`. `'scan'`:
   * read the file and look for zero blocks. See the module comment for what each reports.
   */
  allocation?: 'auto' | 'scan';
  /**
   * qemu's `cache.no-flush` (part of cache mode `unsafe`, qemu-img convert's default for its
   * target): `flush` (and the flush in `close`) return at once without syncing. Measured on a
   * 1 GiB convert here, the fdatasync calls cost ~0.3 s of a ~1 s run.
   */
  noFlush?: boolean;
}

// seek.ts is not in index.ts; its public part is exported through here.
export { type Allocation, findAllocation, hasSeekData, type Lseek, SEEK_DATA, SEEK_HOLE } from './seek.js';

/** blockStatus classifies a file's bytes as data or zero in aligned blocks of this size. */
export const FILE_STATUS_GRANULARITY = 4096;
/** One blockStatus call reads at most this much; a longer run is reported in pieces. */
export const FILE_STATUS_SCAN_LIMIT = 64 * 1024 * 1024;

const SCAN_FIRST_CHUNK = 64 * 1024; // grows ×2 per read: short runs stay cheap, long runs fast
const SCAN_MAX_CHUNK = 8 * 1024 * 1024;
const ZERO_CHUNK = 4 * 1024 * 1024;
const IO_MAX = 1 << 30;
// statfs f_type magics of the file systems whose st_blocks includes every data block.
const BLOCKS_TRUSTED = new Set([0xef53, 0x58465342, 0x9123683e, 0x01021994]); // ext*, xfs, btrfs, tmpfs
const BLOCKS_TRUSTED_MIN_SIZE = 64 * 1024; // smaller files may keep data inline in the inode // a single read()/write() moves at most 2 GiB - 1 on Linux

/** A regular host file as a sparse, growable BlockDevice. Create it with {@link FileDevice.open}. */
export class FileDevice implements BlockDevice {
  /** The path the device was opened with. */
  readonly fileName: string;
  readonly readOnly: boolean;
  readonly #fd: number;
  readonly #syncIo: boolean;
  readonly #blocksTrusted: boolean;
  readonly #noFlush: boolean;
  // SEEK_DATA/SEEK_HOLE: undefined until the first blockStatus looks for it, false without it.
  #lseek: Lseek | false | undefined;
  #size: number;
  #closed = false;
  #scanBuffer: Uint8Array | undefined;
  #zeroes: Uint8Array | undefined;
  // Gate: ordinary I/O runs concurrently ("shared"); truncating operations run alone.
  #active = 0;
  #gate: Promise<void> | undefined;
  #onIdle: (() => void) | undefined;

  private constructor(
    fileName: string, fd: number, size: number, readOnly: boolean, syncIo: boolean, blocksTrusted: boolean,
    scanOnly: boolean,
    noFlush: boolean,
  ) {
    this.fileName = fileName;
    this.#lseek = scanOnly ? false : undefined;
    this.#fd = fd;
    this.#syncIo = syncIo;
    this.#blocksTrusted = blocksTrusted;
    this.#noFlush = noFlush;
    this.#size = size;
    this.readOnly = readOnly;
  }

  /**
   * Opens (or with `create`, creates or truncates) a regular file. Throws a TsimgError with
   * code `not-found` for a missing file, `io` for other OS errors (`"Could not open 'x': …"`),
   * `usage` (EINVAL) for something that is not a regular file — the messages of qemu's
   * file-posix driver. The size is read once here and then tracked: changes made to the file by
   * others while it is open are not seen.
   */
  static async open(path: string, options: FileDeviceOptions = {}): Promise<FileDevice> {
    const readOnly = options.readOnly ?? false;
    const create = options.create ?? false;
    if (readOnly && create) throw new UsageError(`Could not create '${path}': opened read-only`);
    const { O_RDONLY, O_RDWR, O_CREAT, O_TRUNC } = fs.constants;
    const flags = readOnly ? O_RDONLY : O_RDWR | (create ? O_CREAT | O_TRUNC : 0);
    const verb = create ? 'create' : 'open';
    let fd: number;
    try {
      fd = await call<number>((cb) => fs.open(path, flags, 0o644, cb));
    } catch (err) {
      throw systemError(err, `Could not ${verb} '${path}'`);
    }
    try {
      const stat = await call<fs.Stats>((cb) => fs.fstat(fd, cb));
      if (!stat.isFile()) {
        // qemu's file-posix message; a directory opened read-write failed earlier with EISDIR.
        throw new UsageError(`'file' driver requires '${path}' to be a regular file`, { errno: 'EINVAL' });
      }
      const fsType = await call<fs.StatsFs>((cb) => fs.statfs(path, cb)).then((st) => st.type, () => undefined);
      const blocksTrusted = fsType !== undefined && BLOCKS_TRUSTED.has(fsType);
      const scanOnly = options.allocation === 'scan';
      const noFlush = options.noFlush ?? false;
      return new FileDevice(path, fd, stat.size, readOnly, options.io === 'sync', blocksTrusted, scanOnly, noFlush);
    } catch (err) {
      fs.close(fd, () => {});
      throw systemError(err, `Could not open '${path}'`);
    }
  }

  size(): number {
    checkOpen(this.#closed);
    return this.#size;
  }

  /** Reads `into.length` bytes at `offset`; bytes past the end of the file read as zeroes. */
  async read(offset: number, into: Uint8Array): Promise<void> {
    checkOpen(this.#closed);
    checkRange(offset, into.length);
    if (into.length === 0) return;
    await this.#shared(() => this.#readFully(offset, into));
  }

  /** Writes `data` at `offset`, growing the file when it ends past the end. */
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#checkWritable();
    checkRange(offset, data.length);
    if (data.length === 0) return;
    await this.#shared(() => this.#writeFully(offset, data));
  }

  /**
   * Makes the range read as zeroes, growing the file if it ends past the end (as a hole).
   * Holes are kept or made where the module comment says; elsewhere zeroes are written.
   */
  async writeZeroes(offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
    this.#checkWritable();
    checkRange(offset, length);
    if (length === 0) return;
    await this.#zeroRange(offset, offset + length, options.mayUnmap ?? false, true);
  }

  /** Deallocates what it can of the range (never past the end); the range then reads as zeroes. */
  async discard(offset: number, length: number): Promise<void> {
    this.#checkWritable();
    checkRange(offset, length);
    if (length === 0) return;
    await this.#zeroRange(offset, offset + length, true, false);
  }

  /** fdatasync: every completed write is durable. A no-op on a read-only or `noFlush` device. */
  async flush(): Promise<void> {
    checkOpen(this.#closed);
    if (this.readOnly || this.#noFlush) return;
    await this.#shared(() => this.#sys(`Could not flush '${this.fileName}'`, (cb) => fs.fdatasync(this.#fd, cb)));
  }

  /** Sets the file's size with ftruncate: growing adds a hole, shrinking drops the tail. */
  async resize(size: number): Promise<void> {
    this.#checkWritable();
    checkUint(size, 'size');
    await this.#exclusive(() => this.#truncate(size));
  }

  /**
   * Data or zero for the run at `offset`, never longer than `length`; past the end of the file:
   * zero. `hostOffset` is `offset` (a file maps 1:1). With SEEK_DATA/SEEK_HOLE (see the module
   * comment) this is qemu's raw_co_block_status (file-posix.c, QEMU 7.2):
   * - in data: data up to the next hole — which may be the (unaligned) end of the file;
   * - in a hole: zero up to the next data;
   * - in the hole that runs to EOF (ENXIO): zero for all of `length`, past EOF;
   * - when lseek cannot tell (an error other than ENXIO, a hole dug between the two calls):
   *   data, "pretend there are no holes", for `length` but not past EOF.
   * qemu rounds a data run up to request_alignment, which is 1 byte for files opened without
   * O_DIRECT (raw_probe_alignment), as tsimg's are — so nothing is rounded. The first-block
   * quirk of qemu is not here: `allocate_first_block` writes the first 4 KiB of a file when qemu
   * creates or grows it from size 0 (raw_regular_truncate), and blockStatus then sees data there.
   *
   * Without it the file is read from `offset` rounded down to 4 KiB, and the run is the maximal
   * sequence of 4 KiB blocks that are all zero, or that each hold a non-zero byte, scanning at
   * most 64 MiB per call; a zero run reaching the end of the file continues past it.
   */
  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    checkOpen(this.#closed);
    checkRange(offset, length);
    if (length < 1) throw new UsageError('blockStatus length must be at least 1');
    return this.#shared(async () => {
      const size = this.#size;
      if (offset >= size) return { kind: 'zero', offset, length, hostOffset: offset };
      const lseek = this.#seeker();
      if (lseek !== undefined) return this.#seekStatus(lseek, offset, length, size);
      if (this.#allHoles(size)) return { kind: 'zero', offset, length, hostOffset: offset };
      return this.#scanStatus(offset, length, size);
    });
  }

  /** SEEK_DATA/SEEK_HOLE, looked for on first use (see seek.ts); undefined without it. */
  #seeker(): Lseek | undefined {
    if (this.#lseek === undefined) this.#lseek = loadLseek() ?? false;
    return this.#lseek === false ? undefined : this.#lseek;
  }

  /** blockStatus from SEEK_DATA/SEEK_HOLE, mapped as raw_co_block_status does. */
  #seekStatus(lseek: Lseek, offset: number, length: number, size: number): BlockStatus {
    const end = offset + length;
    const found = findAllocation(lseek, this.#fd, offset);
    let kind: 'data' | 'zero';
    let runEnd: number;
    switch (found.kind) {
      case 'trailing-hole':
        [kind, runEnd] = ['zero', end];
        break;
      case 'hole':
        [kind, runEnd] = ['zero', Math.min(found.data, end)];
        break;
      case 'data':
        // The tracked size caps it: past it reads return zeroes (a file grown behind our back).
        [kind, runEnd] = ['data', Math.min(found.hole, end, size)];
        break;
      case 'unknown':
        [kind, runEnd] = ['data', Math.min(end, size)];
        break;
    }
    return { kind, offset, length: runEnd - offset, hostOffset: offset };
  }

  /** blockStatus from the file's content (the fallback, see the module comment). */
  async #scanStatus(offset: number, length: number, size: number): Promise<BlockStatus> {
    const end = offset + length;
    const g = FILE_STATUS_GRANULARITY;
    const scanEnd = Math.min(end, size, offset + FILE_STATUS_SCAN_LIMIT);
    let pos = offset - (offset % g);
    let zero: boolean | undefined;
    let chunk = SCAN_FIRST_CHUNK;
    const buffer = this.#takeScanBuffer();
    try {
      while (pos < scanEnd) {
        const view = buffer.subarray(0, Math.min(chunk, scanEnd - pos));
        await this.#readFully(pos, view);
        zero ??= isZero(view.subarray(0, g));
        const run = zero ? zeroRunLength(view, g) : dataRunLength(view, g);
        pos += run;
        if (run < view.length) break;
        chunk = Math.min(chunk * 2, SCAN_MAX_CHUNK);
      }
    } finally {
      this.#scanBuffer = buffer;
    }
    const runEnd = zero && pos >= size ? end : pos;
    return { kind: zero ? 'zero' : 'data', offset, length: runEnd - offset, hostOffset: offset };
  }

  /** The file's allocated blocks × 512 (fstat), what `du` reports. */
  async allocatedSize(): Promise<number> {
    checkOpen(this.#closed);
    const stat = await this.#sys(`Could not stat '${this.fileName}'`, (cb: Callback<fs.Stats>) => fs.fstat(this.#fd, cb));
    return stat.blocks * 512;
  }

  /** Flushes (unless read-only) and closes the file descriptor, even when the flush fails. */
  async close(): Promise<void> {
    checkOpen(this.#closed);
    try {
      await this.flush();
    } finally {
      this.#closed = true;
      await this.#exclusive(() => this.#sys(`Could not close '${this.fileName}'`, (cb) => fs.close(this.#fd, cb)));
    }
  }

  /** True when the file is known to hold no data block at all (see the module comment). */
  #allHoles(size: number): boolean {
    if (!this.#blocksTrusted || size < BLOCKS_TRUSTED_MIN_SIZE) return false;
    // fstatSync costs ≈1 µs; the async call would cost a thread-pool round trip.
    return this.#sysSync(`Could not stat '${this.fileName}'`, () => fs.fstatSync(this.#fd)).blocks === 0;
  }

  #checkWritable(): void {
    checkOpen(this.#closed);
    if (this.readOnly) throw new ReadOnlyError();
  }

  async #zeroRange(start: number, end: number, mayUnmap: boolean, grow: boolean): Promise<void> {
    if (mayUnmap && end >= this.#size) {
      // The range covers the tail: cut it off, then (writeZeroes past the end) grow back.
      const done = await this.#exclusive(async () => {
        const size = this.#size;
        if (end < size) return false; // a write grew the file meanwhile: zero the usual way
        if (start < size) await this.#truncate(start);
        const newSize = grow ? end : size;
        if (newSize !== this.#size) await this.#truncate(newSize);
        return true;
      });
      if (done) return;
    }
    const inside = Math.min(end, this.#size);
    if (start < inside) await this.#shared(() => this.#writeZeroChunks(start, inside, mayUnmap));
    if (grow && end > this.#size) {
      await this.#exclusive(async () => {
        if (end > this.#size) await this.#truncate(end);
      });
    }
  }

  /**
   * Writes zeroes over `[start, end)` in big chunks; with `skipZero`, leaves zero chunks alone —
   * holes found with SEEK_HOLE are skipped without reading them, other chunks are read and
   * skipped when they hold only zeroes.
   */
  async #writeZeroChunks(start: number, end: number, skipZero: boolean): Promise<void> {
    const zeroes = (this.#zeroes ??= new Uint8Array(ZERO_CHUNK));
    const buffer = skipZero ? this.#takeScanBuffer() : undefined;
    const lseek = skipZero ? this.#seeker() : undefined;
    try {
      for (let pos = start; pos < end; ) {
        let n = Math.min(end - pos, ZERO_CHUNK);
        if (lseek !== undefined) {
          const found = findAllocation(lseek, this.#fd, pos);
          if (found.kind === 'trailing-hole') break;
          if (found.kind === 'hole') {
            pos = Math.min(found.data, end);
            continue;
          }
          if (found.kind === 'data') n = Math.min(n, found.hole - pos);
        }
        if (buffer !== undefined) {
          const view = buffer.subarray(0, n);
          await this.#readFully(pos, view);
          if (isZero(view)) {
            pos += n;
            continue;
          }
        }
        await this.#writeFully(pos, zeroes.subarray(0, n));
        pos += n;
      }
    } finally {
      if (buffer !== undefined) this.#scanBuffer = buffer;
    }
  }

  async #readFully(offset: number, into: Uint8Array): Promise<void> {
    let done = 0;
    // Bytes past the cached size are zeroes: no syscall for them.
    const stop = Math.max(0, Math.min(into.length, this.#size - offset));
    while (done < stop) {
      const pos = offset + done;
      const want = Math.min(stop - done, IO_MAX);
      const what = `error while reading '${this.fileName}' at byte ${pos}`;
      const n = this.#syncIo
        ? this.#sysSync(what, () => fs.readSync(this.#fd, into, done, want, pos))
        : await this.#sys(what, (cb: Callback<number>) => fs.read(this.#fd, into, done, want, pos, cb));
      if (n === 0) break; // the file shrank under us: the rest reads as zeroes
      done += n;
    }
    into.fill(0, done);
  }

  async #writeFully(offset: number, data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const pos = offset + done;
      const want = Math.min(data.length - done, IO_MAX);
      const what = `error while writing '${this.fileName}' at byte ${pos}`;
      done += this.#syncIo
        ? this.#sysSync(what, () => fs.writeSync(this.#fd, data, done, want, pos))
        : await this.#sys(what, (cb: Callback<number>) => fs.write(this.#fd, data, done, want, pos, cb));
    }
    this.#size = Math.max(this.#size, offset + data.length);
  }

  async #truncate(size: number): Promise<void> {
    await this.#sys(`Could not truncate '${this.fileName}'`, (cb) => fs.ftruncate(this.#fd, size, cb));
    this.#size = size;
  }

  #takeScanBuffer(): Uint8Array {
    const buffer = this.#scanBuffer ?? new Uint8Array(SCAN_MAX_CHUNK);
    this.#scanBuffer = undefined; // a concurrent caller allocates its own
    return buffer;
  }

  async #sys<T = void>(what: string, start: (cb: Callback<T>) => void): Promise<T> {
    try {
      return await call(start);
    } catch (err) {
      throw systemError(err, what);
    }
  }

  #sysSync<T>(what: string, run: () => T): T {
    try {
      return run();
    } catch (err) {
      throw systemError(err, what);
    }
  }

  async #shared<T>(fn: () => Promise<T>): Promise<T> {
    while (this.#gate !== undefined) await this.#gate;
    this.#active++;
    try {
      return await fn();
    } finally {
      if (--this.#active === 0) this.#onIdle?.();
    }
  }

  async #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.#gate !== undefined) await this.#gate;
    let release!: () => void;
    this.#gate = new Promise((resolve) => (release = resolve));
    try {
      while (this.#active > 0) await new Promise<void>((resolve) => (this.#onIdle = resolve));
      this.#onIdle = undefined;
      return await fn();
    } finally {
      this.#gate = undefined;
      release();
    }
  }
}

type Callback<T> = (err: NodeJS.ErrnoException | null, value: T) => void;

/** Runs a node:fs callback-style call as a Promise (faster than fs/promises, see above). */
function call<T = void>(start: (cb: Callback<T>) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => start((err, value) => (err ? reject(err) : resolve(value))));
}
