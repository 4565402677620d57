/** @tsimg/raw — the bottom of tsimg's block layer. */
export * from './errors.js';
export * from './block-device.js';
export * from './zero.js';
export { checkRange, checkUint } from './assert.js';
export * from './memory-device.js';
export * from './file-device.js';
export * from './read-only.js';
export * from './counting.js';
export * from './faulty.js';
export * from './create-raw.js';
export {
  acquireImageLock, BLK_PERM_ALL, BLK_PERM_CONSISTENT_READ, BLK_PERM_RESIZE, BLK_PERM_WRITE, BLK_PERM_WRITE_UNCHANGED,
  conflictTests, CREATE_PERMISSIONS, ImageLock, imageFilePermissions, type LockCalls, lockCallsFor, lockedBytes,
  type LockingMode, type LockPermissions, type LockTest, nativeLockCalls, permNames, RAW_LOCK_PERM_BASE,
  RAW_LOCK_SHARED_BASE,
} from './lock.js';
export { type Errno, loadNative, type LockType, type NativeFs, nativeStatus } from './native.js';
export { BDRV_SECTOR_SIZE, INT_MAX, BDRV_REQUEST_MAX_BYTES, BDRV_MAX_LENGTH } from './limits.js';
