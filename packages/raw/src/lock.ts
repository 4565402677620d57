/**
 * Image locking as qemu's file-posix driver does it (block/file-posix.c, QEMU 7.2), so that tsimg
 * and qemu processes exclude each other exactly as two qemu processes would.
 *
 * qemu gives every user of a file a set of permissions it holds (`perm`) and a set it lets
 * others hold (`shared`), from BLK_PERM_* (bit i, i = 0..3). It turns them into shared (F_RDLCK)
 * fcntl locks on single bytes of the file — never on the data, only as a signal:
 * - byte RAW_LOCK_PERM_BASE + i (100…103) is locked while the user holds permission i;
 * - byte RAW_LOCK_SHARED_BASE + i (200…203) is locked while it does NOT share permission i.
 * A new user first locks its own bytes (raw_apply_lock_bytes), then tests (F_GETLK with F_WRLCK,
 * which ignores the locks of its own open file description) that nobody else holds a shared
 * byte of a permission it wants — `Failed to get "write" lock` — or a perm byte of a permission
 * it does not share — `Failed to get shared "write" lock` (raw_check_lock_bytes). Taking before
 * testing closes the race between two users starting at once: at least one of them sees the
 * other. On failure it unlocks what it took and reports qemu's hint
 * `Is another process using the image [NAME]?`.
 *
 * qemu uses open-file-description locks (F_OFD_SETLK) where the kernel has them, else POSIX
 * locks (F_SETLK), which belong to the process: then two opens in one process never conflict,
 * and closing any descriptor of the file drops all of the process's locks on it.
 */
import { LockError, UnsupportedError, strerror } from './errors.js';
import type { Errno, LockType, NativeFs } from './native.js';

/** qemu's permission bits (include/block/block-common.h, QEMU 7.2). */
export const BLK_PERM_CONSISTENT_READ = 0x01;
/** Writing guest-visible data. */
export const BLK_PERM_WRITE = 0x02;
/** Writes that leave the data as it reads (e.g. writing zeroes where zeroes read). */
export const BLK_PERM_WRITE_UNCHANGED = 0x04;
/** Changing the size of the file. */
export const BLK_PERM_RESIZE = 0x08;
/** Every permission. (Bit 0x10, the removed BLK_PERM_GRAPH_MOD, is not locked by QEMU 7.2.) */
export const BLK_PERM_ALL = 0x0f;

/** The first lock byte for held permissions (libvirt uses byte 0; qemu starts higher). */
export const RAW_LOCK_PERM_BASE = 100;
/** The first lock byte for permissions not shared with others. */
export const RAW_LOCK_SHARED_BASE = 200;

const PERM_BITS = [0, 1, 2, 3] as const; // qemu's PERM_FOREACH over BLK_PERM_ALL
const PERM_NAMES = ['consistent read', 'write', 'write unchanged', 'resize'] as const;

/** What one user of a file holds (`perm`) and lets others hold (`shared`), as BLK_PERM_* masks. */
export interface LockPermissions {
  perm: number;
  shared: number;
}

/** qemu's bdrv_perm_names: `"write, resize"` for WRITE | RESIZE. */
export function permNames(perm: number): string {
  return PERM_BITS.filter((i) => perm & (1 << i)).map((i) => PERM_NAMES[i]).join(', ');
}

/**
 * The bytes a user with these permissions keeps locked (F_RDLCK), ascending: 100 + i for each
 * held permission i, 200 + i for each permission i it does not share.
 */
export function lockedBytes({ perm, shared }: LockPermissions): number[] {
  const held = PERM_BITS.filter((i) => perm & (1 << i)).map((i) => RAW_LOCK_PERM_BASE + i);
  const unshared = PERM_BITS.filter((i) => !(shared & (1 << i))).map((i) => RAW_LOCK_SHARED_BASE + i);
  return [...held, ...unshared];
}

/** One test of raw_check_lock_bytes: the byte, and qemu's message when another user locks it. */
export interface LockTest {
  byte: number;
  message: string;
}

/**
 * The bytes a new user tests for other users' locks, in qemu's order, with qemu's messages: first
 * 200 + i for each permission i it wants (`Failed to get "<name>" lock`: someone does not share
 * it), then 100 + i for each permission i it does not share (`Failed to get shared "<name>"
 * lock`: someone holds it).
 */
export function conflictTests({ perm, shared }: LockPermissions): LockTest[] {
  const tests: LockTest[] = [];
  for (const i of PERM_BITS) {
    if (perm & (1 << i)) tests.push({ byte: RAW_LOCK_SHARED_BASE + i, message: `Failed to get "${PERM_NAMES[i]}" lock` });
  }
  for (const i of PERM_BITS) {
    if (!(shared & (1 << i))) tests.push({ byte: RAW_LOCK_PERM_BASE + i, message: `Failed to get shared "${PERM_NAMES[i]}" lock` });
  }
  return tests;
}

