/**
 * What `qemu-img info` reports about an image, gathered as a typed mirror of qemu 7.2's QAPI
 * `ImageInfo`: the keys are QAPI's own names, and every object is built in QAPI schema order
 * (qemu's JSON key order derives from it; the CLI's formatter does the rest).
 *
 * Like qemu-img info (which opens with BDRV_O_NO_IO | BDRV_O_NO_BACKING), this reads only
 * metadata: the header and its extensions, the snapshot table, the bitmap directory and
 * tables, and the LUKS header. It never opens the backing file or the external data file, and
 * it applies the open-time checks qemu applies, with qemu's messages, so an image qemu refuses
 * is refused here too.
 */
import {
  FileDevice,
  FormatError,
  IoError,
  TsimgError,
  UnsupportedError,
  UsageError,
  type BlockDevice,
} from '@tsimg/raw';
import {
  decodeHeader,
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO_HEADER,
  EXT_DATA_FILE,
  EXT_END,
  EXT_FEATURE_NAMES,
  findExtension,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  V3_HEADER_LENGTH_MIN,
  type FeatureName,
  type HeaderExtension,
  type HeaderInfo,
  type Qcow2Header,
} from './header.js';
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  COMPRESSION_ZLIB,
  COMPRESSION_ZSTD,
  CRYPT_AES,
  CRYPT_LUKS,
  CRYPT_NONE,
  INCOMPAT_COMPRESSION,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  INCOMPAT_KNOWN,
  MAX_BACKING_FILE_NAME,
  MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS,
  QCOW2_MAGIC,
  QCOW_MAX_L1_SIZE,
  QCOW_MAX_REFTABLE_SIZE,
  u64ToNumber,
} from './types.js';
import {
  loadSnapshots,
  snapshotIcount,
  snapshotVmStateSize,
  MAX_SNAPSHOTS,
  readOrFail,
  SNAPSHOT_HEADER_SIZE,
  type Qcow2Snapshot,
} from './snapshot.js';
import {
  BME_FLAG_IN_USE,
  QCOW2_MAX_BITMAPS,
  QCOW2_MAX_BITMAP_DIRECTORY_SIZE,
  bitmapFlagNames,
  cName,
  loadBitmapDirectory,
  loadBitmapTable,
  type BitmapDirectoryEntry,
} from './bitmap-directory.js';
import { cutAtNul, decodeByteString, encodeByteString } from './byte-string.js';
import { decodeLuksInfo, LUKS_HEADER_SIZE, type LuksInfo } from './luks-header.js';


/** QAPI SnapshotInfo. */
export interface SnapshotInfo {
  id: string;
  name: string;
  'vm-state-size': bigint;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': bigint;
  'vm-clock-nsec': number;
  icount?: bigint;
}

/** QAPI Qcow2BitmapInfo. */
export interface Qcow2BitmapInfo {
  name: string;
  granularity: number;
  flags: Array<'in-use' | 'auto'>;
}

/** QAPI ImageInfoSpecificQCow2Encryption. */
export type Qcow2EncryptionInfo = { format: 'aes' } | ({ format: 'luks' } & LuksInfo);

/** QAPI ImageInfoSpecificQCow2. */
export interface ImageInfoSpecificQcow2 {
  compat: '0.10' | '1.1';
  'data-file'?: string;
  'data-file-raw'?: boolean;
  'extended-l2'?: boolean;
  'lazy-refcounts'?: boolean;
  corrupt?: boolean;
  'refcount-bits': number;
  encrypt?: Qcow2EncryptionInfo;
  bitmaps?: Qcow2BitmapInfo[];
  'compression-type': 'zlib' | 'zstd';
}

/** QAPI ImageInfoSpecific (only the qcow2 branch exists in tsimg). */
export interface ImageInfoSpecific {
  type: 'qcow2';
  data: ImageInfoSpecificQcow2;
}

/** QAPI ImageInfo, qemu 7.2. Optional members are absent rather than undefined. */
export interface ImageInfo {
  filename: string;
  format: string;
  'dirty-flag'?: boolean;
  'actual-size'?: number;
  'virtual-size': number;
  'cluster-size'?: number;
  encrypted?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: SnapshotInfo[];
  'format-specific'?: ImageInfoSpecific;
}

/** What gathering produced: the info, plus warnings qemu prints on stderr while opening. */
export interface ImageInfoResult {
  info: ImageInfo;
  /** Whole lines (without "qemu-img: "), in the order qemu prints them. */
  warnings: string[];
}

/** Options for {@link collectImageInfo}. */
export interface CollectInfoOptions {
  /** Image format; probed when absent (qcow2 by magic, else raw). */
  format?: string;
  /** Flattened block options (`--image-opts`); the name is then only used in messages. */
  blockOptions?: ReadonlyMap<string, string>;
}

