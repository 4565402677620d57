/**
 * The qcow2 header and its extensions: pure codecs over a DataView, plus `loadHeader` which
 * reads and decodes them from a device (qemu's open checks are in qcow2-metadata.ts).
 *
 * Layout (docs/interop/qcow2.txt): a 72-byte v2 header, v3 adds fields up to header_length
 * (104, or 112 with the compression_type byte), then extensions `{u32 type, u32 length, data
 * padded to 8}` until a type-0 end marker. The backing file name lives at backing_file_offset.
 */
import { FormatError, UnsupportedError, type BlockDevice } from '@tsimg/raw';
import { QCOW2_MAGIC, MIN_CLUSTER_BITS, MAX_CLUSTER_BITS, MAX_BACKING_FILE_NAME } from './types.js';

/** Every field of the fixed header, v2 and v3 (v3-only fields take their v2 defaults for v2). */
export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  /** Virtual disk size in bytes. */
  size: number;
  cryptMethod: number;
  /** Number of entries in the active L1 table. */
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  /** refcount_bits = 1 << refcountOrder. */
  refcountOrder: number;
  /** 72 for v2; 104 or 112 for v3. */
  headerLength: number;
  /** 0 zlib, 1 zstd (present on disk only when headerLength > 104). */
  compressionType: number;
}

/** One entry of the feature name table extension. */
export interface FeatureName {
  /** 0 incompatible, 1 compatible, 2 autoclear. */
  type: number;
  bit: number;
  name: string;
}

/** Header extension types (qcow2.txt). */
export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_NAMES = 0x6803f857;
export const EXT_CRYPTO_HEADER = 0x0537be77;
export const EXT_BITMAPS = 0x23852875;
export const EXT_DATA_FILE = 0x44415441;

/** A decoded header extension; unknown ones are kept byte for byte. */
export type HeaderExtension =
  | { kind: 'backing-format'; name: string }
  | { kind: 'feature-names'; features: FeatureName[] }
  | { kind: 'bitmaps'; nbBitmaps: number; bitmapDirectorySize: number; bitmapDirectoryOffset: number }
  | { kind: 'crypto-header'; offset: number; length: number }
  | { kind: 'data-file'; name: string }
  | { kind: 'unknown'; type: number; data: Uint8Array };

/** Size of the fixed v2 header. */
export const V2_HEADER_LENGTH = 72;
/** Size of the v3 header without / with the compression_type field (qemu writes 112). */
export const V3_HEADER_LENGTH_MIN = 104;
export const V3_HEADER_LENGTH = 112;

const FEATURE_NAME_ENTRY = 48;

/**
 * A 64-bit field as a number. Values past 2^53 come back rounded: qemu accepts some of them
 * (an L1 table far past the end of the file reads as zeroes), so decoding must not refuse them;
 * the checks that bound them (alignment, table limits) run on open, where the exact bits are
 * available from the view.
 */
function u64(view: DataView, offset: number): number {
  return Number(view.getBigUint64(offset));
}

/** Decodes the fixed header at the start of `view`. Checks only the magic and the version. */
export function decodeHeader(view: DataView): Qcow2Header {
  if (view.byteLength < V2_HEADER_LENGTH || view.getUint32(0) !== QCOW2_MAGIC) {
    throw new FormatError('Image is not in qcow2 format');
  }
  const version = view.getUint32(4);
  if (version < 2 || version > 3) {
    throw new UnsupportedError(`Unsupported qcow2 version ${version}`, { errno: 'ENOTSUP' });
  }
  const h: Qcow2Header = {
    version: version as 2 | 3,
    backingFileOffset: u64(view, 8),
    backingFileSize: view.getUint32(16),
    clusterBits: view.getUint32(20),
    size: u64(view, 24),
    cryptMethod: view.getUint32(32),
    l1Size: view.getUint32(36),
    l1TableOffset: u64(view, 40),
    refcountTableOffset: u64(view, 48),
    refcountTableClusters: view.getUint32(56),
    nbSnapshots: view.getUint32(60),
    snapshotsOffset: u64(view, 64),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: 0,
  };
  if (version === 3) {
    if (view.byteLength < V3_HEADER_LENGTH_MIN) throw new FormatError('qcow2 header is truncated');
    h.incompatibleFeatures = view.getBigUint64(72);
    h.compatibleFeatures = view.getBigUint64(80);
    h.autoclearFeatures = view.getBigUint64(88);
    h.refcountOrder = view.getUint32(96);
    h.headerLength = view.getUint32(100);
    if (h.headerLength > V3_HEADER_LENGTH_MIN && view.byteLength > V3_HEADER_LENGTH_MIN) {
      h.compressionType = view.getUint8(104);
    }
  }
  return h;
}

