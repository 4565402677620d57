/**
 * What `qemu-img info` reports about an image, gathered as a typed mirror of qemu 7.2's QAPI
 * `ImageInfo`: the keys are QAPI's own names, and every object is built in QAPI schema order
 * (qemu's JSON key order derives from it; the CLI's formatter does the rest).
 *
 * Like qemu-img info (which opens with BDRV_O_NO_IO | BDRV_O_NO_BACKING), this reads only
 * metadata (qcow2-metadata.ts, with qemu's open-time checks and messages, so an image qemu
 * refuses is refused here too). It never opens the backing file or the external data file.
 * Also here: format probing, and resolving image names (`file:`, `json:`, `--image-opts`).
 */
import { FileDevice, FormatError, TsimgError, UnsupportedError, UsageError } from '@tsimg/raw';
import { findExtension } from './header.js';
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  COMPRESSION_ZSTD,
  CRYPT_NONE,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  QCOW2_MAGIC,
} from './types.js';
import { snapshotIcount, snapshotVmStateSize, type Qcow2Snapshot } from './snapshot.js';
import { bitmapFlagNames, cName } from './bitmap-directory.js';
import { cutAtNul, decodeByteString, encodeByteString } from './byte-string.js';
import { loadQcow2Metadata, type Qcow2EncryptionInfo, type Qcow2Metadata } from './qcow2-metadata.js';

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
