/**
 * FileDevice: a host file as a BlockDevice, on node:fs positioned I/O, keeping the file sparse.
 *
 * The callback API of node:fs is used (wrapped in Promises): it beat `fs/promises` for reads
 * and tied on writes (docs/performance.md).
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
 * Zeroing and discarding inside the file follow qemu's handle_aiocb_write_zeroes / _unmap /
 * discard: fallocate through the optional native module, else the fallbacks the package README
 * describes (truncating a tail, writing zero chunks, skipping holes).
 *
 * Image locking (lock.ts): with the `lock` option, the device takes qemu's lock bytes for the
 * given permissions at open — before it returns, so before any write — and drops them at close.
 * `create` takes qemu's create locks (raw_co_create) before it empties the file, so creating
 * over an image in use fails instead of destroying it.
 *
 * Host block devices (qemu's host_device driver): the size comes from BLKGETSIZE64 (or sysfs
 * without the native module), the device never grows ("Cannot grow device files"), every byte
 * reads as data in `blockStatus`, and `allocatedSize` is st_blocks × 512, which is 0.
 */
import fs from 'node:fs';
import { checkOpen, checkRange, checkUint } from './assert.js';
import type { BlockDevice, BlockStatus, WriteZeroesOptions } from './block-device.js';
import { IoError, ReadOnlyError, strerror, systemError, TsimgError, UsageError } from './errors.js';
import { InlineIo } from './inline-io.js';
import { call, type Callback, writevFully } from './fs-call.js';
import { openHostFile, type OpenedFile } from './file-open.js';
import { IoGate } from './io-gate.js';
import { acquireImageLock, type ImageLock, type LockCalls, type LockPermissions } from './lock.js';
import type { Errno, NativeFs } from './native.js';
import type { FileDeviceOptions, FileLockState } from './file-device-options.js';
import { findAllocation, loadLseek, type Lseek } from './seek.js';
import { dataRunLength, isZero, zeroRunLength } from './zero.js';

export type { FileDeviceOptions, FileLockState } from './file-device-options.js';

export { lockingAvailable } from './native.js';

// seek.ts is not in index.ts; its public part is exported through here.
export { type Allocation, findAllocation, hasSeekData, type Lseek, SEEK_DATA, SEEK_HOLE } from './seek.js';

/** blockStatus classifies a file's bytes as data or zero in aligned blocks of this size. */
export const FILE_STATUS_GRANULARITY = 4096;
/** One blockStatus call reads at most this much; a longer run is reported in pieces. */
export const FILE_STATUS_SCAN_LIMIT = 64 * 1024 * 1024;

const SCAN_FIRST_CHUNK = 64 * 1024; // grows ×2 per read: short runs stay cheap, long runs fast
const SCAN_MAX_CHUNK = 8 * 1024 * 1024;
const ZERO_CHUNK = 4 * 1024 * 1024;
const IO_MAX = 1 << 30; // a single read()/write() moves at most 2 GiB - 1 on Linux
const BLOCKS_TRUSTED_MIN_SIZE = 64 * 1024; // smaller files may keep data inline in the inode

/** A regular host file as a sparse, growable BlockDevice. Create it with {@link FileDevice.open}. */
export class FileDevice implements BlockDevice {
  /** The path the device was opened with. */
  readonly fileName: string;
  readonly readOnly: boolean;
  readonly #fd: number;
  readonly #syncIo: boolean;
  readonly #blocksTrusted: boolean;
  readonly #noFlush: boolean;
  /** A host block device (S_ISBLK): fixed size, no holes to find, fallocate on the device. */
  readonly blockDevice: boolean;
  readonly #native: NativeFs | undefined;
  readonly #inline: InlineIo;
  readonly #lockCalls: LockCalls | undefined;
  #lock: ImageLock | undefined;
  // fallocate modes found unsupported on this file (qemu's has_discard / has_write_zeroes).
  #noPunchHole = false;
  #noZeroRange = false;
  // SEEK_DATA/SEEK_HOLE: undefined until the first blockStatus looks for it, false without it.
  #lseek: Lseek | false | undefined;
  #size: number;
  #closed = false;
  #scanBuffer: Uint8Array | undefined;
  #zeroes: Uint8Array | undefined;
  // Ordinary I/O runs concurrently ("shared"); truncating operations run alone.
  readonly #gate = new IoGate();

