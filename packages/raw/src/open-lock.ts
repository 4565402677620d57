/**
 * The locks a FileDevice takes when it opens a file: qemu's create lock around emptying a new
 * file (raw_co_create), then the caller's permissions (raw_handle_perm_lock), by file.locking.
 */
import fs from 'node:fs';
import { call } from './fs-call.js';
import { acquireImageLock, CREATE_PERMISSIONS, type ImageLock, type LockCalls, lockCallsFor, type LockingMode, type LockPermissions, nativeLockCalls } from './lock.js';
import { type NativeFs, nativeStatus } from './native.js';

/** The open options that decide the locks (see FileDeviceOptions). */
export interface OpenLockOptions {
  create?: boolean;
  lock?: LockPermissions;
  locking?: LockingMode;
  onWarning?: (message: string) => void;
  native?: boolean;
}

/**
 * Takes the open's locks on `fd` and, for `create`, empties the file while holding the create
 * lock. Returns the lock calls to use for later permission changes and the lock now held.
 */
export async function lockAtOpen(
  fd: number,
  path: string,
  options: OpenLockOptions,
  blockDevice: boolean,
  native: NativeFs | undefined,
): Promise<{ lockCalls: LockCalls | undefined; lock: ImageLock | undefined }> {
  const locking = options.locking ?? 'auto';
  const warn = options.onWarning ?? ((message: string) => process.emitWarning(message, 'TsimgWarning'));
  const why = options.native === false ? 'disabled by the caller' : nativeStatus();
  const lockCalls = options.lock !== undefined || locking === 'on' ? lockCallsFor(locking, native, warn, why) : undefined;
  let lock: ImageLock | undefined;
  try {
    if (options.create && !blockDevice) {
      // raw_co_create locks with whatever fcntl the kernel has, whatever file.locking says;
      // only 'off' (which qemu-img create cannot say) skips it here.
      const createCalls = lockCalls ?? (locking !== 'off' && native ? nativeLockCalls(native, native.ofd ? 'ofd' : 'posix') : undefined);
      if (createCalls !== undefined) lock = acquireImageLock(fd, CREATE_PERMISSIONS, path, createCalls);
      await call((cb) => fs.ftruncate(fd, 0, cb));
      if (lock !== undefined && (options.lock === undefined || lockCalls === undefined)) {
        lock.release();
        lock = undefined;
      }
    }
    if (options.lock !== undefined && lockCalls !== undefined) {
      if (lock !== undefined) lock.update(options.lock);
      else lock = acquireImageLock(fd, options.lock, path, lockCalls);
    }
  } catch (err) {
    lock?.release();
    throw err;
  }
  return { lockCalls, lock };
}
