/** @tsimg/raw — the bottom of tsimg's block layer. */

export { alignedBuffer } from './aligned-buffer.js';
export { type BlockDevice, type BlockStatus, type WriteZeroesOptions, writeParts } from './block-device.js';
export { BlobDevice } from './blob-device.js';
export { type OpfsDeviceOptions, OpfsDevice, type OpfsDirectoryHandle, type OpfsFileHandle } from './opfs-device.js';
export { CountingDevice, countingDevice, type DeviceCounts } from './counting.js';
export {
  createFile,
  type CreateFileOptions,
  fillZeroes,
  preallocateZeroes,
  type RawPreallocation,
  truncateWithPreallocation,
} from './create-raw.js';
export {
  CorruptError,
  errorWithCode,
  FormatError,
  HttpError,
  IoError,
  LimitError,
  LockError,
  NotFoundError,
  ReadOnlyError,
  strerror,
  systemError,
  TsimgError,
  type TsimgErrorCode,
  UnsupportedError,
  UsageError,
} from './errors.js';
export { type FaultPlan, FaultyDevice, faultyDevice } from './faulty.js';
export { FileDevice, type FileDeviceOptions, type FileLockState, lockingAvailable } from './file-device.js';
export { HttpDevice, type HttpDeviceOptions } from './http/http-device.js';
export { BDRV_MAX_LENGTH, BDRV_REQUEST_MAX_BYTES, BDRV_SECTOR_SIZE, INT_MAX } from './limits.js';
export {
  BLK_PERM_ALL,
  BLK_PERM_CONSISTENT_READ,
  BLK_PERM_RESIZE,
  BLK_PERM_WRITE,
  BLK_PERM_WRITE_UNCHANGED,
  imageFilePermissions,
  type LockingMode,
  type LockPermissions,
} from './lock.js';
export { MemoryDevice, type MemoryDeviceOptions } from './memory-device.js';
export { type NativeXts, nativeXts } from './native-xts.js';
export { readOnlyDevice } from './read-only.js';
export { allZero, bytesEqual } from './byte-compare.js';
export { dataRunLength, isZero, zeroRunLength } from './zero.js';
