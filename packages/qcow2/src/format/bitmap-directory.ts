/**
 * Persistent dirty bitmaps on disk: the bitmap directory (pure codec + `loadBitmapDirectory`
 * with qemu's checks and messages) and bitmap tables (entry codec + `loadBitmapTable`).
 *
 * Directory entry (docs/interop/qcow2.txt, "Bitmap directory"), each 8-byte aligned:
 *
 *     0 -  7  bitmap_table_offset     17      granularity_bits
 *     8 - 11  bitmap_table_size       18 - 19 name_size
 *    12 - 15  flags                   20 - 23 extra_data_size
 *    16       type (1 = dirty tracking)   24 - ..  extra data, then the name (no NUL)
 *
 * Bitmap table entry (u64): bits 9-55 the offset of a cluster of bitmap data; when that is 0,
 * bit 0 says whether the cluster's range reads all ones (1) or all zeroes (0).
 */
import { FormatError, type BlockDevice } from '@tsimg/raw';
import { readOrFail } from './snapshot.js';
import { cutAtNul, decodeByteString, encodeByteString } from './byte-string.js';

/** The bitmap is in use (possibly inconsistent): its data must not be trusted. */
export const BME_FLAG_IN_USE = 1 << 0;
/** The bitmap tracks writes automatically when the image is opened. */
export const BME_FLAG_AUTO = 1 << 1;
/** Flags qemu does not know; an entry with any of them set is refused. */
export const BME_RESERVED_FLAGS = 0xfffffffc;
/** The only bitmap type defined. */
export const BT_DIRTY_TRACKING_BITMAP = 1;

/** qemu's bitmap limits (block/qcow2-bitmap.c, block/qcow2.h). */
export const BME_MAX_TABLE_SIZE = 0x8000000;
export const BME_MAX_PHYS_SIZE = 0x20000000;
export const BME_MAX_GRANULARITY_BITS = 31;
export const BME_MIN_GRANULARITY_BITS = 9;
export const BME_MAX_NAME_SIZE = 1023;
export const QCOW2_MAX_BITMAPS = 65535;
export const QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * QCOW2_MAX_BITMAPS;

/** Size of the fixed part of a directory entry. */
export const BITMAP_DIR_ENTRY_SIZE = 24;

/** One bitmap directory entry. */
export interface BitmapDirectoryEntry {
  /** Exact up to 2^53; a larger (corrupt) on-disk value is kept approximately. */
  bitmapTableOffset: number;
  /** Number of u64 entries in the bitmap table. */
  bitmapTableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  name: string;
  /** Extra data (qemu refuses any). */
  extraData: Uint8Array;
}


/** Bytes one entry occupies, including the padding to 8. */
export function bitmapDirEntrySize(nameSize: number, extraDataSize: number): number {
  return (BITMAP_DIR_ENTRY_SIZE + nameSize + extraDataSize + 7) & ~7;
}

/**
 * Decodes the entry at `offset`; returns it with the offset of the next entry (aligned).
 * Throws "Broken bitmap directory" when the entry runs past the end of `view`.
 */
export function decodeBitmapDirEntry(view: DataView, offset: number): { entry: BitmapDirectoryEntry; next: number } {
  if (offset + BITMAP_DIR_ENTRY_SIZE > view.byteLength) throw new FormatError('Broken bitmap directory');
  // Kept approximately beyond 2^53, as for snapshot L1 offsets: qemu reads such a table as zeroes.
  const tableOffset = Number(view.getBigUint64(offset));
  const nameSize = view.getUint16(offset + 18);
  const extraSize = view.getUint32(offset + 20);
  const next = offset + bitmapDirEntrySize(nameSize, extraSize);
  if (next > view.byteLength) throw new FormatError('Broken bitmap directory');
  const start = view.byteOffset + offset + BITMAP_DIR_ENTRY_SIZE;
  return {
    entry: {
      bitmapTableOffset: tableOffset,
      bitmapTableSize: view.getUint32(offset + 8),
      flags: view.getUint32(offset + 12),
      type: view.getUint8(offset + 16),
      granularityBits: view.getUint8(offset + 17),
      extraData: new Uint8Array(view.buffer, start, extraSize).slice(),
      name: decodeByteString(new Uint8Array(view.buffer, start + extraSize, nameSize)),
    },
    next,
  };
}

