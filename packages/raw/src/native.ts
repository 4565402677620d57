/**
 * The optional native module `tsimg_fs` (native/tsimg_fs.c, built at `npm install` by
 * native/build.mjs): the host-file calls Node's fs lacks — fcntl byte-range locks (OFD or
 * POSIX), fallocate, the block-device ioctls BLKGETSIZE64 / BLKDISCARD / BLKZEROOUT, and
 * preadv2(RWF_NOWAIT) for reading cached data without a thread-pool round trip.
 *
 * It is loaded on the first call of {@link loadNative}, never at import time, and only on
 * Linux. When it was not built (no compiler at install time, TSIMG_SKIP_NATIVE), does not load,
 * or TSIMG_NATIVE=off is set in the environment, {@link loadNative} returns undefined; callers
 * then fall back (FileDevice writes zeroes instead of fallocate) or report that they cannot
 * (image locking says it is unavailable: nothing pretends to lock).
 *
 * The calls are synchronous, one syscall each: an fcntl lock or a fallocate on a local file
 * costs microseconds, less than a thread-pool round trip; qemu makes the lock calls from its
 * main loop too.
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

/** The result of a native call that failed: the errno name ('EAGAIN', 'ENOTSUP', ...). */
export type Errno = string;

/** The lock types of fcntl, by name. */
export type LockType = 'read' | 'write' | 'unlock';

/** The native calls, wrapped: results are numbers, failures the errno name. */
export interface NativeFs {
  /** True when the kernel has open-file-description locks (probed as qemu_probe_lock_ops does). */
  readonly ofd: boolean;
  /** fcntl F_OFD_SETLK (`ofd`) or F_SETLK on `[start, start+len)`; undefined on success. */
  setLock(fd: number, start: number, len: number, type: LockType, ofd: boolean): Errno | undefined;
  /**
   * fcntl F_OFD_GETLK (`ofd`) or F_GETLK: whether a lock of `type` on the range would
   * conflict with one held through another open file description (or process, for POSIX
   * locks): 'unlock' when nothing conflicts, else the conflicting lock's type.
   */
  testLock(fd: number, start: number, len: number, type: 'read' | 'write', ofd: boolean): LockType | { errno: Errno };
  /** fallocate(fd, mode, offset, len); undefined on success. */
  fallocate(fd: number, mode: number, offset: number, len: number): Errno | undefined;
  /** ioctl BLKGETSIZE64: a block device's size in bytes. */
  blockDeviceSize(fd: number): number | { errno: Errno };
  /** ioctl BLKDISCARD on `[offset, offset+len)`; undefined on success. */
  blockDiscard(fd: number, offset: number, len: number): Errno | undefined;
  /** ioctl BLKZEROOUT on `[offset, offset+len)`; undefined on success. */
  blockZeroOut(fd: number, offset: number, len: number): Errno | undefined;
  /**
   * preadv2(RWF_NOWAIT) into `into` at `offset`: the bytes the page cache held (a short count
   * or an EAGAIN errno when not all or nothing was cached). Absent from older builds.
   */
  preadNoWait?: (fd: number, into: Uint8Array, offset: number) => number | { errno: Errno };
  /**
   * AES-XTS of whole 512-byte sectors in place on libuv's thread pool (tsimg_xts.c), IVs from
   * sector numbers (plain64, or plain when `plain32`). Absent from builds without OpenSSL headers.
   */
  xtsCrypt?: (key: Uint8Array, data: Uint8Array, sector: number, plain32: boolean, encrypt: boolean) => Promise<void>;
  /** The fallocate mode bits of <linux/falloc.h>. */
  readonly FALLOC_FL_KEEP_SIZE: number;
  readonly FALLOC_FL_PUNCH_HOLE: number;
  readonly FALLOC_FL_ZERO_RANGE: number;
}

/** What native/tsimg_fs.c exports (see there); every call returns a result ≥ 0 or -errno. */
interface Binding {
  ABI: number;
  setlk(fd: number, start: number, len: number, type: number, ofd: number): number;
  getlk(fd: number, start: number, len: number, type: number, ofd: number): number;
  probeOfd(): number;
  fallocate(fd: number, mode: number, offset: number, len: number): number;
  blkGetSize64(fd: number): number;
  blkDiscard(fd: number, offset: number, len: number): number;
  blkZeroOut(fd: number, offset: number, len: number): number;
  /** Since the native module learnt it (same ABI: an older build just lacks it). */
  preadNoWait?(fd: number, into: Uint8Array, offset: number): number;
  xtsCrypt?(key: Uint8Array, data: Uint8Array, sector: number, plain32: boolean, encrypt: boolean): Promise<void>;
  F_RDLCK: number;
  F_WRLCK: number;
  F_UNLCK: number;
  FALLOC_FL_KEEP_SIZE: number;
  FALLOC_FL_PUNCH_HOLE: number;
  FALLOC_FL_ZERO_RANGE: number;
}