const BDRV_SECTOR_SIZE = 512;
/** INT64_MAX aligned down to 1 GiB: no request may end beyond it (block/io.c). */
const BDRV_MAX_LENGTH = 2 ** 63 - 2 ** 30;

/** Formats qemu knows but tsimg does not handle (recognised so they are not shown as raw). */
const FOREIGN_FORMATS = new Set([
  'qcow', 'qed', 'vmdk', 'vdi', 'vpc', 'vhdx', 'luks', 'parallels', 'bochs', 'cloop', 'dmg', 'vvfat', 'file',
  'host_device', 'nbd', 'ssh', 'http', 'https', 'blkdebug', 'null-co', 'throttle', 'copy-on-read', 'quorum',
]);

function bytesEqual(a: Uint8Array, offset: number, s: string): boolean {
  if (offset + s.length > a.length) return false;
  for (let i = 0; i < s.length; i++) if (a[offset + i] !== s.charCodeAt(i)) return false;
  return true;
}

/**
 * Probes the format the way qemu's drivers would claim the image: qcow2 by its magic and a
 * version of 2 or more, a few other formats by their magic (reported as unsupported), else raw.
 */
export function probeFormat(first: Uint8Array): string {
  const v = new DataView(first.buffer, first.byteOffset, first.byteLength);
  if (first.length >= 8 && v.getUint32(0) === QCOW2_MAGIC) {
    const version = v.getUint32(4);
    if (version >= 2) return 'qcow2';
    if (version === 1) return 'qcow';
  }
  if (bytesEqual(first, 0, 'QED\0')) return 'qed';
  if (bytesEqual(first, 0, 'KDMV') || bytesEqual(first, 0, 'COWD') || bytesEqual(first, 0, '# Disk DescriptorFile')) return 'vmdk';
  if (first.length >= 0x44 && v.getUint32(0x40, true) === 0xbeda107f) return 'vdi';
  if (bytesEqual(first, 0, 'conectix')) return 'vpc';
  if (bytesEqual(first, 0, 'vhdxfile')) return 'vhdx';
  if (bytesEqual(first, 0, 'LUKS\xba\xbe')) return 'luks';
  if (bytesEqual(first, 0, 'WithoutFreeSpace') || bytesEqual(first, 0, 'WithouFreSpacExt')) return 'parallels';
  if (bytesEqual(first, 0, 'Bochs Virtual HD Image')) return 'bochs';
  return 'raw';
}

/**
 * A view of a host file for header parsing: at least 2 MiB long, reading zeroes past the end —
 * qemu's file driver pads short reads the same way, so a truncated header is judged on its
 * fields (e.g. "qcow2 header too short"), not on the file size.
 */
function headerView(dev: BlockDevice): BlockDevice {
  return {
    readOnly: true,
    size: () => Math.max(dev.size(), 1 << MAX_CLUSTER_BITS),
    read: async (offset, into) => {
      // qemu's block layer refuses requests ending past BDRV_MAX_LENGTH with EIO.
      if (offset + into.length > BDRV_MAX_LENGTH) throw new IoError('Input/output error', { errno: 'EIO' });
      // Past the end of the file (even at offsets beyond 2^53, from corrupt pointers) reads zeroes.
      const inFile = Math.max(0, Math.min(into.length, dev.size() - offset));
      if (inFile > 0) await dev.read(offset, into.subarray(0, inFile));
      into.fill(0, inFile);
    },
    write: () => Promise.reject(new UsageError('read-only view')),
    writeZeroes: () => Promise.reject(new UsageError('read-only view')),
    discard: () => Promise.reject(new UsageError('read-only view')),
    flush: () => Promise.resolve(),
    resize: () => Promise.reject(new UsageError('read-only view')),
    blockStatus: (offset, length) => dev.blockStatus(offset, length),
    allocatedSize: () => dev.allocatedSize(),
    close: () => Promise.resolve(),
  };
}

/** qemu's path_has_protocol: a ':' before any '/'. */
export function pathHasProtocol(path: string): boolean {
  const m = /[:/]/.exec(path);
  return m !== null && m[0] === ':';
}

/**
 * qemu's bdrv_get_full_backing_filename_from_filename: an absolute or protocol name as is,
 * else relative to the directory of `backed`; undefined when that cannot be determined
 * (a `json:` filename).
 */
export function fullBackingFilename(backed: string, backing: string): string | undefined {
  if (backing === '') return undefined;
  if (pathHasProtocol(backing) || backing.startsWith('/')) return backing;
  if (backed === '' || backed.startsWith('json:')) return undefined;
  // path_combine: keep base up to its last '/', or up to a protocol prefix "proto:".
  const colon = backed.indexOf(':');
  let prefix = colon >= 0 ? colon + 1 : 0;
  const slash = backed.lastIndexOf('/');
  if (slash + 1 > prefix) prefix = slash + 1;
  return backed.slice(0, prefix) + backing;
}