/**
 * Encodes the fixed header into `view` (which must hold `h.headerLength` bytes for v3, 72 for
 * v2). Bytes between 105 and headerLength are written as zero padding.
 */
export function encodeHeader(h: Qcow2Header, view: DataView): void {
  view.setUint32(0, QCOW2_MAGIC);
  view.setUint32(4, h.version);
  view.setBigUint64(8, BigInt(h.backingFileOffset));
  view.setUint32(16, h.backingFileSize);
  view.setUint32(20, h.clusterBits);
  view.setBigUint64(24, BigInt(h.size));
  view.setUint32(32, h.cryptMethod);
  view.setUint32(36, h.l1Size);
  view.setBigUint64(40, BigInt(h.l1TableOffset));
  view.setBigUint64(48, BigInt(h.refcountTableOffset));
  view.setUint32(56, h.refcountTableClusters);
  view.setUint32(60, h.nbSnapshots);
  view.setBigUint64(64, BigInt(h.snapshotsOffset));
  if (h.version === 3) {
    view.setBigUint64(72, h.incompatibleFeatures);
    view.setBigUint64(80, h.compatibleFeatures);
    view.setBigUint64(88, h.autoclearFeatures);
    view.setUint32(96, h.refcountOrder);
    view.setUint32(100, h.headerLength);
    for (let i = V3_HEADER_LENGTH_MIN; i < h.headerLength; i++) view.setUint8(i, 0);
    if (h.headerLength > V3_HEADER_LENGTH_MIN) view.setUint8(104, h.compressionType);
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: false });
const utf8enc = new TextEncoder();

/** Turns the bytes of a name into a string (the default decodes UTF-8, replacing bad bytes). */
export type NameDecoder = (bytes: Uint8Array) => string;

const utf8Lossy: NameDecoder = (bytes) => utf8.decode(bytes);

/** Decodes a NUL-terminated (or length-bounded) name with `text`. */
export function decodeCString(bytes: Uint8Array, text: NameDecoder = utf8Lossy): string {
  const nul = bytes.indexOf(0);
  return text(nul < 0 ? bytes : bytes.subarray(0, nul));
}

/** Where the extension area starts: after the header (v3 header_length, v2 72). */
export function extensionsStart(h: Qcow2Header): number {
  return h.version === 3 ? h.headerLength : V2_HEADER_LENGTH;
}

/** Decodes a feature name table body: whole 48-byte entries, a trailing partial one ignored. */
export function decodeFeatureNameTable(body: Uint8Array, text: NameDecoder = utf8Lossy): FeatureName[] {
  const features: FeatureName[] = [];
  for (let i = 0; i + FEATURE_NAME_ENTRY <= body.length; i += FEATURE_NAME_ENTRY) {
    features.push({ type: body[i]!, bit: body[i + 1]!, name: decodeCString(body.subarray(i + 2, i + FEATURE_NAME_ENTRY), text) });
  }
  return features;
}

/** The fields of a bitmaps extension body, the 64-bit ones exact. */
export interface BitmapsExtensionBody {
  nbBitmaps: number;
  /** Must be zero (qemu refuses the image otherwise). */
  reserved: number;
  bitmapDirectorySize: bigint;
  bitmapDirectoryOffset: bigint;
}

/** Decodes a bitmaps extension body; `body` must hold at least its 24 bytes. */
export function decodeBitmapsBody(body: DataView): BitmapsExtensionBody {
  return {
    nbBitmaps: body.getUint32(0),
    reserved: body.getUint32(4),
    bitmapDirectorySize: body.getBigUint64(8),
    bitmapDirectoryOffset: body.getBigUint64(16),
  };
}

