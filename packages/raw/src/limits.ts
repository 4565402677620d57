/**
 * qemu's block-layer limits (include/block/block_int-common.h, include/block/block-common.h),
 * defined once so every package checks requests and rounds sizes against the same numbers.
 */

/** qemu's BDRV_SECTOR_SIZE: the unit image sizes are rounded to and block status is counted in. */
export const BDRV_SECTOR_SIZE = 512;

/** C's INT_MAX (2^31 - 1): the cap qemu puts on byte counts held in an `int`. */
export const INT_MAX = 2 ** 31 - 1;

/** qemu's BDRV_REQUEST_MAX_BYTES (INT_MAX rounded down to a sector): the largest single request. */
export const BDRV_REQUEST_MAX_BYTES = Math.floor(INT_MAX / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE;

/** qemu's BDRV_MAX_LENGTH (INT64_MAX aligned down to 1 GiB, exact as a double): no request may end beyond it. */
export const BDRV_MAX_LENGTH = 2 ** 63 - 2 ** 30;
