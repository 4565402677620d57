/**
 * tsimg for browsers: what a page needs of @tsimg/raw, @tsimg/qcow2 and @tsimg/image, bundled
 * by web/build.mjs with the `*.browser.ts` variants (no host files, no worker threads, deflate
 * through DecompressionStream, zstd through WebAssembly).
 */
export { BlobDevice, HttpDevice, type HttpDeviceOptions, HttpError, MemoryDevice, TsimgError, type BlockDevice } from '../packages/raw/src/index.js';
export { createQcow2, type Qcow2CreateOptions } from '../packages/qcow2/src/index.js';
export {
  collectImageInfo, collectImageInfoList, convertCopy, type FileResolver, type Image, type ImageInfo, type MapEntry, mapImage, openImage,
} from '../packages/image/src/index.js';
