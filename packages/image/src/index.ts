/** @tsimg/image — images of any format: open, probe, chains, convert, compare, map, info, measure. */

export { findBackingImage } from './backing-chain.js';
export { blockStatusAbove, type ChainImage, type StatusAbove } from './block-status.js';
export { BLKHASH_BLOCK_SIZE, checksumImage, type ChecksumOptions } from './checksum.js';
export { commitGranularity, commitImage, type CommitOptions } from './commit.js';
export { compareImages, type CompareOptions, type CompareResult } from './compare.js';
export { bench, type BenchOptions } from './bench.js';
export { convert, type ConvertOptions, type ConvertTargetOptions } from './convert-api.js';
export { convertCopy, type ConvertCopyOptions } from './convert.js';
export { DEFAULT_FORMATS, findFormat, luksFormat, luksHeaderIo, qcow2Format, rawFormat } from './formats.js';
export {
  type CreatableFormat, createImage, FILE_OPTS, findCreatableFormat, nbdLocation, protocolPath, targetHostFile, tooLarge,
} from './image-create.js';
export { openForCheckAs } from './image-check.js';
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
  type CheckOpenContext,
  type CheckSession,
  type CreateContext,
  type FormatCheck,
  type FormatCreation,
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
export {
  checkHttpBaseDirectory, type FileResolver, type HostFile, type HttpLocation, httpImageName, openHostFile, setHostFilePermissions,
} from './http-location.js';
export { type ImageLocation, locateImage, locateImageFromOptions } from './location.js';
export { type MapEntry, mapImage, type MapOptions, type MappedImage } from './map.js';
export { MEASURABLE_FORMATS, measure, type MeasureSource } from './measure.js';
export { openImage, type OpenImageOptions } from './open.js';
export { type NbdAddress } from './nbd/address.js';
export { NbdClient, type NbdClientOptions } from './nbd/client.js';
export { createOnNbd } from './nbd/create-target.js';
export { imageBitmapContext } from './nbd/bitmap-context.js';
export { type NbdBitmap, type NbdExport } from './nbd/export.js';
export { type NbdListenAddress, NbdServer, type NbdServerOptions } from './nbd/server.js';
export {
  dataFileLock, imageFileLock, type NodePermissions, NO_PERMISSIONS, type OpenFlags, openingPermissions, topNodePermissions,
} from './permissions.js';
export { fullBackingFilename, resolveRelative } from './paths.js';
export { isQDict, jsonString, qdictEntries, qdictOrder, qscalarText, type QValue, tdbHash, toQemuJsonLine } from './qobject-json.js';
export { resizeImage, type ResizeImageOptions } from './resize.js';
export { convertToStream, type StreamConvertOptions } from './stream-convert.js';
export { guestChunks, imageReadable, imageReadableStream, type ImageReadOptions } from './stream-read.js';
export { StreamSink } from './stream-sink.js';
export { imageWritable, type ImageWriteOptions } from './stream-write.js';
export { probeFormat } from './probe.js';
export {
  hasHelpOption, isValidOptionList, mergeOptDescs, optionHelpLines, type OptDesc, type OptEntry, type OptType, parseOptValue, QemuOpts,
  splitOptionList, strtosz, type StrtoszResult, strtou64Auto,
} from './qemu-opts.js';
export { changeBackingFile, rebaseImage, type RebaseOptions } from './rebase.js';
export { QCOW2_OPTS, type Qcow2CreateEncryption, qcow2CreateOptionsOf } from './qcow2-create.js';
export { QEMU_CREATABLE, QEMU_FORMATS, uncreatableFormatMessage } from './qemu-drivers.js';
export { RawImage } from './raw-image.js';
export { openTemporaryOverlay } from './temporary-overlay.js';
