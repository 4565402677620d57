/**
 * Units and limits shared across the qcow2 package.
 *
 * Where offsets are numbers and where bigint: every offset and size is a `number` (exact to
 * 2^53 = 8 PiB, beyond qemu's own limits below), checked on decode so a 64-bit on-disk value that
 * does not fit is refused rather than rounded. Only the three 64-bit feature-bit fields stay
 * `bigint`, because unknown bits up to 63 must survive a round trip.
 */

/** 'QFI\xfb' */
export const QCOW2_MAGIC = 0x514649fb;

/** Smallest and largest cluster_bits qemu accepts (512 B .. 2 MiB). */
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;

/** qemu's limits (block/qcow2.h). */
export const QCOW_MAX_CRYPT_CLUSTERS = 32;
export const QCOW_MAX_SNAPSHOTS = 65536;
/** Max size of the refcount table and of the L1 table, in bytes (qcow2.h). */
export const QCOW_MAX_REFTABLE_SIZE = 8 * 1024 * 1024;
export const QCOW_MAX_L1_SIZE = 32 * 1024 * 1024;
/** Longest backing file name qemu reads (bytes). */
export const MAX_BACKING_FILE_NAME = 1023;
/** Largest virtual size qemu supports for qcow2 (QCOW_MAX... : 2^61 bytes ... capped to 2^53 here). */
export const QCOW2_MAX_IMAGE_SIZE = 2 ** 53 - 512;

/** Offsets in qcow2 metadata entries occupy bits 9..55. */
export const OFFSET_MASK = 0x00ff_ffff_ffff_fe00n;
/** Bits 0..8 of a standard cluster offset must be zero (reserved / alignment). */

/** Incompatible feature bits. */
export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
/** Guest data lives in an external data file (named by a header extension). */
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
export const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/** Compatible feature bits. */
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;

/** Autoclear feature bits. */
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;
export const AUTOCLEAR_KNOWN = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW;

/** Values of the header's compression_type byte. */
export const COMPRESSION_ZLIB = 0;
export const COMPRESSION_ZSTD = 1;

/** Values of crypt_method. */
export const CRYPT_NONE = 0;
export const CRYPT_AES = 1;
export const CRYPT_LUKS = 2;

/** Rounds `n` up to a multiple of `align` (a power of two or any positive integer). */
export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/** Integer division rounding up. */
export function divCeil(n: number, d: number): number {
  return Math.ceil(n / d);
}

/** Converts an on-disk u64 to a number, or undefined if it does not fit exactly. */
export function u64ToNumber(v: bigint): number | undefined {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
}
