/**
 * The options of qcow2 image creation and their validation, in the order and with the messages
 * of qemu 7.2's qcow2_co_create: defaults, version-dependent features, cluster and refcount
 * widths, backing/data-file combinations.
 */
import { UsageError } from '@tsimg/raw';
import type { Qcow2CreateEncryption } from './encryption.js';

/** Preallocation modes of a qcow2 image. */
export type Qcow2Preallocation = 'off' | 'metadata' | 'falloc' | 'full';

/** What `createQcow2` accepts (qemu's BlockdevCreateOptionsQcow2 without encryption). */
export interface Qcow2CreateOptions {
  /** Virtual size in bytes; must be a multiple of 512 (qemu-img rounds up before). */
  size: bigint;
  /** 2 (compat=0.10) or 3 (compat=1.1, the default). */
  version?: 2 | 3;
  /** Default 65536. */
  clusterSize?: bigint;
  /** Default 16; a signed 64-bit value as qemu's QAPI int. */
  refcountBits?: bigint;
  lazyRefcounts?: boolean;
  extendedL2?: boolean;
  compressionType?: 'zlib' | 'zstd';
  preallocation?: Qcow2Preallocation;
  backingFile?: string;
  backingFormat?: string;
  /** Name of the external data file as written into the header extension. */
  dataFile?: string;
  dataFileRaw?: boolean;
  /** Encrypt the image (qemu's `encrypt.format` with its key secret's passphrase). */
  encrypt?: Qcow2CreateEncryption;
}

/** Options after validation: every default filled in. */
export interface ResolvedQcow2CreateOptions {
  size: bigint;
  version: 2 | 3;
  clusterBits: number;
  refcountOrder: number;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: 'zlib' | 'zstd';
  preallocation: Qcow2Preallocation;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  dataFileRaw: boolean;
  encrypt?: Qcow2CreateEncryption;
}

const MIN_CLUSTER_BITS = 9;
const MAX_CLUSTER_BITS = 21;
const EXTL2_SUBCLUSTERS = 32;

function fail(message: string): never {
  throw new UsageError(message, { errno: 'EINVAL' });
}

/** ctz32: trailing zeros of the low 32 bits (32 for 0). */
function ctz32(v: bigint): number {
  const low = Number(v & 0xffffffffn);
  if (low === 0) return 32;
  return 31 - Math.clz32(low & -low);
}

/** validate_cluster_size. */
function validateClusterSize(clusterSize: bigint, extendedL2: boolean): number {
  const bits = ctz32(clusterSize);
  if (bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS || 1n << BigInt(bits) !== clusterSize) {
    fail(`Cluster size must be a power of two between ${1 << MIN_CLUSTER_BITS} and ${1 << (MAX_CLUSTER_BITS - 10)}k`);
  }
  if (extendedL2) {
    const min = (1 << MIN_CLUSTER_BITS) * EXTL2_SUBCLUSTERS;
    if (clusterSize < BigInt(min)) {
      fail(`Extended L2 entries are only supported with cluster sizes of at least ${min} bytes`);
    }
  }
  return bits;
}

/**
 * Validates and completes creation options exactly as qcow2_co_create does, throwing a
 * UsageError with qemu's message for the first problem found.
 */
export function resolveQcow2CreateOptions(o: Qcow2CreateOptions): ResolvedQcow2CreateOptions {
  if (o.size % 512n !== 0n) fail('Image size must be a multiple of 512 bytes');
  const version = o.version ?? 3;
  const clusterSize = o.clusterSize ?? 65536n;
  const extendedL2 = o.extendedL2 ?? false;
  if (extendedL2 && version < 3) {
    fail('Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  const clusterBits = validateClusterSize(clusterSize, extendedL2);
  let preallocation = o.preallocation ?? 'off';
  if (o.backingFile !== undefined && preallocation !== 'off' && !extendedL2) {
    fail('Backing file and preallocation can only be used at the same time if extended_l2 is on');
  }
  if (o.backingFormat !== undefined && o.backingFile === undefined) {
    fail('Backing format cannot be used without backing file');
  }
  const lazyRefcounts = o.lazyRefcounts ?? false;
  if (version < 3 && lazyRefcounts) {
    fail('Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  const refcountBits = BigInt.asIntN(64, o.refcountBits ?? 16n);
  if (refcountBits > 64n || refcountBits <= 0n || (refcountBits & (refcountBits - 1n)) !== 0n) {
    fail('Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (version < 3 && refcountBits !== 16n) {
    fail(
      'Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)',
    );
  }
  const refcountOrder = ctz32(refcountBits);
  const dataFileRaw = o.dataFileRaw ?? false;
  if (dataFileRaw && o.dataFile === undefined) fail('data-file-raw requires data-file');
  if (dataFileRaw && o.backingFile !== undefined) {
    fail('Backing file and data-file-raw cannot be used at the same time');
  }
  // data-file-raw needs an L2 mapping 1:1 onto the data file
  if (dataFileRaw && preallocation === 'off') preallocation = 'metadata';
  if (o.dataFile !== undefined && version < 3) {
    fail('External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  const compressionType = o.compressionType ?? 'zlib';
  if (compressionType !== 'zlib' && version < 3) {
    fail('Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  return {
    size: o.size,
    version,
    clusterBits,
    refcountOrder,
    lazyRefcounts,
    extendedL2,
    compressionType,
    preallocation,
    backingFile: o.backingFile,
    backingFormat: o.backingFormat,
    dataFile: o.dataFile,
    dataFileRaw,
    encrypt: o.encrypt,
  };
}