  private constructor(fileName: string, file: OpenedFile, options: FileDeviceOptions) {
    this.fileName = fileName;
    this.readOnly = options.readOnly ?? false;
    this.blockDevice = file.blockDevice;
    this.#native = file.native;
    this.#inline = new InlineIo(file.fd, file.native, file.fsType);
    this.#lockCalls = file.lockCalls;
    this.#lock = file.lock;
    this.#lseek = options.allocation === 'scan' ? false : undefined;
    this.#fd = file.fd;
    this.#syncIo = options.io === 'sync';
    this.#blocksTrusted = file.blocksTrusted;
    this.#noFlush = options.noFlush ?? false;
    this.#size = file.size;
  }

  /**
   * Opens (or with `create`, creates or truncates) a regular file or a host block device. Throws
   * a TsimgError with code `not-found` for a missing file, `io` for other OS errors
   * (`"Could not open 'x': …"`), `usage` (EINVAL) for something that is neither a regular file
   * nor a block device — the messages of qemu's file-posix driver — and a LockError (code
   * `locked`) when the `lock` (or `create`'s lock) conflicts with another user. The size is read
   * once here and then tracked: changes made to the file by others while it is open are not seen.
   *
   * `create` is qemu's raw_co_create: open without truncating, lock (write and resize held,
   * resize unshared), test for other users, and only then truncate to 0.
   */
  static async open(path: string, options: FileDeviceOptions = {}): Promise<FileDevice> {
    const file = await openHostFile(path, options);
    return new FileDevice(path, file, options);
  }

  /**
   * Removes the host file at `path` if there is one: what a failed creation leaves is deleted
   * again, as qemu's image creation does. Never throws for a missing file.
   */
  static async remove(path: string): Promise<void> {
    await fs.promises.rm(path, { force: true });
  }

  /** Whether two paths name the same existing host file (same device and inode). */
  static async sameFile(a: string, b: string): Promise<boolean> {
    try {
      const [sa, sb] = await Promise.all([fs.promises.stat(a), fs.promises.stat(b)]);
      return sa.dev === sb.dev && sa.ino === sb.ino;
    } catch {
      return false;
    }
  }

  /** The locks this device holds (see the `lock` option). */
  lockState(): FileLockState {
    const lock = this.#lock;
    return lock === undefined ? { kind: 'none' } : { kind: lock.kind, permissions: lock.permissions };
  }

