/**
 * SEEK_DATA / SEEK_HOLE for {@link FileDevice}: qemu file-posix's `find_allocation`, and the
 * optional native module that gives Node the `lseek` whence values it lacks.
 *
 * Node's `fs` cannot seek with SEEK_DATA (3) or SEEK_HOLE (4). The optional dependency `fs-ext`
 * (a small nan/node-gyp addon) exposes `lseek` with any whence, passed through unchanged:
 * `seekSync(fd, offset, whence)` returns the new offset or throws an ErrnoException whose
 * `code` is the errno name ('ENXIO', ...). It is loaded with `require` on the first call of
 * {@link loadLseek}, never at import time, so start-up does not pay for the dlopen. When it is
 * missing (no compiler at install time: npm drops a failed optional dependency), fails to load,
 * or the platform is not Linux (macOS swaps the two whence numbers; other systems are
 * untested), {@link loadLseek} returns undefined and FileDevice scans the file's content instead.
 *
 * The synchronous call is used on purpose: qemu calls lseek directly in its coroutine too
 * (raw_co_block_status is not sent to the thread pool), a SEEK_DATA/SEEK_HOLE on a local file
 * system costs microseconds, a thread-pool round trip costs ≈30 µs, and fs-ext's asynchronous
 * variant queues its work on the main thread's loop, which is wrong inside a worker thread.
 */
import { createRequire } from 'node:module';

/** `lseek(fd, offset, whence)`: the new offset, or throws an error carrying the errno name in `code`. */
export type Lseek = (fd: number, offset: number, whence: number) => number;

/** Linux's whence for "the next offset at or after `offset` that holds data". */
export const SEEK_DATA = 3;
/** Linux's whence for "the next offset at or after `offset` in a hole (or EOF)". */
export const SEEK_HOLE = 4;

/**
 * Where `start` lies, as qemu's `find_allocation` (block/file-posix.c, QEMU 7.2) finds it:
 * - `data`: `start` holds data up to `hole`, the start of the next hole (or EOF);
 * - `hole`: `start` is in a hole that ends where data starts, at `data`;
 * - `trailing-hole`: `start` is in the hole that runs to EOF, or past EOF (lseek said ENXIO);
 * - `unknown`: the file system could not say (`errno` names why); qemu then reports data.
 */
export type Allocation =
  | { kind: 'data'; hole: number }
  | { kind: 'hole'; data: number }
  | { kind: 'trailing-hole' }
  | { kind: 'unknown'; errno: string };

/**
 * Finds the allocation at `start` with SEEK_DATA then, in data, SEEK_HOLE — case for case
 * as qemu's find_allocation (its D1–D4 and H1–H4 comments):
 * - SEEK_DATA fails with ENXIO: trailing hole or beyond EOF (D3); any other error: unknown (D4).
 * - SEEK_DATA lands before `start`: not a valid lseek result, unknown (qemu: -EIO).
 * - SEEK_DATA lands after `start`: a hole up to there (D2).
 * - SEEK_DATA returns `start`: data (D1); then SEEK_HOLE:
 *   - fails with ENXIO: the file was truncated behind our back, a trailing hole (H3);
 *     another error: unknown (H4), forgetting D1 as qemu does;
 *   - lands before `start`: unknown (EIO); after `start`: data up to there (H2);
 *   - returns `start`: a hole was dug between the two calls — unknown (qemu: -EBUSY).
 */
export function findAllocation(lseek: Lseek, fd: number, start: number): Allocation {
  const data = trySeek(lseek, fd, start, SEEK_DATA);
  if (typeof data === 'string') return data === 'ENXIO' ? { kind: 'trailing-hole' } : { kind: 'unknown', errno: data };
  if (data < start) return { kind: 'unknown', errno: 'EIO' };
  if (data > start) return { kind: 'hole', data };
  const hole = trySeek(lseek, fd, start, SEEK_HOLE);
  if (typeof hole === 'string') return hole === 'ENXIO' ? { kind: 'trailing-hole' } : { kind: 'unknown', errno: hole };
  if (hole < start) return { kind: 'unknown', errno: 'EIO' };
  if (hole > start) return { kind: 'data', hole };
  return { kind: 'unknown', errno: 'EBUSY' };
}

/** The new offset, or the errno name when lseek failed (anything else thrown is a bug: rethrown). */
function trySeek(lseek: Lseek, fd: number, offset: number, whence: number): number | string {
  try {
    return lseek(fd, offset, whence);
  } catch (err) {
    const code = (err as { code?: unknown } | null)?.code;
    if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) return code;
    throw err;
  }
}

/** The part of fs-ext tsimg uses. */
interface FsExt {
  seekSync(fd: number, offset: number, whence: number): number;
}

// The loaded binding, memoized for the process like any imported module (a failed load is
// remembered too, so a machine without fs-ext does not retry the require on every open).
let loaded: { lseek: Lseek | undefined } | undefined;

/**
 * `lseek` with SEEK_DATA/SEEK_HOLE from the optional `fs-ext` module, loaded on the first call;
 * undefined when it is not installed, does not load, or the platform is not Linux.
 */
export function loadLseek(): Lseek | undefined {
  loaded ??= { lseek: tryLoad() };
  return loaded.lseek;
}

/** True when {@link loadLseek} finds SEEK_DATA/SEEK_HOLE support (loads it if not yet loaded). */
export function hasSeekData(): boolean {
  return loadLseek() !== undefined;
}

function tryLoad(): Lseek | undefined {
  if (process.platform !== 'linux') return undefined;
  try {
    const fsExt = createRequire(import.meta.url)('fs-ext') as Partial<FsExt>;
    const seekSync = fsExt.seekSync;
    if (typeof seekSync !== 'function') return undefined;
    return (fd, offset, whence) => seekSync(fd, offset, whence);
  } catch {
    // Not installed (optional dependency skipped or its build failed) or the binary does not
    // load (built for another Node ABI): FileDevice falls back to scanning content.
    return undefined;
  }
}
