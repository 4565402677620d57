/** @tsimg/qcow2 — the qcow2 image format. */
export * from './types.js';
export * from './header.js';
export * from './chain-status.js';
export * from './convert.js';
export * from './compress.js';
