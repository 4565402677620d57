/**
 * Size measurement for new images (`qemu-img measure`): how many bytes a qcow2 or raw file needs
 * for a given virtual size or to hold the contents of an existing image, exactly as QEMU 7.2
 * computes it (block/qcow2.c qcow2_measure / qcow2_calc_prealloc_size /
 * qcow2_refcount_metadata_size, block/qcow2-bitmap.c qcow2_get_persistent_dirty_bitmap_size,
 * block/raw-format.c raw_measure).
 *
 * All sizes are `bigint`: unlike offsets inside an open image, a measured size may exceed 2^53
 * (`measure -O raw --size 8E` is legal, and a qcow2 with 2 MiB clusters may be 2^61 bytes), and
 * the figures must match qemu's to the byte.
 */
import { UsageError, UnsupportedError } from '@tsimg/raw';
import { MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, QCOW_MAX_L1_SIZE } from './format/types.js';
import { qcow2RefcountMetadataSize } from './format/refcount.js';

/** qcow2 creation options that change the measured size (the others are accepted and ignored). */
export interface Qcow2MeasureOptions {
  /** Cluster size in bytes (default 65536). */
  clusterSize?: number;
  /** Refcount entry width in bits (default 16). */
  refcountBits?: number;
  /** Extended L2 entries (subclusters) — 16-byte L2 entries. */
  extendedL2?: boolean;
  /** `compat`: '0.10' (version 2) or '1.1' (version 3, the default). */
  compat?: string;
  /** `preallocation`: off, metadata, falloc or full. */
  preallocation?: string;
  /** True when the new image will have a backing file (`-o backing_file=...`). */
  hasBackingFile?: boolean;
  /** `encrypt.format`. */
  encryptFormat?: string;
  /**
   * With `encrypt.format=luks`: the LUKS header area's size (luksPayloadBytes), looked up when
   * qemu computes it — after the preallocation and backing options, before the size checks —
   * so its errors (a missing key secret, a bad cipher) come in qemu's order.
   */
  luksHeaderBytes?: () => number;
  /**
   * `-o size=…` when an image is measured: qemu checks it against the L1 limit before it takes
   * the image's size instead (so `-o size=4P` fails even for a small source).
   */
  sizeOption?: bigint;
}

/** What `measure` reports. `bitmaps` is present only when source and target both support them. */
export interface MeasureResult {
  required: bigint;
  fullyAllocated: bigint;
  bitmaps?: bigint;
}

/** A persistent dirty bitmap of the source image, as far as measuring needs it. */
export interface MeasureBitmap {
  name: string;
  granularity: number;
}

/**
 * What is measured: a virtual size, or an image of `imageSize` bytes whose stored data a copy
 * needs `allocatedBytes(clusterSize)` bytes for (the image layer walks the chain for that).
 * `bitmaps` is set when the source supports persistent bitmaps (qcow2 v3): the list of its
 * persistent bitmaps, possibly empty. Leave it undefined for sources without bitmap support
 * (raw, qcow2 v2), and no bitmaps figure is reported.
 */
export type MeasureInput =
  | { size: bigint | number }
  | { imageSize: number; allocatedBytes(clusterSize: number): Promise<bigint>; bitmaps?: readonly MeasureBitmap[] };

const DEFAULT_CLUSTER_SIZE = 65536;
const L1E_SIZE = 8n;
const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'] as const;

function roundUp(n: bigint, align: bigint): bigint {
  return ((n + align - 1n) / align) * align;
}

