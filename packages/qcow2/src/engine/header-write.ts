/**
 * Writes to the image header of an open image: the feature-bit fields (dirty, corrupt,
 * autoclear bits), the header fields that switch to a new table, and the header cluster with
 * a new bitmaps extension — each followed by a sync, as qemu orders them.
 */
import { TsimgError, LimitError, UsageError } from '@tsimg/raw';
import {
  encodeExtensions,
  encodeHeader,
  findExtension,
  V2_HEADER_LENGTH,
  QEMU_FEATURE_NAMES,
  V3_HEADER_LENGTH,
  type HeaderExtension,
  type Qcow2Header,
} from '../format/header.js';
import { AUTOCLEAR_BITMAPS, INCOMPAT_DIRTY, MAX_BACKING_FILE_NAME } from '../format/types.js';
import { flushAll, type EngineState } from './state.js';

/** The bitmaps header extension's fields (none: no extension). */
export type BitmapsExtension = { nbBitmaps: number; bitmapDirectorySize: number; bitmapDirectoryOffset: number };

/** Writes the three feature-bit fields of a v3 header (bytes 72..95) and syncs. */
export async function writeFeatureFields(s: EngineState): Promise<void> {
  if (s.version < 3) return;
  const b = new Uint8Array(24);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, s.header.incompatibleFeatures);
  v.setBigUint64(8, s.header.compatibleFeatures);
  v.setBigUint64(16, s.header.autoclearFeatures);
  await s.file.write(72, b);
  await s.file.flush();
}

/** The allocator's hook: the header names a new refcount table. */
export async function writeReftableHeader(s: EngineState, offset: number, clusters: number): Promise<void> {
  const b = new Uint8Array(12);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(offset));
  v.setUint32(8, clusters);
  await headerSwitch(s, () => s.file.write(48, b));
  s.header.refcountTableOffset = offset;
  s.header.refcountTableClusters = clusters;
}

/**
 * A header write that moves a table (L1, refcount table), then a sync. When it fails nobody
 * knows which table the header on disk names, and both must stay as they are: the image
 * takes no more changes in this session. (Cached tables are still written back: the old and
 * the new table name the same L2 tables and refcount blocks.)
 */
export async function headerSwitch(s: EngineState, write: () => Promise<void>): Promise<void> {
  try {
    await write();
    await s.file.flush();
  } catch (err) {
    s.frozen = true;
    throw err;
  }
}

/**
 * Before the first change. A writable v3 image holds its bitmaps and tracks every change
 * (held-bitmaps.ts); should an image ever change with valid bitmaps it does not hold, clearing
 * the autoclear bit marks them invalid, as the spec asks of software that does not track them.
 */
export async function beforeChange(s: EngineState): Promise<void> {
  if (s.heldBitmaps === undefined && !s.cleanedAutoclear && (s.header.autoclearFeatures & AUTOCLEAR_BITMAPS) !== 0n) {
    s.header.autoclearFeatures &= ~AUTOCLEAR_BITMAPS;
    await writeFeatureFields(s);
  }
  s.cleanedAutoclear = true;
}

/** qcow2_mark_dirty, before the first allocation with lazy refcounts. */
export async function markDirtyIfLazy(s: EngineState): Promise<void> {
  if (!s.lazy || s.markedDirty || s.version < 3) return;
  s.header.incompatibleFeatures |= INCOMPAT_DIRTY;
  await writeFeatureFields(s);
  s.markedDirty = true;
}

/** qcow2_mark_clean, on close once every refcount is on disk: the image is consistent. */
export async function markClean(s: EngineState): Promise<void> {
  // A mark whose write or flush failed may have reached the disk all the same: the bit set in
  // memory is cleared too.
  if (!s.markedDirty && (s.header.incompatibleFeatures & INCOMPAT_DIRTY) === 0n) return;
  s.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
  await writeFeatureFields(s);
  s.markedDirty = false;
}

/**
 * qcow2_update_header's order of the extensions: backing format, data file, crypto header,
 * feature table (v3, clusters above 4 KiB), bitmaps, then the unknown extensions as they were.
 */