/** The binding version native/tsimg_fs.c reports; a stale build with another one is not used. */
const ABI = 1;

// The loaded binding, memoized for the process like any imported module (a failed load is
// remembered too, so a machine without the module does not retry the dlopen on every open).
let loaded: { native: NativeFs | undefined; why: string } | undefined;

/** The native module, loaded on the first call; undefined when it is missing (see above). */
export function loadNative(): NativeFs | undefined {
  loaded ??= tryLoad();
  return loaded.native;
}

/** Why {@link loadNative} returns undefined (for warnings), or 'loaded'. */
export function nativeStatus(): string {
  loadNative();
  return loaded?.why ?? 'loaded';
}

function tryLoad(): { native: NativeFs | undefined; why: string } {
  if (process.platform !== 'linux') return { native: undefined, why: `not built on ${process.platform}` };
  if (/^(off|0|false|no)$/i.test(process.env.TSIMG_NATIVE ?? '')) {
    return { native: undefined, why: 'disabled by TSIMG_NATIVE' };
  }
  const require = createRequire(import.meta.url);
  let lastError = 'not built (see the warning of npm install)';
  for (const file of candidates(require)) {
    try {
      const binding = require(file) as Binding;
      if (binding.ABI !== ABI) {
        lastError = `${file} is a stale build (ABI ${String(binding.ABI)}, want ${ABI}): run npm rebuild`;
        continue;
      }
      return { native: wrap(binding), why: 'loaded' };
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      // A missing file is the normal "not built" case; any other failure is worth naming.
      if (code !== 'MODULE_NOT_FOUND') lastError = `${file} does not load: ${err instanceof Error ? err.message : String(err)}`;
    }
  }
  return { native: undefined, why: lastError };
}

/**
 * Where the built module may be: beside the sources (src/ or dist/, both one level below the
 * package), and through the package's own name for code bundled elsewhere (the CLI bundle,
 * whose import.meta.url is the bundle's).
 */
function candidates(require: NodeJS.Require): string[] {
  const files = [new URL('../build/Release/tsimg_fs.node', import.meta.url).pathname];
  try {
    files.push(path.join(path.dirname(require.resolve('@tsimg/raw/package.json')), 'build', 'Release', 'tsimg_fs.node'));
  } catch {
    // Not resolvable from here (running from the package's own sources): the first one serves.
  }
  return [...new Set(files)];
}

function wrap(b: Binding): NativeFs {
  const names = errnoNames();
  const errno = (r: number): Errno => names.get(-r) ?? `E${-r}`;
  const status = (r: number): Errno | undefined => (r < 0 ? errno(r) : undefined);
  const lockType = { read: b.F_RDLCK, write: b.F_WRLCK, unlock: b.F_UNLCK } as const;
  const typeName = (t: number): LockType => (t === b.F_RDLCK ? 'read' : t === b.F_WRLCK ? 'write' : 'unlock');
  return {
    ofd: b.probeOfd() === 1,
    setLock: (fd, start, len, type, ofd) => status(b.setlk(fd, start, len, lockType[type], ofd ? 1 : 0)),
    testLock: (fd, start, len, type, ofd) => {
      const r = b.getlk(fd, start, len, lockType[type], ofd ? 1 : 0);
      return r < 0 ? { errno: errno(r) } : typeName(r);
    },
    fallocate: (fd, mode, offset, len) => status(b.fallocate(fd, mode, offset, len)),
    blockDeviceSize: (fd) => {
      const r = b.blkGetSize64(fd);
      return r < 0 ? { errno: errno(r) } : r;
    },
    blockDiscard: (fd, offset, len) => status(b.blkDiscard(fd, offset, len)),
    blockZeroOut: (fd, offset, len) => status(b.blkZeroOut(fd, offset, len)),
    preadNoWait:
      b.preadNoWait === undefined
        ? undefined
        : (fd, into, offset) => {
            const r = b.preadNoWait!(fd, into, offset);
            return r < 0 ? { errno: errno(r) } : r;
          },
    xtsCrypt: b.xtsCrypt?.bind(b),
    FALLOC_FL_KEEP_SIZE: b.FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE: b.FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE: b.FALLOC_FL_ZERO_RANGE,
  };
}

/** errno number → name, from Node's table; where Linux has two names for one number, the usual one. */
function errnoNames(): Map<number, Errno> {
  const names = new Map<number, Errno>();
  const preferred = ['EAGAIN', 'ENOTSUP', 'EDEADLK'];
  for (const name of preferred) {
    const n = (os.constants.errno as Record<string, number | undefined>)[name];
    if (n !== undefined) names.set(n, name);
  }
  for (const [name, n] of Object.entries(os.constants.errno)) if (!names.has(n)) names.set(n, name);
  return names;
}

/** True when the native module loads, so FileDevice can lock images and use fallocate. */
export function lockingAvailable(): boolean {
  return loadNative() !== undefined;
}
