/**
 * The image as `check` sees it: qemu's BDRVQcow2State reduced to what qcow2_check_refcounts and
 * its helpers read (header fields, the active L1 table, the refcount table, a refcount-block
 * cache), loaded the way qcow2_do_open does with BDRV_O_CHECK, plus the low-level helpers the
 * check needs: 64-bit entries as two 32-bit halves, reads that see zeroes past the end of the
 * file, on-disk refcount lookups and qemu's metadata overlap check.
 *
 * Why not the engine's Qcow2Image: a check must open images the engine refuses (no refcount
 * table, corrupt bit set, dirty lazy refcounts), must not repair a dirty image while opening,
 * and must write metadata through the file device in qemu's order.
 */
import {
  OL_ACTIVE_L1,
  OL_ACTIVE_L2,
  OL_BITMAP_DIRECTORY,
  OL_CACHED,
  OL_INACTIVE_L1,
  OL_MAIN_HEADER,
  OL_REFCOUNT_BLOCK,
  OL_REFCOUNT_TABLE,
  OL_SNAPSHOT_TABLE,
  overlapName,
} from '../format/overlap.js';
import { IoError, type BlockDevice } from '@tsimg/raw';
import { findExtension, type Qcow2Header, type HeaderExtension } from '../format/header.js';
import { INCOMPAT_DATA_FILE, INCOMPAT_EXTL2, AUTOCLEAR_BITMAPS, AUTOCLEAR_KNOWN } from '../format/types.js';
import { getRefcount, setRefcount } from '../format/refcount.js';
import { openQcow2Metadata } from '../engine/open-checks.js';
import { hexAlt, hexDigits64 } from '../format/hex.js';

const TWO32 = 2 ** 32;
/** Offsets from here on cannot be read or written (qemu's int64 request limit). */
const INT64_MAX_APPROX = 2 ** 63;

/** The value of two 32-bit halves as a number (exact below 2^53). */
export function u64(hi: number, lo: number): number {
  return (hi >>> 0) * TWO32 + (lo >>> 0);
}

/** One snapshot table entry as the check uses it. */
export interface CheckSnapshot {
  id: string;
  name: string;
  l1TableOffset: number;
  /** l1_table_offset exactly, as hex (the number is inexact beyond 2^53). */
  l1TableOffsetHex: string;
  l1Size: number;
  /** extra_data_size (after qemu's truncation of oversized extra data). */
  extraDataSize: number;
  /** What a rewrite of the table needs, verbatim: the 40-byte fixed part, the known extra data (up to 24 bytes), the rest, and the ID and name bytes up to a NUL. */
  raw: { fixed: Uint8Array; knownExtra: Uint8Array; unknownExtra: Uint8Array; id: Uint8Array; name: Uint8Array };
}


/**
 * Where check output goes: `fprintf(stderr)` lines; `report`: error_report lines (the CLI adds
 * its program prefix); `raw`: error_printf text without a newline of its own.
 */
export type CheckLog = (line: string, kind?: 'report' | 'raw') => void;

/** The opened image's state during a check (qemu's BDRVQcow2State subset). */
export interface CheckImage {
  file: BlockDevice;
  writable: boolean;
  header: Qcow2Header;
  extensions: HeaderExtension[];
  clusterBits: number;
  clusterSize: number;
  /** Entries per L2 table. */
  l2Size: number;
  /** 8, or 16 with extended L2 entries. */
  l2EntryBytes: number;
  extendedL2: boolean;
  dataFile: boolean;
  refcountOrder: number;
  /** log2 of the refcounts per refcount block. */
  refcountBlockBits: number;
  refcountMax: number;
  virtualSize: number;
  l1TableOffset: number;
  l1Size: number;
  /** The active L1 table as read at open (big-endian entries). */
  l1Table: Uint8Array;
  reftableOffset: number;
  /** Number of refcount table entries. */
  reftableSize: number;
  /** The refcount table (big-endian entries). */
  reftable: Uint8Array;
  nbSnapshots: number;
  snapshotsOffset: number;
  snapshotsSize: number;
  snapshots: CheckSnapshot[];
  bitmaps?: { nbBitmaps: number; dirOffset: number; dirSize: number };
  crypto?: { offset: number; length: number };
  /** Refcount blocks read so far, by offset; `dirty` ones must be written back. */
  refblockCache: Map<number, Uint8Array>;
  dirtyRefblocks: Set<number>;
  signaledCorruption: boolean;
  log: CheckLog;
}

