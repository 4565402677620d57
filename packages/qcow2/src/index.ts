/** @tsimg/qcow2 — the qcow2 image format. */
export * from './types.js';
export * from './header.js';
export * from './chain-status.js';
export * from './convert.js';
export * from './compress.js';
export * from './l2-entry.js';
export * from './refcount.js';
export * from './cache.js';
export * from './allocator.js';
export * from './mapping.js';
export * from './cow.js';
export * from './image.js';
export * from './open.js';
export * from './snapshot.js';
export * from './bitmap-directory.js';
export * from './info.js';
