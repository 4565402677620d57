/**
 * tsimg for browsers: what a page needs of @tsimg/raw, @tsimg/qcow2 and @tsimg/image, bundled
 * by web/build.mjs with the `*.browser.ts` variants (no host files, no worker threads, deflate
 * through DecompressionStream, zstd through WebAssembly). Imported module by module, not
 * through the packages' index files, so that what the page does not use (NBD, checksums over
 * worker threads, Node streams) is not even resolved.
 */
export { BlobDevice } from '../packages/raw/src/blob-device.js';
export { type BlockDevice } from '../packages/raw/src/block-device.js';
export { HttpError, TsimgError, UnsupportedError } from '../packages/raw/src/errors.js';
export { HttpDevice, type HttpDeviceOptions } from '../packages/raw/src/http/http-device.js';
export { MemoryDevice } from '../packages/raw/src/memory-device.js';
export { OpfsDevice, type OpfsDeviceOptions } from '../packages/raw/src/opfs-device.js';
export { createQcow2, type Qcow2CreateOptions } from '../packages/qcow2/src/create/create.js';
export { convertCopy } from '../packages/image/src/convert.js';
export { type FileResolver } from '../packages/image/src/http-location.js';
export { type Image } from '../packages/image/src/image.js';
export { type ImageInfo } from '../packages/image/src/info-types.js';
export { collectImageInfo, collectImageInfoList } from '../packages/image/src/info.js';
export { type MapEntry, mapImage } from '../packages/image/src/map.js';
export { openImage } from '../packages/image/src/open.js';
// The QObject JSON the info text is written with (the CLI's info-output, reused by the page).
export {
  isQDict, jsonString, qdictEntries, qdictOrder, qscalarText, type QValue, tdbHash, toQemuJsonLine,
} from '../packages/image/src/qobject-json.js';
