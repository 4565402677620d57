/** @tsimg/image — images of any format: open, probe, chains, convert, compare, map, info, measure. */
export * from './image.js';
export * from './info-types.js';
export * from './formats.js';
export * from './raw-image.js';
export * from './open.js';
export * from './paths.js';
export * from './probe.js';
export * from './location.js';
export * from './info.js';
export * from './measure.js';
export * from './chain-status.js';
export * from './map.js';
export * from './compare.js';
export * from './convert.js';
export * from './throttle.js';
export {
  backingNodePermissions, checkForceShare, dataFileLock, FORCE_SHARE_WRITE_MESSAGE, imageFileLock, type NodePermissions,
  NO_PERMISSIONS, type OpenFlags, openingPermissions, topNodePermissions,
} from './permissions.js';
