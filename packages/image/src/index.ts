/** @tsimg/image — images of any format: open, probe, chains, convert, compare, map, info, measure. */

export { findBackingImage } from './backing-chain.js';
export { blockStatusAbove, type ChainImage, type StatusAbove } from './block-status.js';
export { commitGranularity, commitImage, type CommitOptions } from './commit.js';
export { compareImages, type CompareOptions, type CompareResult } from './compare.js';
export { bench, type BenchOptions } from './bench.js';
export { convert, type ConvertOptions, type ConvertTargetOptions } from './convert-api.js';
export { convertCopy, type ConvertCopyOptions } from './convert.js';
export { DEFAULT_FORMATS, findFormat, luksFormat, luksHeaderIo, qcow2Format, rawFormat } from './formats.js';
export { LuksImage } from './luks-image.js';
export {
  type FormatInfo,
  type ImageBitmap,
  type Image,
  type ImageFormat,
  type LayerContext,
  type SnapshotCreateOptions,
  type BitmapAction,
  type SourceBitmap,
  type SnapshotSelector,
  type AmendOptions,
  type TruncateOptions,
} from './image.js';
export {
  type ImageInfo,
  type ImageInfoResult,
  type ImageInfoSpecific,
  type SnapshotInfo,
} from './info-types.js';
export {
  collectImageInfo,
  collectImageInfoList,
  type CollectInfoListOptions,
  type CollectInfoOptions,
} from './info.js';
export { type ImageLocation, locateImage, locateImageFromOptions } from './location.js';
export { type MapEntry, mapImage, type MapOptions, type MappedImage } from './map.js';
export { MEASURABLE_FORMATS, measure, type MeasureSource } from './measure.js';
export { openImage, type OpenImageOptions } from './open.js';
export {
  dataFileLock, imageFileLock, type NodePermissions, NO_PERMISSIONS, type OpenFlags, openingPermissions, topNodePermissions,
} from './permissions.js';
export { fullBackingFilename, resolveRelative } from './paths.js';
export { resizeImage, type ResizeImageOptions } from './resize.js';
export { probeFormat } from './probe.js';
export { changeBackingFile, rebaseImage, type RebaseOptions } from './rebase.js';
export { RawImage } from './raw-image.js';