/**
 * Reads `length` bytes at `offset` as qemu's bdrv_pread on a file does: bytes past the end of
 * the file read as zeroes; offsets beyond the int64 range fail with EIO.
 */
export async function readAt(file: BlockDevice, offset: number, length: number): Promise<Uint8Array> {
  if (offset < 0 || offset + length > INT64_MAX_APPROX) {
    throw new IoError('Input/output error', { errno: 'EIO' });
  }
  const out = new Uint8Array(length);
  const size = file.size();
  if (offset < size && length > 0) {
    const n = Math.min(length, size - offset);
    await file.read(offset, n === length ? out : out.subarray(0, n));
  }
  return out;
}

/**
 * Opens the qcow2 image on `file` for a check: qcow2_do_open with BDRV_O_CHECK (the shared
 * open checks of qcow2-metadata.ts, with qemu's messages), reading the active L1 table and the
 * refcount table. A writable open clears unknown autoclear bits, as qemu does. Throws a
 * FormatError/UnsupportedError (the CLI prints "Could not open ...: <message>").
 */
export async function openForCheck(file: BlockDevice, log: CheckLog, writable = !file.readOnly, password?: () => Uint8Array): Promise<CheckImage> {
  const opened = await openQcow2Metadata(file, { check: true, readWrite: writable, readTables: true, password });
  // The check reads no guest data: the unlocked key is only proof that the open would succeed.
  opened.crypto?.cipher.dispose();
  for (const [kind, text] of opened.log) log(text, kind);
  const { header, extensions } = opened.hdr;
  const clusterBits = header.clusterBits;
  const clusterSize = opened.clusterSize;
  const incompat = header.incompatibleFeatures;
  const extendedL2 = (incompat & INCOMPAT_EXTL2) !== 0n;
  const refcountOrder = header.refcountOrder;
  const l2EntryBytes = extendedL2 ? 16 : 8;
  const l2Bits = clusterBits - Math.log2(l2EntryBytes);
  const bm = opened.bitmapsExt;
  const crypto = findExtension(extensions, 'crypto-header');
  if (writable && (header.autoclearFeatures & ~AUTOCLEAR_KNOWN) !== 0n) {
    // qemu clears unknown autoclear bits when it opens an image for writing. (It does so by
    // rewriting the whole header from its open-time state, which in check mode has no
    // snapshots yet, so qemu 7.2 `check -r` drops every internal snapshot of such an image —
    // and of any image with persistent bitmaps. tsimg clears the bits and keeps the snapshots.)
    header.autoclearFeatures &= AUTOCLEAR_KNOWN;
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, header.autoclearFeatures);
    await file.write(88, b);
    await file.flush();
  }
  return {
    file,
    writable,
    header,
    extensions,
    clusterBits,
    clusterSize,
    l2Size: 2 ** l2Bits,
    l2EntryBytes,
    extendedL2,
    dataFile: (incompat & INCOMPAT_DATA_FILE) !== 0n,
    refcountOrder,
    refcountBlockBits: clusterBits - (refcountOrder - 3),
    refcountMax: refcountOrder >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** (1 << refcountOrder) - 1,
    virtualSize: header.size,
    l1TableOffset: header.l1TableOffset,
    l1Size: header.l1Size,
    l1Table: opened.l1Table ?? new Uint8Array(0),
    reftableOffset: header.refcountTableOffset,
    reftableSize: header.refcountTableClusters * (clusterSize / 8),
    reftable: opened.reftable ?? new Uint8Array(0),
    nbSnapshots: 0,
    snapshotsOffset: 0,
    snapshotsSize: 0,
    snapshots: [],
    bitmaps: bm ? { nbBitmaps: bm.nbBitmaps, dirOffset: bm.bitmapDirectoryOffset, dirSize: bm.bitmapDirectorySize } : undefined,
    crypto: crypto && header.cryptMethod !== 0 ? { offset: crypto.offset, length: crypto.length } : undefined,
    refblockCache: new Map(),
    dirtyRefblocks: new Set(),
    signaledCorruption: false,
    log,
  };
}