function headerExtensionsWith(exts: readonly HeaderExtension[], clusterSize: number, bitmaps: BitmapsExtension | undefined, version = 3): HeaderExtension[] {
  const next: HeaderExtension[] = [];
  for (const kind of ['backing-format', 'data-file', 'crypto-header'] as const) {
    const e = findExtension(exts, kind);
    if (e) next.push(e);
  }
  if (version >= 3 && clusterSize > 4096) next.push({ kind: 'feature-names', features: [...QEMU_FEATURE_NAMES] });
  if (bitmaps) next.push({ kind: 'bitmaps', ...bitmaps });
  next.push(...exts.filter((e) => e.kind === 'unknown'));
  return next;
}

/**
 * Lays out the header cluster as qcow2_update_header does: the header (keeping the fields
 * past the 112 bytes qemu knows, read from the file), the extensions, the backing file name.
 */
async function encodeHeaderCluster(
  s: EngineState,
  next: readonly HeaderExtension[],
  autoclear: bigint,
  what = 'Failed to update bitmap extension',
): Promise<{ buf: Uint8Array; updated: Qcow2Header }> {
  const h = s.header;
  const cs = s.clusterSize;
  const buf = new Uint8Array(cs);
  // A v2 header is 72 bytes with the extensions right after it (qemu writes no v3 fields).
  // Header fields past the 112 bytes qemu knows are kept (unknown_header_fields). The version
  // is the header's: amend changes it before the rewrite.
  const headerLength = h.version < 3 ? V2_HEADER_LENGTH : Math.max(h.headerLength, V3_HEADER_LENGTH);
  if (h.version >= 3 && h.headerLength > V3_HEADER_LENGTH) await s.file.read(V3_HEADER_LENGTH, buf.subarray(V3_HEADER_LENGTH, h.headerLength));
  const extBytes = encodeExtensions(next);
  const nospc = (): never => {
    throw new LimitError(`${what}: No space left on device`, { errno: 'ENOSPC' });
  };
  if (headerLength + extBytes.length > cs) nospc();
  buf.set(extBytes, headerLength);
  let backingFileOffset = 0;
  let backingFileSize = 0;
  if (s.backingFile !== undefined) {
    const name = new TextEncoder().encode(s.backingFile);
    backingFileOffset = headerLength + extBytes.length;
    if (cs - backingFileOffset < name.length) nospc();
    buf.set(name, backingFileOffset);
    backingFileSize = name.length;
  }
  const updated: Qcow2Header = { ...h, headerLength, backingFileOffset, backingFileSize, autoclearFeatures: autoclear };
  if (h.version < 3) {
    encodeHeader(updated, new DataView(buf.buffer));
    return { buf, updated };
  }
  const unknownFields = buf.slice(V3_HEADER_LENGTH, headerLength);
  encodeHeader(updated, new DataView(buf.buffer));
  buf.set(unknownFields, V3_HEADER_LENGTH);
  return { buf, updated };
}

/**
 * update_ext_header_and_dir's header step: writes the caches and syncs (qcow2_flush_caches,
 * so everything the new directory names is on disk first), then rewrites the header cluster
 * as qcow2_update_header does with the bitmaps extension `bitmaps` (none when undefined) and
 * the bitmaps autoclear bit set to match, and syncs again.
 */
export async function updateBitmapsExtension(s: EngineState, bitmaps: BitmapsExtension | undefined): Promise<void> {
  await flushAll(s, false);
  const exts = s.extensions;
  const next = headerExtensionsWith(exts, s.clusterSize, bitmaps, s.header.version);
  const { buf, updated } = await encodeHeaderCluster(s, next, autoclearFor(s, bitmaps));
  try {
    await s.file.write(0, buf);
    await s.file.flush();
  } catch (err) {
    // The new header may still reach the disk, autoclear bit and all: the next change must
    // clear the bit again (beforeChange), or the bitmaps would pass for up to date.
    s.header.autoclearFeatures |= AUTOCLEAR_BITMAPS;
    s.cleanedAutoclear = false;
    throw err;
  }
  Object.assign(s.header, updated);
  exts.splice(0, exts.length, ...next);
  s.protectedMetadata.bitmapDirectory = bitmaps ? { offset: bitmaps.bitmapDirectoryOffset, length: bitmaps.bitmapDirectorySize } : undefined;
  // The bitmaps just stored describe the image as it is now; a later change clears the
  // bit again, as beforeChange does for any bitmaps tsimg does not track.
  s.cleanedAutoclear = false;
}

