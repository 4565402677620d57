/** @tsimg/raw — the bottom of tsimg's block layer. */
export * from './errors.js';
export * from './block-device.js';