/**
 * qemu's report_unsupported_feature message for the unknown incompatible bits `mask`, naming
 * them from the image's feature name table.
 */
function unsupportedFeatures(extensions: readonly HeaderExtension[], mask: bigint): string {
  const parts: string[] = [];
  const table = findExtension(extensions, 'feature-names')?.features ?? [];
  for (const f of table) {
    if (f.name === '') break;
    if (f.type === 0 && f.bit < 64 && (mask & (1n << BigInt(f.bit))) !== 0n) {
      parts.push(f.name.slice(0, 46));
      mask &= ~(1n << BigInt(f.bit));
    }
  }
  if (mask !== 0n) parts.push(`Unknown incompatible feature: ${mask.toString(16)}`);
  return `Unsupported qcow2 feature(s): ${parts.join(', ')}`;
}

/** Everything about a qcow2 image that info needs, loaded and checked as qemu's open does. */
export interface Qcow2Metadata {
  hdr: HeaderInfo;
  /** The header's size field, exact (hdr.header.size is approximate beyond 2^53). */
  sizeBytes: bigint;
  clusterSize: number;
  snapshots: Qcow2Snapshot[];
  bitmaps: BitmapDirectoryEntry[];
  encrypt?: Qcow2EncryptionInfo;
  warnings: string[];
}

/** Bytes up to the first NUL, as text (qemu keeps these names as C strings). */
function cBytes(b: Uint8Array): string {
  const nul = b.indexOf(0);
  return decodeByteString(nul >= 0 ? b.subarray(0, nul) : b);
}

/** A failure in qemu's extension walk, with the extensions read before it (for the feature table). */
class ExtensionWalkError extends FormatError {
  readonly partial: HeaderExtension[];
  constructor(message: string, partial: HeaderExtension[]) {
    super(message, { errno: 'EINVAL' });
    this.partial = partial;
  }
}

/**
 * qcow2_read_extensions: walks the extensions of the first cluster from `start` to `end` with
 * qemu's checks, in qemu's order, checking each extension as it is reached (so the first bad
 * one decides the message). Reports the bitmap warnings through `warnings`.
 */
function walkExtensions(cluster: Uint8Array, h: Qcow2Header, start: number, end: number, warnings: string[]): HeaderExtension[] {
  const clusterSize = 2 ** h.clusterBits;
  const v = new DataView(cluster.buffer, cluster.byteOffset, cluster.byteLength);
  const out: HeaderExtension[] = [];
  const fail = (msg: string): never => {
    throw new ExtensionWalkError(msg, out);
  };
  let off = start;
  while (off < end) {
    const type = v.getUint32(off);
    const len = v.getUint32(off + 4);
    off += 8;
    if (off > end || len > end - off) fail('Header extension too large');
    const body = cluster.subarray(off, off + len);
    const d = new DataView(cluster.buffer, cluster.byteOffset + off, len);
    switch (type) {
      case EXT_END:
        return out;
      case EXT_BACKING_FORMAT:
        if (len >= 16) fail(`ERROR: ext_backing_format: len=${len} too large (>=16)`);
        out.push({ kind: 'backing-format', name: cBytes(body) });
        break;
      case EXT_FEATURE_NAMES: {
        const features: FeatureName[] = [];
        for (let i = 0; i + 48 <= len; i += 48) {
          features.push({ type: body[i]!, bit: body[i + 1]!, name: cBytes(body.subarray(i + 2, i + 48)) });
        }
        out.push({ kind: 'feature-names', features });
        break;
      }
      case EXT_CRYPTO_HEADER: {
        if (h.cryptMethod !== CRYPT_LUKS) fail('CRYPTO header extension only expected with LUKS encryption method');
        if (len !== 16) fail(`CRYPTO header extension size ${len}, but expected size 16`);
        const offset = u64ToNumber(d.getBigUint64(0));
        const length = u64ToNumber(d.getBigUint64(8));
        if (offset === undefined || offset % clusterSize !== 0) {
          fail(`Encryption header offset '${d.getBigUint64(0)}' is not a multiple of cluster size '${clusterSize}'`);
        }
        out.push({ kind: 'crypto-header', offset: offset!, length: length ?? Number.MAX_SAFE_INTEGER });
        break;
      }
      case EXT_BITMAPS: {
        if (len !== 24) fail('bitmaps_ext: Invalid extension length');
        if ((h.autoclearFeatures & AUTOCLEAR_BITMAPS) === 0n) {
          // qemu warns and then ignores the bitmaps (a read-write open would drop the extension).
          warnings.push(
            h.version < 3
              ? 'warning: This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent'
              : 'warning: a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent',
          );
          break;
        }
        if (d.getUint32(4) !== 0) fail('bitmaps_ext: Reserved field is not zero');
        const nb = d.getUint32(0);
        const size = d.getBigUint64(8);
        const offset = d.getBigUint64(16);
        if (nb > QCOW2_MAX_BITMAPS) {
          fail(`bitmaps_ext: Image has ${nb} bitmaps, exceeding the QEMU supported maximum of ${QCOW2_MAX_BITMAPS}`);
        }
        if (nb === 0) fail('found bitmaps extension with zero bitmaps');
        if (offset % BigInt(clusterSize) !== 0n) {
          fail('bitmaps_ext: invalid bitmap directory offset');
        }
        if (size > BigInt(QCOW2_MAX_BITMAP_DIRECTORY_SIZE)) {
          fail(`bitmaps_ext: bitmap directory size (${size}) exceeds the maximum supported size (${QCOW2_MAX_BITMAP_DIRECTORY_SIZE})`);
        }
        out.push({ kind: 'bitmaps', nbBitmaps: nb, bitmapDirectorySize: Number(size), bitmapDirectoryOffset: Number(offset) });
        break;
      }
      case EXT_DATA_FILE:
        out.push({ kind: 'data-file', name: cBytes(body) });
        break;
      default:
        out.push({ kind: 'unknown', type, data: body.slice() });
    }
    off += (len + 7) & ~7;
  }
  return out;
}