/** Decodes a full disk encryption header pointer body; `body` must hold its 16 bytes. */
export function decodeCryptoHeaderBody(body: DataView): { offset: bigint; length: bigint } {
  return { offset: body.getBigUint64(0), length: body.getBigUint64(8) };
}

/**
 * Decodes one extension body of `type` (the caller has checked the lengths the bitmaps and
 * crypto bodies need). 64-bit fields past 2^53 come back rounded; names go through `text`.
 */
export function decodeExtension(type: number, data: Uint8Array, text: NameDecoder = utf8Lossy): HeaderExtension {
  const d = new DataView(data.buffer, data.byteOffset, data.byteLength);
  switch (type) {
    case EXT_BACKING_FORMAT:
      return { kind: 'backing-format', name: decodeCString(data, text) };
    case EXT_FEATURE_NAMES:
      return { kind: 'feature-names', features: decodeFeatureNameTable(data, text) };
    case EXT_BITMAPS: {
      const b = decodeBitmapsBody(d);
      return {
        kind: 'bitmaps',
        nbBitmaps: b.nbBitmaps,
        bitmapDirectorySize: Number(b.bitmapDirectorySize),
        bitmapDirectoryOffset: Number(b.bitmapDirectoryOffset),
      };
    }
    case EXT_CRYPTO_HEADER: {
      const c = decodeCryptoHeaderBody(d);
      return { kind: 'crypto-header', offset: Number(c.offset), length: Number(c.length) };
    }
    case EXT_DATA_FILE:
      return { kind: 'data-file', name: decodeCString(data, text) };
    default:
      return { kind: 'unknown', type, data: data.slice() };
  }
}

/**
 * Decodes the extensions in `view` from `start` up to the end marker, not reading past `end`
 * (qemu stops at the backing file name or the end of the first cluster, whichever is first).
 */
export function decodeExtensions(view: DataView, start: number, end: number): HeaderExtension[] {
  const out: HeaderExtension[] = [];
  let off = start;
  while (off + 8 <= end) {
    const type = view.getUint32(off);
    const len = view.getUint32(off + 4);
    off += 8;
    // qemu checks the length before looking at the type, even for the end marker.
    if (off > end || len > end - off) throw new FormatError('Header extension too large', { errno: 'EINVAL' });
    if (type === EXT_END) return out;
    if (type === EXT_BITMAPS && len < 24) throw new FormatError('bitmaps_ext: Invalid extension length');
    if (type === EXT_CRYPTO_HEADER && len !== 16) throw new FormatError('Invalid encryption header extension length');
    out.push(decodeExtension(type, new Uint8Array(view.buffer, view.byteOffset + off, len)));
    off += (len + 7) & ~7;
  }
  return out;
}

/** The body bytes of one extension (without type/length/padding). */
function extensionBody(ext: HeaderExtension): { type: number; body: Uint8Array } {
  switch (ext.kind) {
    case 'backing-format':
      return { type: EXT_BACKING_FORMAT, body: utf8enc.encode(ext.name) };
    case 'data-file':
      return { type: EXT_DATA_FILE, body: utf8enc.encode(ext.name) };
    case 'feature-names': {
      const body = new Uint8Array(ext.features.length * FEATURE_NAME_ENTRY);
      ext.features.forEach((f, i) => {
        body[i * FEATURE_NAME_ENTRY] = f.type;
        body[i * FEATURE_NAME_ENTRY + 1] = f.bit;
        body.set(utf8enc.encode(f.name).subarray(0, 46), i * FEATURE_NAME_ENTRY + 2);
      });
      return { type: EXT_FEATURE_NAMES, body };
    }
    case 'bitmaps': {
      const body = new Uint8Array(24);
      const d = new DataView(body.buffer);
      d.setUint32(0, ext.nbBitmaps);
      d.setBigUint64(8, BigInt(ext.bitmapDirectorySize));
      d.setBigUint64(16, BigInt(ext.bitmapDirectoryOffset));
      return { type: EXT_BITMAPS, body };
    }
    case 'crypto-header': {
      const body = new Uint8Array(16);
      const d = new DataView(body.buffer);
      d.setBigUint64(0, BigInt(ext.offset));
      d.setBigUint64(8, BigInt(ext.length));
      return { type: EXT_CRYPTO_HEADER, body };
    }
    case 'unknown':
      return { type: ext.type, body: ext.data };
  }
}