/** qemu's qcow2_signal_corruption: one message per image, marking it corrupt when fatal. */
export async function signalCorruption(img: CheckImage, fatal: boolean, message: string): Promise<void> {
  fatal = fatal && img.writable;
  if (img.signaledCorruption && !fatal) return;
  if (img.signaledCorruption && (img.header.incompatibleFeatures & 2n) !== 0n) return;
  img.log(
    fatal
      ? `qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed`
      : `qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`,
  );
  img.signaledCorruption = true;
  if (fatal && img.header.version === 3) {
    img.header.incompatibleFeatures |= 2n;
    await writeIncompatibleFeatures(img);
  }
}

/** Writes the header's incompatible-features field (v3) and flushes. */
export async function writeIncompatibleFeatures(img: CheckImage): Promise<void> {
  if (img.header.version !== 3) return;
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, img.header.incompatibleFeatures);
  await img.file.flush();
  await img.file.write(72, b);
  await img.file.flush();
}

/** The refcount table entry `index` as halves. */
function reftableEntry(img: CheckImage, index: number): { hi: number; lo: number } {
  const v = new DataView(img.reftable.buffer, img.reftable.byteOffset);
  return { hi: v.getUint32(index * 8), lo: v.getUint32(index * 8 + 4) };
}

/** Offset (REFT_OFFSET_MASK) of refcount table entry `index`, with its halves for messages. */
export function reftableOffsetAt(img: CheckImage, index: number): { offset: number; hi: number; lo: number } {
  const e = reftableEntry(img, index);
  const lo = (e.lo & 0xffff_fe00) >>> 0;
  return { offset: u64(e.hi, lo), hi: e.hi, lo };
}

/** Raw refcount table entry `index` has reserved bits 0..8 set. */
export function reftableReserved(img: CheckImage, index: number): boolean {
  return (reftableEntry(img, index).lo & 0x1ff) !== 0;
}

/** Result of looking up a refcount block: absent (all zero), failed (-EIO), or its bytes. */
export type RefblockLookup = { kind: 'none' } | { kind: 'error' } | { kind: 'block'; offset: number; block: Uint8Array };

/** qcow2_get_refcount's refcount block lookup for refcount table index `tableIndex`. */
export async function lookupRefblock(img: CheckImage, tableIndex: number): Promise<RefblockLookup> {
  if (tableIndex >= img.reftableSize) return { kind: 'none' };
  const { offset, hi, lo } = reftableOffsetAt(img, tableIndex);
  if (offset === 0) return { kind: 'none' };
  if (lo % img.clusterSize !== 0 || offset % img.clusterSize !== 0) {
    await signalCorruption(
      img,
      true,
      `Refblock offset 0x${hexDigits64(hi, lo)} unaligned (reftable index: ${hexAlt(tableIndex)})`,
    );
    return { kind: 'error' };
  }
  let block = img.refblockCache.get(offset);
  if (!block) {
    try {
      block = await readAt(img.file, offset, img.clusterSize);
    } catch {
      return { kind: 'error' };
    }
    img.refblockCache.set(offset, block);
  }
  return { kind: 'block', offset, block };
}

/** Reads one refcount of a block, tolerating 64-bit values beyond 2^53 (approximated). */
export function readRefcount(block: Uint8Array, index: number, order: number): number {
  if (order < 6) return getRefcount(block, index, order);
  const o = index * 8;
  const v = new DataView(block.buffer, block.byteOffset);
  return u64(v.getUint32(o), v.getUint32(o + 4));
}

/** The exact decimal text of a refcount (64-bit refcounts may exceed 2^53). */
export function refcountText(block: Uint8Array, index: number, order: number): string {
  if (order < 6) return String(getRefcount(block, index, order));
  return new DataView(block.buffer, block.byteOffset).getBigUint64(index * 8).toString();
}

/** qcow2_get_refcount: the on-disk refcount of cluster `clusterIndex`, undefined on error. */
export async function diskRefcount(img: CheckImage, clusterIndex: number): Promise<number | undefined> {
  const r = await lookupRefblock(img, Math.floor(clusterIndex / 2 ** img.refcountBlockBits));
  if (r.kind === 'none') return 0;
  if (r.kind === 'error') return undefined;
  return readRefcount(r.block, clusterIndex % 2 ** img.refcountBlockBits, img.refcountOrder);
}