/**
 * The permissions qemu 7.2 takes on the file of an image opened by qemu-img / qemu-io (block.c
 * bdrv_default_perms_for_storage; checked against /proc/locks of a running qemu-io):
 * - `format` (qcow2 and other formats with metadata in the file): consistent read, plus write
 *   and resize when writable; shares only consistent read and write unchanged, or everything
 *   with `forceShare` (`-U`, read-only only). qemu-io on a qcow2 file: bytes 100, 101, 103, 201,
 *   203; with `-r`: 100, 201, 203; with `-r -U`: 100.
 * - raw (`format: false`): what the user asked for passes through — consistent read, write when
 *   writable, resize when `resize` (qemu-img's BDRV_O_RESIZE) — and everything is shared.
 *   qemu-io on a raw file: bytes 100, 101; with `-r`: 100.
 */
export function imageFilePermissions(options: {
  format: boolean;
  write: boolean;
  resize?: boolean;
  forceShare?: boolean;
}): LockPermissions {
  const { format, write } = options;
  if (format) {
    const perm = BLK_PERM_CONSISTENT_READ | (write ? BLK_PERM_WRITE | BLK_PERM_RESIZE : 0);
    const shared = options.forceShare ? BLK_PERM_ALL : BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;
    return { perm, shared };
  }
  const perm = BLK_PERM_CONSISTENT_READ | (write ? BLK_PERM_WRITE : 0) | (options.resize ? BLK_PERM_RESIZE : 0);
  return { perm, shared: BLK_PERM_ALL };
}

/**
 * What raw_co_create locks while it truncates a new image file: write and resize held, resize
 * not shared — so creating over an image in use fails instead of emptying it.
 */
export const CREATE_PERMISSIONS: LockPermissions = {
  perm: BLK_PERM_WRITE | BLK_PERM_RESIZE,
  shared: BLK_PERM_ALL & ~BLK_PERM_RESIZE,
};

/** The two fcntl calls image locking needs, on one byte (so tests can stand in for the kernel). */
export interface LockCalls {
  /** `'ofd'`: open-file-description locks; `'posix'`: per-process locks. */
  readonly kind: 'ofd' | 'posix';
  /** F_SETLK with F_RDLCK or F_UNLCK on `byte`; undefined on success, else the errno name. */
  set(fd: number, byte: number, type: 'read' | 'unlock'): Errno | undefined;
  /** F_GETLK with F_WRLCK on `byte`: true when another holder locks it. */
  test(fd: number, byte: number): boolean | { errno: Errno };
}

/** {@link LockCalls} on the native module, OFD or POSIX. */
export function nativeLockCalls(native: NativeFs, kind: 'ofd' | 'posix'): LockCalls {
  const ofd = kind === 'ofd';
  return {
    kind,
    set: (fd, byte, type) => native.setLock(fd, byte, 1, type, ofd),
    test: (fd, byte) => {
      const r: LockType | { errno: Errno } = native.testLock(fd, byte, 1, 'write', ofd);
      return typeof r === 'string' ? r !== 'unlock' : r;
    },
  };
}

/** qemu's file.locking: 'auto' locks when OFD locks exist; 'on' always (POSIX if need be). */
export type LockingMode = 'on' | 'off' | 'auto';

/**
 * The lock calls for `locking`, as raw_open_common decides (QEMU 7.2):
 * - 'off': undefined, no locking.
 * - 'auto': OFD locks when the kernel has them, else no locking (qemu is silent then).
 * - 'on': OFD locks, else POSIX locks with qemu's two-line warning through `warn`.
 * Without the native module tsimg cannot lock at all, which qemu never meets: 'on' throws an
 * UnsupportedError, 'auto' warns through `warn` (the image is then not protected) and returns
 * undefined. `why` says why the module is missing.
 */
export function lockCallsFor(
  locking: LockingMode,
  native: NativeFs | undefined,
  warn: (message: string) => void,
  why = 'not available',
): LockCalls | undefined {
  if (locking === 'off') return undefined;
  if (native === undefined) {
    const reason = `the native module tsimg_fs is ${why}`;
    if (locking === 'on') throw new UnsupportedError(`File locking requested but unavailable: ${reason}`, { errno: 'ENOTSUP' });
    warn(`File locking is unavailable (${reason}): this image is not protected against concurrent use by qemu or tsimg`);
    return undefined;
  }
  if (native.ofd) return nativeLockCalls(native, 'ofd');
  if (locking === 'auto') return undefined;
  warn(
    'File lock requested but OFD locking syscall is unavailable, falling back to POSIX file locks\n' +
      'Due to the implementation, locks can be lost unexpectedly.',
  );
  return nativeLockCalls(native, 'posix');
}

/**
 * The lock bytes one open file holds, with qemu's state: the permissions in force and the bits
 * whose bytes are locked (BDRVRawState perm / shared_perm / locked_perm / locked_shared_perm).
 * Create it with {@link acquireImageLock}.
 */
