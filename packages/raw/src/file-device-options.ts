/** The options of FileDevice.open and what a FileDevice reports of its locks. */
import type { LockingMode, LockPermissions } from './lock.js';

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
  /**
   * Take qemu's image lock for these permissions (see lock.ts, {@link imageFilePermissions}) at
   * open, and drop it at close. A conflicting user makes `open` throw a LockError with qemu's
   * message and hint. Without it no lock is held (except while `create` empties the file).
   */
  lock?: LockPermissions;
  /**
   * qemu's `file.locking`: `'auto'` (default) locks with OFD locks when the kernel has them
   * and does not lock otherwise; `'on'` falls back to POSIX locks (with qemu's warning); `'off'`
   * never locks, not even for `create`. Without the native module nothing can lock: `'on'`
   * throws an UnsupportedError and `'auto'` calls `onWarning` (when a lock was asked for).
   */
  locking?: LockingMode;
  /**
   * Receives warnings (one line, or a first line and further lines, as qemu prints them after
   * `warning: `). Default: process.emitWarning, so nothing is lost when no one listens.
   */
  onWarning?: (message: string) => void;
  /** `false`: do as if the native module were missing (for tests of the fallback paths). */
  native?: boolean;
}

/** Which locks a FileDevice holds: qemu's lock kind and permissions, or `'none'`. */
export type FileLockState =
  | { kind: 'none' }
  | { kind: 'ofd' | 'posix'; permissions: LockPermissions };