/** The header's 64-bit fields as on disk (qemu accepts values past 2^53 where its checks pass). */
interface WideFields {
  backingFileOffset: bigint;
  size: bigint;
  l1TableOffset: bigint;
  refcountTableOffset: bigint;
  snapshotsOffset: bigint;
}

/**
 * decodeHeader, tolerating 64-bit offsets and sizes beyond 2^53: those come back exact in `raw`
 * and approximate in the header (any such offset lies far past the end of a real file).
 */
function decodeHeaderWide(fixed: Uint8Array): { h: Qcow2Header; raw: WideFields } {
  const copy = fixed.slice();
  const v = new DataView(copy.buffer);
  const raw: WideFields = {
    backingFileOffset: v.getBigUint64(8),
    size: v.getBigUint64(24),
    l1TableOffset: v.getBigUint64(40),
    refcountTableOffset: v.getBigUint64(48),
    snapshotsOffset: v.getBigUint64(64),
  };
  for (const off of [8, 24, 40, 48, 64]) v.setBigUint64(off, 0n);
  const h = decodeHeader(v);
  h.backingFileOffset = Number(raw.backingFileOffset);
  h.size = Number(raw.size);
  h.l1TableOffset = Number(raw.l1TableOffset);
  h.refcountTableOffset = Number(raw.refcountTableOffset);
  h.snapshotsOffset = Number(raw.snapshotsOffset);
  return { h, raw };
}

/** Throws EIO for a read qemu's block layer would refuse (ending past BDRV_MAX_LENGTH). */
async function checkReach(offset: number, length: number): Promise<void> {
  if (offset + length > BDRV_MAX_LENGTH) throw new IoError('Input/output error', { errno: 'EIO' });
}

/** qcow2_validate_table: entry count within `maxBytes`, offset aligned and the end below 2^63. */
function validateTable(offset: bigint, entries: number, entryLen: number, maxBytes: number, clusterSize: number, what: string): void {
  if (entries > Math.floor(maxBytes / entryLen)) throw new FormatError(`${what} too large`, { errno: 'EFBIG' });
  if ((1n << 63n) - 1n - BigInt(entries) * BigInt(entryLen) < offset || offset % BigInt(clusterSize) !== 0n) {
    throw new FormatError(`${what} offset invalid`, { errno: 'EINVAL' });
  }
}

/**
 * Loads the metadata of a qcow2 image from `file` the way qcow2_do_open does for qemu-img info
 * (read-only, BDRV_O_NO_IO): the same checks in the same order with the same messages —
 * header fields, compression type, feature bits, table pointers and sizes, extensions (backing
 * format, LUKS header, bitmaps), backing file name, snapshot table, bitmaps. Reads past the end
 * of the file see zeroes, as in qemu.
 */