/** Encodes extensions in the given order followed by the end marker. */
export function encodeExtensions(exts: readonly HeaderExtension[]): Uint8Array {
  const parts = exts.map(extensionBody);
  const total = parts.reduce((n, p) => n + 8 + ((p.body.length + 7) & ~7), 0) + 8;
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let off = 0;
  for (const p of parts) {
    view.setUint32(off, p.type);
    view.setUint32(off + 4, p.body.length);
    out.set(p.body, off + 8);
    off += 8 + ((p.body.length + 7) & ~7);
  }
  // end marker: 8 zero bytes, already zero
  return out;
}

/** The feature name table qemu 7.2 writes into every image it creates, in its order. */
export const QEMU_FEATURE_NAMES: readonly FeatureName[] = [
  { type: 0, bit: 0, name: 'dirty bit' },
  { type: 0, bit: 1, name: 'corrupt bit' },
  { type: 0, bit: 2, name: 'external data file' },
  { type: 0, bit: 3, name: 'compression type' },
  { type: 0, bit: 4, name: 'extended L2 entries' },
  { type: 1, bit: 0, name: 'lazy refcounts' },
  { type: 2, bit: 0, name: 'bitmaps' },
  { type: 2, bit: 1, name: 'raw external data' },
];

/** A header with its extensions and the backing file name, as read from an image. */
export interface HeaderInfo {
  header: Qcow2Header;
  extensions: HeaderExtension[];
  /** Backing file name, when backing_file_offset is set. */
  backingFile?: string;
}

/**
 * The extension of a kind as qemu sees it: the last one, since qcow2_read_extensions lets each
 * occurrence of a kind replace what an earlier one set.
 */
export function findExtension<K extends HeaderExtension['kind']>(
  exts: readonly HeaderExtension[],
  kind: K,
): Extract<HeaderExtension, { kind: K }> | undefined {
  for (let i = exts.length - 1; i >= 0; i--) {
    if (exts[i]!.kind === kind) return exts[i] as Extract<HeaderExtension, { kind: K }>;
  }
  return undefined;
}

/**
 * Reads and decodes the header, its extensions and the backing file name from `dev` — the
 * codecs only. qemu's open-time checks (qcow2_do_open: feature bits, table pointers, sizes,
 * extension rules, in qemu's order with its messages) belong to `openQcow2Metadata`
 * (qcow2-metadata.ts), which every opener uses; this is for images known to be sound (e.g. one
 * just written). It refuses only what it cannot decode: a cluster size out of range (the first
 * cluster is read whole) and a backing file name longer than any qemu accepts.
 */
export async function loadHeader(dev: BlockDevice): Promise<HeaderInfo> {
  // Read the fixed header zero-padded: a file shorter than a header still decodes.
  const fixed = new Uint8Array(V3_HEADER_LENGTH);
  await dev.read(0, fixed.subarray(0, Math.min(fixed.length, dev.size())));
  const header = decodeHeader(new DataView(fixed.buffer));
  if (header.clusterBits < MIN_CLUSTER_BITS || header.clusterBits > MAX_CLUSTER_BITS) {
    throw new FormatError(`Unsupported cluster size: 2^${header.clusterBits}`, { errno: 'EINVAL' });
  }
  const clusterSize = 2 ** header.clusterBits;
  const first = new Uint8Array(clusterSize);
  await dev.read(0, first.subarray(0, Math.min(first.length, dev.size())));
  const extEnd = header.backingFileOffset > 0 ? Math.min(header.backingFileOffset, clusterSize) : clusterSize;
  const start = extensionsStart(header);
  const extensions = extEnd > start ? decodeExtensions(new DataView(first.buffer), start, extEnd) : [];
  let backingFile: string | undefined;
  if (header.backingFileOffset > 0) {
    if (header.backingFileSize > MAX_BACKING_FILE_NAME) throw new FormatError('Backing file name too long', { errno: 'EINVAL' });
    const nameBytes = new Uint8Array(header.backingFileSize);
    await dev.read(header.backingFileOffset, nameBytes.subarray(0, Math.max(0, Math.min(nameBytes.length, dev.size() - header.backingFileOffset))));
    backingFile = decodeCString(nameBytes);
  }
  return { header, extensions, backingFile };
}