/** Encodes a directory: the entries in order, each padded to 8 bytes. */
export function encodeBitmapDirectory(entries: readonly BitmapDirectoryEntry[]): Uint8Array {
  const names = entries.map((e) => encodeByteString(e.name));
  const size = entries.reduce((n, e, i) => n + bitmapDirEntrySize(names[i]!.length, e.extraData.length), 0);
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let off = 0;
  entries.forEach((e, i) => {
    const name = names[i]!;
    if (name.length > 0xffff) throw new FormatError('Bitmap name is too long');
    v.setBigUint64(off, BigInt(e.bitmapTableOffset));
    v.setUint32(off + 8, e.bitmapTableSize);
    v.setUint32(off + 12, e.flags >>> 0);
    v.setUint8(off + 16, e.type);
    v.setUint8(off + 17, e.granularityBits);
    v.setUint16(off + 18, name.length);
    v.setUint32(off + 20, e.extraData.length);
    out.set(e.extraData, off + BITMAP_DIR_ENTRY_SIZE);
    out.set(name, off + BITMAP_DIR_ENTRY_SIZE + e.extraData.length);
    off += bitmapDirEntrySize(name.length, e.extraData.length);
  });
  return out;
}

/**
 * qemu's check_dir_entry: whether an entry satisfies the constraints for an image of
 * `virtualSize` bytes and `clusterSize`-byte clusters.
 */
export function bitmapDirEntryValid(e: BitmapDirectoryEntry, clusterSize: number, virtualSize: number): boolean {
  const nameSize = encodeByteString(e.name).length;
  if (
    e.bitmapTableSize === 0 ||
    e.bitmapTableOffset === 0 ||
    e.bitmapTableOffset % clusterSize !== 0 ||
    e.bitmapTableSize > BME_MAX_TABLE_SIZE ||
    e.granularityBits > BME_MAX_GRANULARITY_BITS ||
    e.granularityBits < BME_MIN_GRANULARITY_BITS ||
    (e.flags & BME_RESERVED_FLAGS) !== 0 ||
    nameSize > BME_MAX_NAME_SIZE ||
    e.type !== BT_DIRTY_TRACKING_BITMAP
  ) {
    return false;
  }
  const physBytes = e.bitmapTableSize * clusterSize;
  if (physBytes > BME_MAX_PHYS_SIZE) return false;
  // A bitmap in use may be stale (e.g. not resized with the image), so only a clean one must cover the disk.
  if ((e.flags & BME_FLAG_IN_USE) === 0 && BigInt(virtualSize) > (BigInt(physBytes) * 8n) << BigInt(e.granularityBits)) {
    return false;
  }
  return true;
}

/** The name as qemu uses it: a C string, ending at the first NUL. */
export const cName = cutAtNul;

/** Where the bitmaps header extension says the directory is. */
export interface BitmapDirectoryLocation {
  nbBitmaps: number;
  bitmapDirectorySize: number;
  bitmapDirectoryOffset: number;
}

/**
 * Reads and checks the bitmap directory as qemu's bitmap_list_load does, with its messages:
 * size limits, entries within the directory, no extra data, every entry satisfying
 * {@link bitmapDirEntryValid}, and exactly `nbBitmaps` entries.
 */
export async function loadBitmapDirectory(
  dev: BlockDevice,
  loc: BitmapDirectoryLocation,
  clusterSize: number,
  virtualSize: number,
): Promise<BitmapDirectoryEntry[]> {
  if (loc.bitmapDirectorySize === 0) throw new FormatError('Requested bitmap directory size is zero');
  if (loc.bitmapDirectorySize > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
    throw new FormatError('Requested bitmap directory size is too big');
  }
  const dir = new Uint8Array(loc.bitmapDirectorySize);
  await readOrFail(dev.read(loc.bitmapDirectoryOffset, dir), 'Failed to read bitmap directory');
  const view = new DataView(dir.buffer);
  const out: BitmapDirectoryEntry[] = [];
  let off = 0;
  while (off < dir.length) {
    if (off + BITMAP_DIR_ENTRY_SIZE > dir.length) throw new FormatError('Broken bitmap directory');
    if (out.length + 1 > loc.nbBitmaps) {
      throw new FormatError('More bitmaps found than specified in header extension');
    }
    // qemu sizes an entry in int arithmetic: a huge extra_data_size wraps negative and passes
    // the bounds check, to be refused just below for having extra data at all.
    const size32 = (BITMAP_DIR_ENTRY_SIZE + view.getUint16(off + 18) + view.getUint32(off + 20)) | 0;
    if (off + ((size32 + 7) & ~7) > dir.length) throw new FormatError('Broken bitmap directory');
    if (view.getUint32(off + 20) !== 0) throw new FormatError('Bitmap extra data is not supported');
    const { entry, next } = decodeBitmapDirEntry(view, off);
    if (!bitmapDirEntryValid(entry, clusterSize, virtualSize)) {
      throw new FormatError(`Bitmap '${cName(entry.name)}' doesn't satisfy the constraints`);
    }
    out.push(entry);
    off = next;
  }
  if (out.length !== loc.nbBitmaps) throw new FormatError('Less bitmaps found than specified in header extension');
  return out;
}

