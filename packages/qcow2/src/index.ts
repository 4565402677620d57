/** @tsimg/qcow2 — the qcow2 image format. */
export * from './types.js';
export * from './header.js';