/** The autoclear field with the bitmaps bit saying whether `bitmaps` are stored. */
function autoclearFor(s: EngineState, bitmaps: BitmapsExtension | undefined): bigint {
  const a = s.header.autoclearFeatures;
  return bitmaps ? a | AUTOCLEAR_BITMAPS : a & ~AUTOCLEAR_BITMAPS;
}

/** The bitmaps extension the header carries now (qemu's nb_bitmaps > 0), if the bit says it is valid. */
function currentBitmaps(s: EngineState): BitmapsExtension | undefined {
  const e = findExtension(s.extensions, 'bitmaps');
  if (e === undefined || (s.header.autoclearFeatures & AUTOCLEAR_BITMAPS) === 0n) return undefined;
  return { nbBitmaps: e.nbBitmaps, bitmapDirectorySize: e.bitmapDirectorySize, bitmapDirectoryOffset: e.bitmapDirectoryOffset };
}

/**
 * qcow2_update_header: rewrites the header cluster from the state in memory (the fields, the
 * extensions in qemu's order, the backing file name). Not synced, as in qemu.
 */
export async function rewriteHeader(s: EngineState, what: string): Promise<void> {
  const bitmaps = currentBitmaps(s);
  const next = headerExtensionsWith(s.extensions, s.clusterSize, bitmaps, s.header.version);
  const { buf, updated } = await encodeHeaderCluster(s, next, autoclearFor(s, bitmaps), what);
  await s.file.write(0, buf);
  Object.assign(s.header, updated);
  s.extensions.splice(0, s.extensions.length, ...next);
}

/**
 * qcow2_change_backing_file: a new backing file name and format (undefined: none) in the
 * header, written as qcow2_update_header writes it. Refused as qemu refuses it (EINVAL): a
 * backing file over a raw external data file, or a name longer than 1023 bytes.
 */
export async function changeBackingFile(s: EngineState, name: string | undefined, format: string | undefined): Promise<void> {
  if (name !== undefined && s.dataRaw) throw new UsageError('Invalid argument', { errno: 'EINVAL' });
  if (name !== undefined && new TextEncoder().encode(name).length > MAX_BACKING_FILE_NAME) {
    throw new UsageError('Invalid argument', { errno: 'EINVAL' });
  }
  const exts: HeaderExtension[] = s.extensions.filter((e) => e.kind !== 'backing-format');
  if (format !== undefined) exts.unshift({ kind: 'backing-format', name: format });
  const oldExts = s.extensions.slice();
  const oldName = s.backingFile;
  s.extensions.splice(0, s.extensions.length, ...exts);
  s.backingFile = name;
  try {
    await rewriteHeader(s, 'Could not update the header');
  } catch (err) {
    s.extensions.splice(0, s.extensions.length, ...oldExts);
    s.backingFile = oldName;
    throw err;
  }
}

/**
 * qcow2_update_header for amend: rewrites the whole header cluster from `s.header` (whose
 * version, features, refcount order and table fields the caller has set), with the extensions
 * of `s.extensions` in qemu's order (the feature table only for v3), then syncs. Caches are
 * written first, so everything the new header names is on disk before it.
 */
export async function rewriteHeaderSynced(s: EngineState): Promise<void> {
  await flushAll(s, false);
  const exts = s.extensions;
  const bitmaps = findExtension(exts, 'bitmaps');
  const next = headerExtensionsWith(exts, s.clusterSize, bitmaps, s.header.version);
  const { buf, updated } = await encodeHeaderCluster(s, next, s.header.autoclearFeatures);
  await headerSwitch(s, () => s.file.write(0, buf));
  Object.assign(s.header, updated);
  exts.splice(0, exts.length, ...next);
}