export async function loadQcow2Metadata(file: BlockDevice): Promise<Qcow2Metadata> {
  const view = headerView(file);
  const fixed = new Uint8Array(V3_HEADER_LENGTH);
  await view.read(0, fixed);
  const { h, raw } = decodeHeaderWide(fixed);
  if (h.clusterBits < MIN_CLUSTER_BITS || h.clusterBits > MAX_CLUSTER_BITS) {
    throw new FormatError(`Unsupported cluster size: 2^${h.clusterBits}`, { errno: 'EINVAL' });
  }
  const clusterSize = 2 ** h.clusterBits;
  if (h.version === 3 && h.headerLength < V3_HEADER_LENGTH_MIN) throw new FormatError('qcow2 header too short', { errno: 'EINVAL' });
  if (h.headerLength > clusterSize) throw new FormatError('qcow2 header exceeds cluster size', { errno: 'EINVAL' });
  if (raw.backingFileOffset > BigInt(clusterSize)) throw new FormatError('Invalid backing file offset', { errno: 'EINVAL' });
  const cluster = new Uint8Array(clusterSize);
  await view.read(0, cluster);
  const extStart = h.version === 3 ? h.headerLength : V2_HEADER_LENGTH;
  const extEnd = h.backingFileOffset !== 0 ? h.backingFileOffset : clusterSize;
  const warnings: string[] = [];

  if (h.compressionType !== COMPRESSION_ZLIB && h.compressionType !== COMPRESSION_ZSTD) {
    throw new UnsupportedError(`qcow2: unknown compression type: ${h.compressionType}`, { errno: 'ENOTSUP' });
  }
  const hasCompressionBit = (h.incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n;
  if (h.compressionType === COMPRESSION_ZLIB && hasCompressionBit) {
    throw new FormatError('qcow2: Compression type incompatible feature bit must not be set', { errno: 'EINVAL' });
  }
  if (h.compressionType !== COMPRESSION_ZLIB && !hasCompressionBit) {
    throw new FormatError('qcow2: Compression type incompatible feature bit must be set', { errno: 'EINVAL' });
  }
  const unknown = h.incompatibleFeatures & ~INCOMPAT_KNOWN;
  if (unknown !== 0n) {
    // qemu names the bits from the feature table, walking the extensions as far as it can.
    let exts: HeaderExtension[];
    try {
      exts = walkExtensions(cluster, h, extStart, extEnd, []);
    } catch (err) {
      exts = err instanceof ExtensionWalkError ? err.partial : [];
    }
    throw new UnsupportedError(unsupportedFeatures(exts, unknown), { errno: 'ENOTSUP' });
  }
  if (h.refcountOrder > 6) {
    throw new FormatError('Reference count entry width too large; may not exceed 64 bits', { errno: 'EINVAL' });
  }
  const extL2 = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
  if (extL2 && clusterSize / 32 < 2 ** MIN_CLUSTER_BITS) {
    throw new FormatError(`Unsupported subcluster size: ${clusterSize / 32}`, { errno: 'EINVAL' });
  }
  if (h.refcountTableClusters === 0) {
    throw new FormatError('Image does not contain a reference count table', { errno: 'EINVAL' });
  }
  validateTable(raw.refcountTableOffset, h.refcountTableClusters, clusterSize, QCOW_MAX_REFTABLE_SIZE, clusterSize, 'Reference count table');
  validateTable(raw.snapshotsOffset, h.nbSnapshots, SNAPSHOT_HEADER_SIZE, SNAPSHOT_HEADER_SIZE * MAX_SNAPSHOTS, clusterSize, 'Snapshot table');
  validateTable(raw.l1TableOffset, h.l1Size, 8, QCOW_MAX_L1_SIZE, clusterSize, 'Active L1 table');
  const l2Bits = BigInt(h.clusterBits - 3 - (extL2 ? 1 : 0));
  const shift = BigInt(h.clusterBits) + l2Bits;
  // size_to_l1 in uint64_t arithmetic (it wraps for sizes near 2^64, as in qemu)
  const l1Needed = BigInt.asUintN(64, raw.size + (1n << shift) - 1n) >> shift;
  if (l1Needed > 0x7fffffffn) throw new FormatError('Image is too big', { errno: 'EFBIG' });
  if (BigInt(h.l1Size) < l1Needed) throw new FormatError('L1 table is too small', { errno: 'EINVAL' });
  if (h.cryptMethod !== CRYPT_NONE && h.cryptMethod !== CRYPT_AES && h.cryptMethod !== CRYPT_LUKS) {
    throw new UnsupportedError(`Unsupported encryption method ${h.cryptMethod}`, { errno: 'EINVAL' });
  }
  // qemu reads the L1 table and the refcount table here; only their position can make that
  // fail (reads past the end of the file return zeroes).
  if (h.l1Size > 0) await readOrFail(checkReach(h.l1TableOffset, h.l1Size * 8), 'Could not read L1 table');
  await readOrFail(checkReach(h.refcountTableOffset, h.refcountTableClusters * clusterSize), 'Could not initialize refcount handling');

  const extensions = walkExtensions(cluster, h, extStart, extEnd, warnings);
  let encrypt: Qcow2EncryptionInfo | undefined;
  const crypto = findExtension(extensions, 'crypto-header');
  if (crypto) {
    // The LUKS header is read through the extension's window (qcow2_crypto_hdr_read_func).
    if (crypto.length < LUKS_HEADER_SIZE) throw new FormatError('Request for data outside of extension header');
    const luksHeader = new Uint8Array(LUKS_HEADER_SIZE);
    await view.read(crypto.offset, luksHeader);
    encrypt = { format: 'luks', ...decodeLuksInfo(luksHeader) };
  } else if (h.cryptMethod === CRYPT_AES) {
    encrypt = { format: 'aes' };
  }

  let backingFile: string | undefined;
  if (h.backingFileOffset !== 0) {
    const len = h.backingFileSize;
    if (len > Math.min(MAX_BACKING_FILE_NAME, clusterSize - h.backingFileOffset)) {
      throw new FormatError('Backing file name too long', { errno: 'EINVAL' });
    }
    const name = new Uint8Array(len);
    await view.read(h.backingFileOffset, name);
    backingFile = cBytes(name);
  }

  const snapshots = await loadSnapshots(view, h.snapshotsOffset, h.nbSnapshots);

  let bitmaps: BitmapDirectoryEntry[] = [];
  const bitmapsExt = findExtension(extensions, 'bitmaps');
  if (bitmapsExt) {
    const virtualSize = Math.floor(h.size / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE;
    bitmaps = await loadBitmapDirectory(view, bitmapsExt, clusterSize, virtualSize);
    // qemu loads every consistent bitmap on open, so a broken table fails the open.
    for (const bm of bitmaps) {
      if ((bm.flags & BME_FLAG_IN_USE) === 0) await loadBitmapTable(view, bm, clusterSize, virtualSize);
    }
  }
  return { hdr: { header: h, extensions, backingFile }, sizeBytes: raw.size, clusterSize, snapshots, bitmaps, encrypt, warnings };
}

/** qemu's pstrcpy into a fixed buffer: the string up to its first NUL, cut to `max - 1` bytes. */
function cString(s: string, max: number): string {
  const bytes = encodeByteString(cutAtNul(s));
  return bytes.length < max ? decodeByteString(bytes) : decodeByteString(bytes.subarray(0, max - 1));
}

/** QAPI SnapshotInfo for a qcow2 snapshot (qcow2_snapshot_list + bdrv_query_snapshot_info_list). */
export function snapshotInfo(sn: Qcow2Snapshot): SnapshotInfo {
  const out: SnapshotInfo = {
    id: cString(sn.id, 128),
    name: cString(sn.name, 256),
    'vm-state-size': BigInt.asIntN(64, snapshotVmStateSize(sn)),
    'date-sec': sn.dateSec,
    'date-nsec': sn.dateNsec,
    'vm-clock-sec': BigInt.asIntN(64, sn.vmClockNsec / 1_000_000_000n),
    'vm-clock-nsec': Number(sn.vmClockNsec % 1_000_000_000n),
  };
  const icount = snapshotIcount(sn);
  if (icount !== undefined) out.icount = BigInt.asIntN(64, icount);
  return out;
}

/** Builds the ImageInfo of a qcow2 image from its loaded metadata. */
export function qcow2ImageInfo(
  meta: Qcow2Metadata,
  filename: string,
  actualSize: number | undefined,
): ImageInfo {
  const h = meta.hdr.header;
  const info: ImageInfo = { filename, format: 'qcow2', 'virtual-size': 0 };
  // Member order follows the QAPI schema (it decides qemu's key order on ties).
  info['dirty-flag'] = (h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n;
  if (actualSize !== undefined) info['actual-size'] = actualSize;
  info['virtual-size'] = Number((meta.sizeBytes / 512n) * 512n);
  info['cluster-size'] = meta.clusterSize;
  if (h.cryptMethod !== CRYPT_NONE) info.encrypted = true;
  if (meta.hdr.backingFile !== undefined && cString(meta.hdr.backingFile, 1024) !== '') {
    const backing = cString(meta.hdr.backingFile, 1024);
    info['backing-filename'] = backing;
    const full = fullBackingFilename(filename, backing);
    if (full !== undefined) info['full-backing-filename'] = full;
    const fmt = findExtension(meta.hdr.extensions, 'backing-format');
    if (fmt && cString(fmt.name, 16) !== '') info['backing-filename-format'] = cString(fmt.name, 16);
  }
  if (meta.snapshots.length > 0) info.snapshots = meta.snapshots.map(snapshotInfo);

  info['format-specific'] = { type: 'qcow2', data: qcow2Specific(meta) };
  return info;
}

/** qcow2_get_specific_info: v2 images report only compat, refcount bits and compression. */
function qcow2Specific(meta: Qcow2Metadata): ImageInfoSpecificQcow2 {
  const h = meta.hdr.header;
  const d: Partial<ImageInfoSpecificQcow2> = { compat: h.version === 2 ? '0.10' : '1.1' };
  if (h.version === 3) {
    const dataFile = findExtension(meta.hdr.extensions, 'data-file');
    if (dataFile) d['data-file'] = cString(dataFile.name, Number.MAX_SAFE_INTEGER);
    // qemu-img info does not open the data file; has_data_file() then follows the feature bit.
    if ((h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n) {
      d['data-file-raw'] = (h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n;
    }
    d['extended-l2'] = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
    d['lazy-refcounts'] = (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
    d.corrupt = (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n;
  }
  d['refcount-bits'] = 2 ** h.refcountOrder;
  if (meta.encrypt) d.encrypt = meta.encrypt;
  if (h.version === 3 && meta.bitmaps.length > 0) {
    d.bitmaps = meta.bitmaps.map((b) => ({
      name: cName(b.name),
      granularity: 2 ** b.granularityBits,
      flags: bitmapFlagNames(b.flags),
    }));
  }
  d['compression-type'] = h.compressionType === COMPRESSION_ZSTD ? 'zstd' : 'zlib';
  return d as ImageInfoSpecificQcow2;
}

/** Builds the ImageInfo of a raw image of `fileSize` bytes. */
export function rawImageInfo(filename: string, fileSize: number, actualSize: number | undefined): ImageInfo {
  const info: ImageInfo = { filename, format: 'raw', 'dirty-flag': false, 'virtual-size': 0 };
  if (actualSize !== undefined) info['actual-size'] = actualSize;
  // The file driver counts whole sectors, rounding a partial last sector up.
  info['virtual-size'] = Math.ceil(fileSize / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE;
  return info;
}

/** Prefixes an open failure the way qemu-img's img_open does: "Could not open 'x': ...". */
function openError(name: string, err: unknown): TsimgError {
  const inner = err instanceof TsimgError ? err : new TsimgError('io', String(err instanceof Error ? err.message : err));
  const hint = (err as { hint?: unknown }).hint;
  const out = new TsimgError(inner.code, `Could not open '${name}': ${inner.message}`, { cause: err, errno: inner.errno });
  if (typeof hint === 'string') Object.assign(out, { hint });
  return out;
}

/** Opens a host file read-only; a directory or device gets qemu's file-driver message. */
async function openFile(path: string): Promise<FileDevice> {
  try {
    return await FileDevice.open(path, { readOnly: true });
  } catch (err) {
    if (err instanceof TsimgError && (err.errno === 'EISDIR' || err.code === 'unsupported')) {
      throw new TsimgError('usage', `'file' driver requires '${path}' to be a regular file`);
    }
    throw err;
  }
}

/** Where an image is: the host file, and the format its name or options ask for. */
export interface ImageLocation {
  /** The host file's path; qemu reports it as the image's filename. */
  path: string;
  /** `driver` from block options ('qcow2', 'raw', or 'file' for the bare protocol). */
  format?: string;
}

/**
 * Resolves flattened block options (`--image-opts` text, or a `json:` name) to a host file:
 * `driver`, `file.driver` (= file), `file.filename` / `file`, or `filename` with driver=file.
 * Throws qemu's messages (without the "Could not open" prefix).
 */
export function locateImageFromOptions(opts: ReadonlyMap<string, string>): ImageLocation {
  const driver = opts.get('driver');
  if (driver === 'file') {
    for (const key of opts.keys()) {
      if (key !== 'driver' && key !== 'filename') throw new UsageError(`Invalid parameter '${key}'`);
    }
    const path = opts.get('filename');
    if (path === undefined || path === '') throw new UsageError("The 'file' block driver requires a file name");
    return { path, format: 'file' };
  }
  for (const key of opts.keys()) {
    if (!['driver', 'file', 'file.driver', 'file.filename'].includes(key)) {
      throw new UsageError(
        driver !== undefined ? `Block format '${driver}' does not support the option '${key}'` : `Invalid parameter '${key}'`,
      );
    }
  }
  const fileDriver = opts.get('file.driver');
  const node = opts.get('file');
  if (node !== undefined) {
    // A string `file` names an existing block node; tsimg has none (nor has qemu-img).
    if (fileDriver !== undefined || opts.has('file.filename')) {
      throw new UsageError('Cannot reference an existing block device with additional options or a new filename');
    }
    throw new TsimgError('not-found', `Cannot find device='${node}' nor node-name='${node}'`);
  }
  if (fileDriver !== undefined && fileDriver !== 'file') throw new UnsupportedError(`Unknown protocol '${fileDriver}'`);
  const path = opts.get('file.filename');
  if (path === undefined) {
    if (fileDriver !== undefined) throw new UsageError("The 'file' block driver requires a file name");
    throw new UsageError('A block device must be specified for "file"');
  }
  if (path === '') throw new UsageError("The 'file' block driver requires a file name");
  return { path, format: driver };
}

/** Flattens a JSON object into dotted keys (qemu's qdict_flatten), values as strings. */
function flattenJson(value: unknown, prefix: string, out: Map<string, string>): void {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) flattenJson(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out.set(prefix, typeof value === 'string' ? value : JSON.stringify(value));
  }
}

/**
 * Resolves an image name as qemu does for a filename argument or a backing file name: a plain
 * path, `file:<path>`, or `json:{...}` block options; any other `proto:` is an unknown protocol.
 */
export function locateImage(name: string): ImageLocation {
  if (!pathHasProtocol(name)) return { path: name };
  const proto = name.slice(0, name.indexOf(':'));
  if (proto === 'file') {
    const path = name.slice(5);
    if (path === '') throw new UsageError("The 'file' block driver requires a file name");
    return { path };
  }
  if (proto === 'json') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(name.slice(5));
    } catch {
      throw new UsageError('Could not parse the JSON options: JSON parse error');
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new UsageError('Could not parse the JSON options: Invalid JSON object given');
    }
    const opts = new Map<string, string>();
    flattenJson(parsed, '', opts);
    return locateImageFromOptions(opts);
  }
  throw new UnsupportedError(`Unknown protocol '${proto}'`);
}

/**
 * Gathers the ImageInfo of one image, as `qemu-img info` does for each image it reports. `name`
 * is a filename (plain, `file:` or `json:`), or the text of `blockOptions` when those are given.
 * Errors carry qemu's "Could not open '<name>': ..." wording.
 */
export async function collectImageInfo(name: string, options: CollectInfoOptions = {}): Promise<ImageInfoResult> {
  let loc: ImageLocation;
  try {
    loc = options.blockOptions ? locateImageFromOptions(options.blockOptions) : locateImage(name);
  } catch (err) {
    throw openError(name, err);
  }
  const requested = options.format ?? loc.format;
  if (requested !== undefined && requested !== 'qcow2' && requested !== 'raw' && requested !== 'file') {
    throw openError(
      name,
      new UnsupportedError(
        FOREIGN_FORMATS.has(requested) ? `image format '${requested}' is not supported by tsimg` : `Unknown driver '${requested}'`,
      ),
    );
  }
  const filename = loc.path;
  let dev: FileDevice;
  try {
    dev = await openFile(filename);
  } catch (err) {
    throw openError(name, err);
  }
  let meta: Qcow2Metadata;
  let actualSize: number | undefined;
  try {
    let format = requested;
    if (format === undefined) {
      const first = new Uint8Array(2048);
      await dev.read(0, first);
      format = probeFormat(first);
      if (format !== 'qcow2' && format !== 'raw') {
        throw new UnsupportedError(`image format '${format}' is not supported by tsimg`);
      }
    }
    const actual = await dev.allocatedSize();
    if (format !== 'qcow2') {
      const info = rawImageInfo(filename, dev.size(), actual);
      info.format = format;
      return { info, warnings: [] };
    }
    meta = await loadQcow2Metadata(dev);
    actualSize = actual;
  } catch (err) {
    throw openError(name, err);
  } finally {
    await dev.close();
  }
  // bdrv_getlength refuses more than INT64_MAX bytes; info reports that after a successful open.
  if (meta.sizeBytes / BigInt(BDRV_SECTOR_SIZE) > ((1n << 63n) - 1n) / BigInt(BDRV_SECTOR_SIZE)) {
    throw new TsimgError('limit', `Can't get image size '${filename}': File too large`, { errno: 'EFBIG' });
  }
  return { info: qcow2ImageInfo(meta, filename, actualSize), warnings: meta.warnings };
}

/** Options for {@link collectImageInfoList}. */
export interface CollectInfoListOptions extends CollectInfoOptions {
  /** Follow the backing chain (`--backing-chain`). */
  chain?: boolean;
  /** Called with each image's warnings as soon as it is opened (qemu prints them then). */
  onWarnings?: (warnings: string[]) => void;
}

/**
 * qemu-img's collect_image_info_list: the image, then (with `chain`) each backing file by its
 * full name and recorded format, refusing loops and unresolvable relative names.
 */
export async function collectImageInfoList(filename: string, options: CollectInfoListOptions = {}): Promise<ImageInfo[]> {
  const seen = new Set<string>();
  const out: ImageInfo[] = [];
  let next: string | undefined = filename;
  let format = options.format;
  while (next !== undefined) {
    if (seen.has(next)) throw new FormatError(`Backing file '${next}' creates an infinite loop.`);
    seen.add(next);
    const { info, warnings } = await collectImageInfo(next, { format, blockOptions: out.length === 0 ? options.blockOptions : undefined });
    if (warnings.length > 0) options.onWarnings?.(warnings);
    out.push(info);
    next = undefined;
    format = undefined;
    if (options.chain) {
      if (info['full-backing-filename'] !== undefined) {
        next = info['full-backing-filename'];
      } else if (info['backing-filename'] !== undefined) {
        throw new FormatError(
          `Could not determine absolute backing filename, but backing filename '${info['backing-filename']}' present`,
        );
      }
      if (info['backing-filename-format'] !== undefined) format = info['backing-filename-format'];
    }
  }
  return out;
}