/** Sets a refcount in a cached refcount block and marks the block dirty. */
export function setCachedRefcount(img: CheckImage, offset: number, block: Uint8Array, index: number, value: number): void {
  setRefcount(block, index, img.refcountOrder, value);
  img.dirtyRefblocks.add(offset);
}

/** Writes every dirty cached refcount block back and flushes (qcow2_cache_flush). */
export async function flushRefblocks(img: CheckImage): Promise<void> {
  if (img.dirtyRefblocks.size === 0) return;
  for (const offset of [...img.dirtyRefblocks].sort((a, b) => a - b)) {
    const block = img.refblockCache.get(offset);
    if (block) await img.file.write(offset, block);
  }
  img.dirtyRefblocks.clear();
  await img.file.flush();
}

function overlaps(a: number, alen: number, b: number, blen: number): boolean {
  return a < b + blen && b < a + alen;
}

/**
 * qemu's qcow2_check_metadata_overlap in the default "cached" mode: the kind of metadata the
 * range would overwrite (a QCOW2_OL_* bit), or 0. `ign` masks kinds not to test.
 */
export function metadataOverlap(img: CheckImage, ign: number, offset: number, size: number): number {
  const chk = OL_CACHED & ~ign;
  if (size === 0) return 0;
  const cs = img.clusterSize;
  if (chk & OL_MAIN_HEADER && offset < cs) return OL_MAIN_HEADER;
  size = Math.ceil(((offset % cs) + size) / cs) * cs;
  offset -= offset % cs;
  if (chk & OL_ACTIVE_L1 && img.l1Size && overlaps(offset, size, img.l1TableOffset, img.l1Size * 8)) return OL_ACTIVE_L1;
  if (chk & OL_REFCOUNT_TABLE && img.reftableSize && overlaps(offset, size, img.reftableOffset, img.reftableSize * 8)) {
    return OL_REFCOUNT_TABLE;
  }
  if (chk & OL_SNAPSHOT_TABLE && img.snapshotsSize && overlaps(offset, size, img.snapshotsOffset, img.snapshotsSize)) {
    return OL_SNAPSHOT_TABLE;
  }
  if (chk & OL_INACTIVE_L1) {
    for (const sn of img.snapshots) {
      if (sn.l1Size && overlaps(offset, size, sn.l1TableOffset, sn.l1Size * 8)) return OL_INACTIVE_L1;
    }
  }
  if (chk & OL_ACTIVE_L2) {
    const v = new DataView(img.l1Table.buffer, img.l1Table.byteOffset);
    for (let i = 0; i < img.l1Size; i++) {
      const l2 = u64(v.getUint32(i * 8) & 0x00ff_ffff, v.getUint32(i * 8 + 4) & 0xffff_fe00);
      if (l2 && overlaps(offset, size, l2, cs)) return OL_ACTIVE_L2;
    }
  }
  if (chk & OL_REFCOUNT_BLOCK) {
    for (let i = 0; i < img.reftableSize; i++) {
      const rb = reftableOffsetAt(img, i).offset;
      if (rb && overlaps(offset, size, rb, cs)) return OL_REFCOUNT_BLOCK;
    }
  }
  if (
    chk & OL_BITMAP_DIRECTORY &&
    (img.header.autoclearFeatures & AUTOCLEAR_BITMAPS) !== 0n &&
    img.bitmaps &&
    overlaps(offset, size, img.bitmaps.dirOffset, img.bitmaps.dirSize)
  ) {
    return OL_BITMAP_DIRECTORY;
  }
  return 0;
}

/**
 * qcow2_pre_write_overlap_check: true when the write may go ahead; otherwise the image is
 * marked corrupt (with qemu's message) and the caller fails with EIO.
 */
export async function preWriteOverlapCheck(img: CheckImage, ign: number, offset: number, size: number): Promise<boolean> {
  const ol = metadataOverlap(img, ign, offset, size);
  if (ol === 0) return true;
  const bit = Math.log2(ol & -ol);
  await signalCorruption(img, true, `Preventing invalid write on metadata (overlaps with ${overlapName(1 << bit)})`);
  return false;
}