function divRoundUp(n: bigint, d: bigint): bigint {
  return (n + d - 1n) / d;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

function ctz(n: number): number {
  return Math.log2(n & -n);
}

/**
 * Total bytes of a fully allocated qcow2 image of `totalSize` virtual bytes: header cluster,
 * L2 tables, L1 table, refcount structures and every data cluster (qcow2_calc_prealloc_size).
 */
export function qcow2CalcPreallocSize(
  totalSize: bigint,
  clusterSize: number,
  refcountOrder: number,
  extendedL2: boolean,
): bigint {
  const cs = BigInt(clusterSize);
  const l2eSize = extendedL2 ? 16n : 8n;
  const alignedTotal = roundUp(totalSize, cs);
  let meta = cs; // header
  let nl2e = alignedTotal / cs;
  nl2e = roundUp(nl2e, cs / l2eSize);
  meta += nl2e * l2eSize;
  let nl1e = (nl2e * l2eSize) / cs;
  nl1e = roundUp(nl1e, cs / L1E_SIZE);
  meta += nl1e * L1E_SIZE;
  meta += qcow2RefcountMetadataSize((meta + alignedTotal) / cs, clusterSize, refcountOrder).bytes;
  return meta + alignedTotal;
}

/**
 * Bytes needed to copy `bitmaps` of an image of `size` bytes into a new qcow2 image with
 * `clusterSize` clusters: every bitmap fully allocated, its bitmap table, and the bitmap
 * directory (qcow2_get_persistent_dirty_bitmap_size).
 */
export function qcow2BitmapsSize(bitmaps: readonly MeasureBitmap[], size: bigint, clusterSize: number): bigint {
  const cs = BigInt(clusterSize);
  let total = 0n;
  let dirSize = 0n;
  for (const bm of bitmaps) {
    const bits = divRoundUp(size, BigInt(bm.granularity));
    const bytes = divRoundUp(bits, 8n);
    const clusters = divRoundUp(bytes, cs);
    total += clusters * cs; // the whole bitmap, as if allocated
    total += roundUp(clusters * 8n, cs); // its bitmap table
    // Directory entry: 24-byte fixed part + name, padded to 8 (calc_dir_entry_size).
    dirSize += roundUp(24n + BigInt(new TextEncoder().encode(bm.name).length), 8n);
  }
  return total + roundUp(dirSize, cs);
}

/** The validated qcow2 creation parameters that measuring depends on. */
interface Qcow2Params {
  clusterSize: number;
  version: 2 | 3;
  refcountBits: number;
  extendedL2: boolean;
  preallocation: (typeof PREALLOC_MODES)[number];
  /** The LUKS header area rounded up to clusters (0 without encryption). */
  luksPayload: number;
}

/** Checks options in qemu's order, with qemu's messages. */
function qcow2Params(options: Qcow2MeasureOptions): Qcow2Params {
  const extendedL2 = options.extendedL2 ?? false;
  const clusterSize = options.clusterSize ?? DEFAULT_CLUSTER_SIZE;
  const bits = isPowerOfTwo(clusterSize) ? ctz(clusterSize) : -1;
  if (bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) {
    throw new UsageError(
      `Cluster size must be a power of two between ${1 << MIN_CLUSTER_BITS} and ${1 << (MAX_CLUSTER_BITS - 10)}k`,
    );
  }
  if (extendedL2) {
    const min = (1 << MIN_CLUSTER_BITS) * 32;
    if (clusterSize < min) {
      throw new UsageError(`Extended L2 entries are only supported with cluster sizes of at least ${min} bytes`);
    }
  }
  let version: 2 | 3;
  if (options.compat === undefined || options.compat === '1.1') version = 3;
  else if (options.compat === '0.10') version = 2;
  else throw new UsageError(`Invalid compatibility level: '${options.compat}'`);

  const refcountBits = options.refcountBits ?? 16;
  if (refcountBits > 64 || !isPowerOfTwo(refcountBits)) {
    throw new UsageError('Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (version < 3 && refcountBits !== 16) {
    throw new UsageError(
      'Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)',
    );
  }
  const prealloc = options.preallocation ?? 'off';
  if (!(PREALLOC_MODES as readonly string[]).includes(prealloc)) {
    throw new UsageError(`invalid parameter value: ${prealloc}`);
  }
  let luksPayload = 0;
  if (options.encryptFormat === 'luks') {
    if (options.luksHeaderBytes === undefined) throw new UnsupportedError("Parameter 'encrypt.key-secret' is required for cipher");
    luksPayload = Math.ceil(options.luksHeaderBytes() / clusterSize) * clusterSize;
  }
  return { clusterSize, version, refcountBits, extendedL2, preallocation: prealloc as Qcow2Params['preallocation'], luksPayload };
}

/** `qemu-img measure -O qcow2`: required, fully allocated and (when relevant) bitmaps size. */
export async function measureQcow2(source: MeasureInput, options: Qcow2MeasureOptions = {}): Promise<MeasureResult> {
  const p = qcow2Params(options);
  const cs = BigInt(p.clusterSize);
  let virtualSize = roundUp('size' in source ? BigInt(source.size) : (options.sizeOption ?? 0n), cs);

  const l2eSize = p.extendedL2 ? 16n : 8n;
  const l2Tables = divRoundUp(virtualSize / cs, cs / l2eSize);
  if (l2Tables * L1E_SIZE > BigInt(QCOW_MAX_L1_SIZE)) {
    throw new UsageError('The image size is too large (try using a larger cluster size)');
  }

  let required = 0n;
  let bitmaps: bigint | undefined;
  if ('imageSize' in source) {
    const ssize = source.imageSize;
    virtualSize = roundUp(BigInt(ssize), cs);
    // With a backing file nobody knows what the new image shares with it: count everything.
    required = options.hasBackingFile ? virtualSize : await source.allocatedBytes(p.clusterSize);
    if (p.version >= 3 && source.bitmaps !== undefined) {
      bitmaps = qcow2BitmapsSize(source.bitmaps, BigInt(ssize), p.clusterSize);
    }
  }
  if (p.preallocation === 'full' || p.preallocation === 'falloc') required = virtualSize;

  const fullyAllocated = BigInt(p.luksPayload) + qcow2CalcPreallocSize(virtualSize, p.clusterSize, ctz(p.refcountBits), p.extendedL2);
  const result: MeasureResult = { required: fullyAllocated - virtualSize + required, fullyAllocated };
  if (bitmaps !== undefined) result.bitmaps = bitmaps;
  return result;
}

