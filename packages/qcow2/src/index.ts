/** @tsimg/qcow2 — the qcow2 image format. */

export { copyPersistentBitmaps, type PersistentBitmap } from './bitmap-copy.js';
export {
  checkErrnoText,
  type CheckImage,
  checkImage,
  type CheckLog,
  type CheckOutcome,
  type CheckResult,
  finishRepair,
  FIX_ERRORS,
  FIX_LEAKS,
  openForCheck,
  repairDirty,
} from './check/check.js';
export { type CompressPool, createCompressPool } from './compress/compress-pool.js';
export { type CompressionType } from './compress/compress.js';
export {
  createQcow2,
  type Qcow2CreateEncryption,
  type Qcow2CreateOptions,
  type Qcow2Preallocation,
  type ResolvedQcow2CreateOptions,
  resolveQcow2CreateOptions,
} from './create/create.js';
export { planQcow2Stream, type Qcow2StreamLayout, type StreamCluster } from './create/stream-layout.js';
export { type BitmapAction, type SourceBitmap } from './engine/bitmap-ops.js';
export { type AmendOptions, type BackingDevice, Qcow2Image, type ResizeOptions, type ResizePreallocation, type SnapshotCreateOptions } from './engine/image.js';
export { loadQcow2Metadata, openQcow2Metadata, type Qcow2Metadata } from './engine/open-checks.js';
export { type Qcow2OpenOptions } from './engine/open.js';
export { loadBitmapDirectory } from './format/bitmap-directory.js';
export { encodeByteString } from './format/byte-string.js';
export { findExtension, loadHeader, type Qcow2Header } from './format/header.js';
export { loadSnapshots, type Qcow2Snapshot } from './format/snapshot.js';
export { AUTOCLEAR_BITMAPS, INCOMPAT_DATA_FILE, QCOW2_MAGIC } from './format/types.js';
export {
  type ImageInfoSpecificQcow2,
  type Qcow2BitmapInfo,
  type Qcow2ImageInfo,
  qcow2ImageInfo,
  type SnapshotInfo,
} from './info.js';
export {
  type MeasureBitmap,
  type MeasureInput,
  measureQcow2,
  type MeasureResult,
  type Qcow2MeasureOptions,
} from './measure.js';
export { type CipherAlg, type CipherMode, type HashAlg, type IvgenAlg } from './crypto/cipher.js';
export { amendLuks, type EncryptionAmend } from './crypto/luks-amend.js';
export { type LuksInfo } from './crypto/luks-header.js';
export { hasLuksFormat, type LuksAmendOptions, type LuksCreateOptions, type LuksIo, luksPayloadBytes, LuksVolume } from './crypto/luks.js';
export { type Secrets, secretAsUtf8 } from './crypto/secrets.js';