export class ImageLock {
  readonly fileName: string;
  readonly kind: 'ofd' | 'posix';
  readonly #fd: number;
  readonly #calls: LockCalls;
  #perm = 0;
  #shared = BLK_PERM_ALL;
  #lockedPerm = 0;
  #lockedShared = 0;
  #released = false;

  /** @internal use {@link acquireImageLock} */
  constructor(fd: number, calls: LockCalls, fileName: string) {
    this.#fd = fd;
    this.#calls = calls;
    this.kind = calls.kind;
    this.fileName = fileName;
  }

  /** The permissions in force. */
  get permissions(): LockPermissions {
    return { perm: this.#perm, shared: this.#shared };
  }

  /**
   * Changes the permissions (qemu's bdrv_check_perm then bdrv_set_perm: raw_handle_perm_lock's
   * PREPARE, then COMMIT). PREPARE locks the union of the old and new bytes and tests the new
   * permissions against other users; when that fails, ABORT unlocks back to the old state and a
   * LockError is thrown, the old permissions staying in force. COMMIT then unlocks the bytes
   * the new permissions no longer need. Only dropping permissions never fails (qemu skips
   * PREPARE for it, and ignores unlock errors).
   */
  update({ perm, shared }: LockPermissions): void {
    if (this.#released) throw new UnsupportedError(`The lock of '${this.fileName}' was released`);
    perm &= BLK_PERM_ALL;
    shared &= BLK_PERM_ALL;
    if ((this.#perm | perm) !== this.#perm || (this.#shared & shared) !== this.#shared) {
      const failed =
        this.#apply(this.#perm | perm, ~this.#shared | ~shared, false) ?? this.#check({ perm, shared });
      if (failed !== undefined) {
        this.#apply(this.#perm, ~this.#shared, true); // ABORT: only unlocks
        throw failed;
      }
    }
    this.#apply(perm, ~shared, true); // COMMIT
    this.#perm = perm;
    this.#shared = shared;
  }

  /**
   * Unlocks every byte, as qemu does when the last user goes away (permissions 0, all shared).
   * Call it before closing the descriptor; closing alone would also drop OFD locks.
   */
  release(): void {
    if (this.#released) return;
    this.#apply(0, 0, true);
    this.#perm = 0;
    this.#shared = BLK_PERM_ALL;
    this.#released = true;
  }

  /** raw_apply_lock_bytes with s: lock what is wanted and not yet locked; unlock the rest. */
  #apply(permBits: number, unsharedBits: number, unlock: boolean): LockError | undefined {
    for (const [base, wanted, locked] of [
      [RAW_LOCK_PERM_BASE, permBits, 'perm'],
      [RAW_LOCK_SHARED_BASE, unsharedBits, 'shared'],
    ] as const) {
      for (const i of PERM_BITS) {
        const bit = 1 << i;
        const byte = base + i;
        const have = (locked === 'perm' ? this.#lockedPerm : this.#lockedShared) & bit;
        let errno: Errno | undefined;
        if (wanted & bit && !have) {
          errno = this.#calls.set(this.#fd, byte, 'read');
          if (errno !== undefined) return lockError(`Failed to lock byte ${byte}`, errno);
        } else if (unlock && have && !(wanted & bit)) {
          errno = this.#calls.set(this.#fd, byte, 'unlock');
          // qemu reports this as a warning only; the byte stays marked locked, as in qemu.
          if (errno !== undefined) return lockError(`Failed to unlock byte ${byte}`, errno, true);
        } else {
          continue;
        }
        if (locked === 'perm') this.#lockedPerm ^= bit;
        else this.#lockedShared ^= bit;
      }
    }
    return undefined;
  }

  /** raw_check_lock_bytes: the first test another user's lock fails, with qemu's hint. */
  #check(wanted: LockPermissions): LockError | undefined {
    for (const { byte, message } of conflictTests(wanted)) {
      const r = this.#calls.test(this.#fd, byte);
      if (r === false) continue;
      const hint = `Is another process using the image [${this.fileName}]?`;
      return r === true ? new LockError(message, { hint }) : lockError(message, r.errno, false, hint);
    }
    return undefined;
  }
}

/**
 * raw_lock_error_setg_errno: EAGAIN and EACCES mean "locked by someone else" and are not
 * spelled out; other errors end in their strerror text (unlock errors always do).
 */
function lockError(message: string, errno: Errno, always = false, hint?: string): LockError {
  const elide = !always && (errno === 'EAGAIN' || errno === 'EACCES');
  return new LockError(elide ? message : `${message}: ${strerror(errno)}`, { errno, hint });
}

/**
 * Takes qemu's locks for `permissions` on the open descriptor `fd` of `fileName` (the name is
 * only for the hint): lock, then test against other users, as a qemu open does. Throws a
 * LockError (code 'locked') with qemu's message and hint when another user conflicts; nothing
 * stays locked then.
 */
export function acquireImageLock(fd: number, permissions: LockPermissions, fileName: string, calls: LockCalls): ImageLock {
  const lock = new ImageLock(fd, calls, fileName);
  lock.update(permissions);
  return lock;
}
