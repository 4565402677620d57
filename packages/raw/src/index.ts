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
export { BDRV_SECTOR_SIZE, INT_MAX, BDRV_REQUEST_MAX_BYTES, BDRV_MAX_LENGTH } from './limits.js';