/** Reserved bits of a bitmap table entry: 1-8 and 56-63. */
export const BME_TABLE_ENTRY_RESERVED_MASK = 0xff000000000001fen;
export const BME_TABLE_ENTRY_OFFSET_MASK = 0x00fffffffffffe00n;
export const BME_TABLE_ENTRY_FLAG_ALL_ONES = 1n;

/** A decoded bitmap table entry. */
export type BitmapTableEntry =
  | { kind: 'zeroes' }
  | { kind: 'ones' }
  | { kind: 'data'; offset: number }
  | { kind: 'invalid'; raw: bigint };

/** Decodes one bitmap table entry, checking it as qemu's check_table_entry does. */
export function decodeBitmapTableEntry(raw: bigint, clusterSize: number): BitmapTableEntry {
  if ((raw & BME_TABLE_ENTRY_RESERVED_MASK) !== 0n) return { kind: 'invalid', raw };
  const offset = raw & BME_TABLE_ENTRY_OFFSET_MASK;
  if (offset === 0n) return (raw & BME_TABLE_ENTRY_FLAG_ALL_ONES) !== 0n ? { kind: 'ones' } : { kind: 'zeroes' };
  if ((raw & BME_TABLE_ENTRY_FLAG_ALL_ONES) !== 0n || offset % BigInt(clusterSize) !== 0n) return { kind: 'invalid', raw };
  return { kind: 'data', offset: Number(offset) };
}

/** Encodes a bitmap table entry (an `invalid` one keeps its raw value). */
export function encodeBitmapTableEntry(e: BitmapTableEntry): bigint {
  switch (e.kind) {
    case 'zeroes':
      return 0n;
    case 'ones':
      return BME_TABLE_ENTRY_FLAG_ALL_ONES;
    case 'data':
      return BigInt(e.offset);
    case 'invalid':
      return e.raw;
  }
}

/**
 * Number of bitmap table entries (clusters of bitmap data) a bitmap of `granularityBits`
 * needs for a disk of `virtualSize` bytes — what qemu's load_bitmap_data requires the table
 * size to be (the bitmap is serialized in 64-bit words).
 */
export function bitmapTableSizeFor(virtualSize: number, granularityBits: number, clusterSize: number): number {
  if (virtualSize === 0) return 0;
  const bits = BigInt(virtualSize - 1) >> BigInt(granularityBits);
  const bytes = (bits / 64n + 1n) * 8n;
  return Number((bytes + BigInt(clusterSize) - 1n) / BigInt(clusterSize));
}

/**
 * Reads the bitmap table of `entry` and checks every entry. Throws qemu's load_bitmap messages
 * ("Could not read bitmap_table table from image for bitmap 'x': Invalid argument") when an
 * entry is invalid, and "Could not read bitmap 'x' from image: Invalid argument" when the
 * table's size does not match the disk.
 */
export async function loadBitmapTable(
  dev: BlockDevice,
  entry: BitmapDirectoryEntry,
  clusterSize: number,
  virtualSize: number | undefined,
): Promise<BitmapTableEntry[]> {
  const raw = new Uint8Array(entry.bitmapTableSize * 8);
  await readOrFail(
    dev.read(entry.bitmapTableOffset, raw),
    `Could not read bitmap_table table from image for bitmap '${cName(entry.name)}'`,
  );
  const view = new DataView(raw.buffer);
  const out: BitmapTableEntry[] = [];
  for (let i = 0; i < entry.bitmapTableSize; i++) {
    const e = decodeBitmapTableEntry(view.getBigUint64(i * 8), clusterSize);
    if (e.kind === 'invalid') {
      throw new FormatError(
        `Could not read bitmap_table table from image for bitmap '${cName(entry.name)}': Invalid argument`,
        { errno: 'EINVAL' },
      );
    }
    out.push(e);
  }
  // undefined: bitmap_table_load alone, as free_bitmap_clusters reads a table it drops.
  if (virtualSize === undefined) return out;
  const expected = bitmapTableSizeFor(virtualSize, entry.granularityBits, clusterSize);
  if (expected !== entry.bitmapTableSize || expected > BME_MAX_TABLE_SIZE) {
    throw new FormatError(`Could not read bitmap '${cName(entry.name)}' from image: Invalid argument`, { errno: 'EINVAL' });
  }
  return out;
}

/** The flag names qemu reports for an entry, in qemu's order ("in-use", then "auto"). */
export function bitmapFlagNames(flags: number): Array<'in-use' | 'auto'> {
  const out: Array<'in-use' | 'auto'> = [];
  if (flags & BME_FLAG_IN_USE) out.push('in-use');
  if (flags & BME_FLAG_AUTO) out.push('auto');
  return out;
}