  /**
   * Changes the permissions this device holds, as a qemu reopen or permission change does
   * (e.g. from read-only to read-write use): see {@link ImageLock.update}. Throws a LockError,
   * keeping the old permissions, when another user conflicts. Without locking (`locking:
   * 'off'`, or 'auto' without OFD locks or the native module) there is nothing to change and it
   * returns false; true when the lock is held with the new permissions.
   */
  setPermissions(permissions: LockPermissions): boolean {
    checkOpen(this.#closed);
    if (this.#lockCalls === undefined) return false;
    if (this.#lock === undefined) this.#lock = acquireImageLock(this.#fd, permissions, this.fileName, this.#lockCalls);
    else this.#lock.update(permissions);
    return true;
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
    await this.#gate.shared(() => this.#readFully(offset, into));
  }

  /** Writes `data` at `offset`, growing the file when it ends past the end. */
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#checkWritable();
    checkRange(offset, data.length);
    if (data.length === 0) return;
    this.#checkDeviceEnd(offset + data.length, 'writing', offset);
    await this.#gate.shared(() => this.#writeFully(offset, data));
  }

  /**
   * Writes `parts` back to back from `offset` with pwritev: the qcow2 write path passes its
   * copy-on-write head and tail beside the guest data instead of copying the three into a new
   * buffer (up to 2 MiB allocated, zeroed and copied per partial-cluster write).
   */
  async writev(offset: number, parts: readonly Uint8Array[]): Promise<void> {
    this.#checkWritable();
    const length = parts.reduce((n, p) => n + p.length, 0);
    checkRange(offset, length);
    if (length === 0) return;
    this.#checkDeviceEnd(offset + length, 'writing', offset);
    await this.#gate.shared(async () => {
      if (this.#syncIo || length > IO_MAX) {
        for (let at = offset, i = 0; i < parts.length; at += parts[i++]!.length) await this.#writeFully(at, parts[i]!);
        return;
      }
      await writevFully(this.#fd, parts, offset, (err, pos) => systemError(err, `error while writing '${this.fileName}' at byte ${pos}`));
      this.#size = Math.max(this.#size, offset + length);
    });
  }

  /**
   * Makes the range read as zeroes, growing the file if it ends past the end (as a hole).
   * Holes are kept or made where the module comment says; elsewhere zeroes are written.
   */
  async writeZeroes(offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
    this.#checkWritable();
    checkRange(offset, length);
    if (length === 0) return;
    this.#checkDeviceEnd(offset + length, 'zeroing', offset);
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
    await this.#gate.shared(() => this.#sys(`Could not flush '${this.fileName}'`, (cb) => fs.fdatasync(this.#fd, cb)));
  }

  /**
   * Sets the file's size with ftruncate: growing adds a hole, shrinking drops the tail. A block
   * device keeps its size: growing throws qemu's "Cannot grow device files" (a UsageError,
   * EINVAL), a smaller or equal size does nothing (raw_co_truncate with exact=false, as
   * qemu-img resize and the format drivers call it).
   */
  async resize(size: number): Promise<void> {
    this.#checkWritable();
    checkUint(size, 'size');
    if (this.blockDevice) {
      if (size > this.#size) throw new UsageError('Cannot grow device files', { errno: 'EINVAL' });
      return;
    }
    await this.#gate.exclusive(() => this.#truncate(size));
  }

  /**
   * posix_fallocate over `[offset, offset+length)`: reserves the blocks (they read as zeroes)
   * and grows the file over them without writing data, as qemu's `falloc` preallocation does.
   * False when this host cannot (no native module, a block device, a file system without
   * fallocate): the caller then writes zeroes, as glibc's posix_fallocate itself falls back to.
   */
  async preallocate(offset: number, length: number): Promise<boolean> {
    this.#checkWritable();
    checkRange(offset, length);
    const native = this.#native;
    if (native === undefined || this.blockDevice) return false;
    if (length === 0) return true;
    return this.#gate.exclusive(async () => {
      const errno = native.fallocate(this.#fd, 0, offset, length);
      if (errno === undefined) {
        this.#size = Math.max(this.#size, offset + length);
        return true;
      }
      if (errno === 'ENOTSUP' || errno === 'ENOSYS' || errno === 'ENODEV') return false;
      throw new IoError(`Could not preallocate '${this.fileName}': ${strerror(errno)}`, { errno });
    });
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
    return this.#gate.shared(async () => {
      const size = this.#size;
      if (offset >= size) return { kind: 'zero', offset, length, hostOffset: offset };
      // qemu's host_device has no block status: the generic layer reports all of it as data.
      if (this.blockDevice) return { kind: 'data', offset, length: Math.min(length, size - offset), hostOffset: offset };
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

  /**
   * Flushes (unless read-only), drops the image lock and closes the file descriptor, even when
   * the flush fails.
   */
  async close(): Promise<void> {
    checkOpen(this.#closed);
    try {
      await this.flush();
    } finally {
      this.#closed = true;
      this.#lock?.release();
      this.#lock = undefined;
      await this.#gate.exclusive(() => this.#sys(`Could not close '${this.fileName}'`, (cb) => fs.close(this.#fd, cb)));
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

  /** A block device ends where it ends: what pwrite past its end says (ENOSPC). */
  #checkDeviceEnd(end: number, what: string, offset: number): void {
    if (!this.blockDevice || end <= this.#size) return;
    throw new IoError(`error while ${what} '${this.fileName}' at byte ${Math.max(offset, this.#size)}: ${strerror('ENOSPC')}`, { errno: 'ENOSPC' });
  }

  async #zeroRange(start: number, end: number, mayUnmap: boolean, grow: boolean): Promise<void> {
    const inside = Math.min(end, this.#size);
    if (this.#native !== undefined && start < inside) {
      // grow is true for writeZeroes, false for discard, which only punches holes (as qemu).
      const isWriteZeroes = grow;
      const done = await this.#gate.shared(async () => this.#fallocateZero(start, inside, mayUnmap, isWriteZeroes));
      if (done) {
        if (grow && end > this.#size) {
          await this.#gate.exclusive(async () => {
            if (end > this.#size) await this.#truncate(end);
          });
        }
        return;
      }
    }
    if (this.blockDevice) {
      // No truncation tricks on a device: write the zeroes.
      if (start < inside) await this.#gate.shared(() => this.#writeZeroChunks(start, inside, false));
      return;
    }
    if (mayUnmap && end >= this.#size) {
      // The range covers the tail: cut it off, then (writeZeroes past the end) grow back.
      const done = await this.#gate.exclusive(async () => {
        const size = this.#size;
        if (end < size) return false; // a write grew the file meanwhile: zero the usual way
        if (start < size) await this.#truncate(start);
        const newSize = grow ? end : size;
        if (newSize !== this.#size) await this.#truncate(newSize);
        return true;
      });
      if (done) return;
    }
    const within = Math.min(end, this.#size);
    if (start < within) await this.#gate.shared(() => this.#writeZeroChunks(start, within, mayUnmap));
    if (grow && end > this.#size) {
      await this.#gate.exclusive(async () => {
        if (end > this.#size) await this.#truncate(end);
      });
    }
  }

  /**
   * Zeroes `[start, end)` (inside the file) with fallocate, in qemu's order: with `mayUnmap`,
   * PUNCH_HOLE | KEEP_SIZE first (handle_aiocb_write_zeroes_unmap; discard is this alone), then
   * — for writeZeroes only — ZERO_RANGE (handle_aiocb_write_zeroes). ENOTSUP marks the mode
   * unsupported for this device, EINVAL (unaligned ranges on some file systems) and EBUSY try
   * the next way; false when none worked, so the caller writes zeroes. Other errors throw.
   */
  #fallocateZero(start: number, end: number, mayUnmap: boolean, zeroRange: boolean): boolean {
    const native = this.#native;
    if (native === undefined) return false;
    const len = end - start;
    const fail = (errno: Errno): never => {
      throw new IoError(`error while zeroing '${this.fileName}' at byte ${start}: ${strerror(errno)}`, { errno });
    };
    const soft = (errno: Errno): boolean => errno === 'ENOTSUP' || errno === 'EINVAL' || errno === 'EBUSY' || errno === 'ENOSYS' || errno === 'ENODEV' || errno === 'ENOTTY';
    const unsupported = (errno: Errno): boolean => errno !== 'EINVAL' && errno !== 'EBUSY';
    if (mayUnmap && !this.#noPunchHole) {
      const errno = native.fallocate(this.#fd, native.FALLOC_FL_PUNCH_HOLE | native.FALLOC_FL_KEEP_SIZE, start, len);
      if (errno === undefined) return true;
      if (!soft(errno)) fail(errno);
      if (unsupported(errno)) this.#noPunchHole = true;
    }
    if (zeroRange && !this.#noZeroRange) {
      const errno = native.fallocate(this.#fd, native.FALLOC_FL_ZERO_RANGE, start, len);
      if (errno === undefined) return true;
      if (!soft(errno)) fail(errno);
      if (unsupported(errno)) this.#noZeroRange = true;
    }
    return false;
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
      let n = this.#syncIo
        ? this.#sysSync(what, () => fs.readSync(this.#fd, into, done, want, pos))
        : this.#sysSync(what, () => this.#inline.read(into.subarray(done, done + want), pos));
      if (n === 0 && !this.#syncIo) n = await this.#sys(what, (cb: Callback<number>) => fs.read(this.#fd, into, done, want, pos, cb));
      if (n === 0) break; // the file shrank under us: the rest reads as zeroes
      done += n;
    }
    into.fill(0, done);
  }

  async #writeFully(offset: number, data: Uint8Array): Promise<void> {
    // (A block device's end is checked before: a short write there would return 0 forever.)
    let done = 0;
    while (done < data.length) {
      const pos = offset + done;
      const want = Math.min(data.length - done, IO_MAX);
      const what = `error while writing '${this.fileName}' at byte ${pos}`;
      let n = this.#syncIo
        ? this.#sysSync(what, () => fs.writeSync(this.#fd, data, done, want, pos))
        : this.#sysSync(what, () => this.#inline.write(data.subarray(done, done + want), pos));
      if (n === 0) n = await this.#sys(what, (cb: Callback<number>) => fs.write(this.#fd, data, done, want, pos, cb));
      done += n;
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
}
