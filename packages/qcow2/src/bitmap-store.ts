/**
 * Persistent dirty bitmaps in memory and their storage, for the bitmaps a writable image holds
 * (engine/held-bitmaps.ts: those it loaded, those `tsimg bitmap` and `convert --bitmaps` add):
 * loading a bitmap's bits (load_bitmap), and qemu's
 * qcow2_store_persistent_dirty_bitmaps — for each bitmap in directory order its dirty data
 * clusters (store_bitmap_data) then its bitmap table (store_bitmap); then the directory
 * (bitmap_list_store); then the header names the directory with the bitmaps autoclear bit set
 * (update_ext_header_and_dir). Everything the directory points at is on disk before the header
 * points at the directory.
 *
 * Bitmap data is held in qemu's serialized form (hbitmap_serialize_part): little-endian 64-bit
 * words, bit `i` covering guest bytes [i << granularityBits, (i + 1) << granularityBits), so
 * byte `i >> 3`, bit `i & 7`. A cluster of bitmap data is `clusterSize` bytes of that stream.
 */
import { FormatError, IoError, TsimgError, UnsupportedError, type BlockDevice } from '@tsimg/raw';
import {
  BME_FLAG_AUTO,
  BME_MAX_PHYS_SIZE,
  BME_MAX_TABLE_SIZE,
  BT_DIRTY_TRACKING_BITMAP,
  QCOW2_MAX_BITMAP_DIRECTORY_SIZE,
  bitmapTableSizeFor,
  encodeBitmapDirectory,
  loadBitmapTable,
  type BitmapDirectoryEntry,
} from './format/bitmap-directory.js';
import { cutAtNul } from './format/byte-string.js';
import type { BitmapsExtension } from './engine/header-write.js';

/**
 * What loading and storing bitmaps needs of an open, writable qcow2 image (a Qcow2Image is
 * one; the engine hands its own view while it holds the image).
 */
export interface BitmapHost {
  readonly clusterSize: number;
  readonly file: BlockDevice;
  /** The virtual size the bitmaps cover. */
  size(): number;
  /** qcow2_alloc_clusters: whole clusters, first fit. */
  allocateClusters(size: number): Promise<number>;
  /** qcow2_free_clusters. */
  freeClusters(offset: number, size: number): Promise<void>;
  /** A metadata write after the overlap check. */
  writeMetadata(offset: number, data: Uint8Array): Promise<void>;
  /** update_ext_header_and_dir's header step. */
  updateBitmapsExtension(bitmaps: BitmapsExtension | undefined): Promise<void>;
}

/** The name as qemu holds it in memory: a C string, ending at the first NUL. */
export const memName = cutAtNul;

/** A bitmap in memory: what qemu's BdrvDirtyBitmap holds for the copy. */
export interface DirtyBitmap {
  name: string;
  granularityBits: number;
  /** Tracks writes (BME_FLAG_AUTO), i.e. the bitmap is enabled. */
  enabled: boolean;
  /** The disk size the bitmap covers, in bytes (bdrv_dirty_bitmap_size). */
  size: number;
  /** The serialized bits (see the module comment), a whole number of 64-bit words. */
  data: Uint8Array;
}

/** Number of bits of a bitmap of 2^granularityBits-byte granules over `size` bytes. */
export function bitCount(size: number, granularityBits: number): number {
  return Math.ceil(size / 2 ** granularityBits);
}

/** hbitmap_serialization_size for the whole bitmap: the bits rounded up to 64-bit words. */
export function serializedBytes(size: number, granularityBits: number): number {
  return Math.ceil(bitCount(size, granularityBits) / 64) * 8;
}

/** load_bitmap + load_bitmap_data: the bits of a consistent bitmap of `image`. */
export async function loadBitmap(image: BitmapHost, entry: BitmapDirectoryEntry): Promise<DirtyBitmap> {
  const cs = image.clusterSize;
  const size = image.size();
  const table = await loadBitmapTable(image.file, entry, cs, size);
  const data = new Uint8Array(serializedBytes(size, entry.granularityBits));
  const nbits = bitCount(size, entry.granularityBits);
  const cluster = new Uint8Array(cs);
  for (let i = 0; i < table.length; i++) {
    const e = table[i]!;
    const start = i * cs;
    const end = Math.min(data.length, start + cs);
    if (e.kind === 'ones') {
      // bdrv_dirty_bitmap_deserialize_ones sets the bits of the disk range only.
      data.fill(0xff, start, end);
      if (end === data.length) clearBitsFrom(data, nbits);
    } else if (e.kind === 'data') {
      try {
        await image.file.read(e.offset, cluster);
      } catch (err) {
        throw new IoError(`Could not read bitmap '${memName(entry.name)}' from image: ${errText(err)}`, { cause: err });
      }
      data.set(cluster.subarray(0, end - start), start);
    }
  }
  return {
    name: memName(entry.name),
    granularityBits: entry.granularityBits,
    enabled: (entry.flags & BME_FLAG_AUTO) !== 0,
    size,
    data,
  };
}

export function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Clears every bit from bit `from` to the end of `data`. */
export function clearBitsFrom(data: Uint8Array, from: number): void {
  const byte = from >> 3;
  if (byte >= data.length) return;
  if (from & 7) data[byte]! &= (1 << (from & 7)) - 1;
  data.fill(0, (from & 7) ? byte + 1 : byte);
}

/** Whether any of bits [from, to) is set. */
function anyBitSet(data: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < to && i & 7; i++) if (data[i >> 3]! & (1 << (i & 7))) return true;
  const firstByte = Math.ceil(from / 8);
  const lastByte = to >> 3; // bytes [firstByte, lastByte) are whole
  for (let b = firstByte; b < lastByte; b++) if (data[b] !== 0) return true;
  for (let i = Math.max(lastByte * 8, from); i < to; i++) if (data[i >> 3]! & (1 << (i & 7))) return true;
  return false;
}

/**
 * One place of qemu's bm_list when it stores: an entry kept as the directory has it (a bitmap
 * it does not write, e.g. an inconsistent one), or a bitmap in memory whose data and table
 * are written anew.
 */
export type BitmapSlot = BitmapDirectoryEntry | DirtyBitmap;

/**
 * qcow2_store_persistent_dirty_bitmaps' writes: the directory becomes `slots` in this order, the
 * bitmaps among them stored first (store_bitmap, in list order), then update_ext_header_and_dir.
 * Returns the new directory's entries. On a failure before the header write every cluster
 * taken so far is freed again.
 */
export async function storeBitmapSlots(
  target: BitmapHost,
  slots: readonly BitmapSlot[],
  oldDir: { bitmapDirectoryOffset: number; bitmapDirectorySize: number } | undefined,
  freeOldDirectory: boolean,
): Promise<BitmapDirectoryEntry[]> {
  const taken: { offset: number; size: number }[] = [];
  let headerTried = false;
  const take = async (size: number, what: string): Promise<number> => {
    let offset: number;
    try {
      offset = await target.allocateClusters(size);
    } catch (err) {
      throw new IoError(`Failed to allocate clusters for bitmap '${what}': ${errText(err)}`, { cause: err });
    }
    taken.push({ offset, size });
    return offset;
  };
  let entries: BitmapDirectoryEntry[] = [];
  try {
    for (const slot of slots) {
      if (!('data' in slot)) {
        entries.push(slot);
        continue;
      }
      const { offset, size } = await storeBitmap(target, slot, take);
      entries.push({
        bitmapTableOffset: offset,
        bitmapTableSize: size,
        flags: slot.enabled ? BME_FLAG_AUTO : 0,
        type: BT_DIRTY_TRACKING_BITMAP,
        granularityBits: slot.granularityBits,
        name: slot.name,
        extraData: new Uint8Array(0),
      });
    }
    await updateDirectory(target, entries, oldDir, freeOldDirectory, take, () => {
      headerTried = true;
    });
  } catch (err) {
    // Once the header write was tried, it may reach the disk naming the new directory: then
    // everything it points at stays (leaked at worst), never handed out again.
    if (!headerTried) for (const t of taken.reverse()) await target.freeClusters(t.offset, t.size).catch(() => undefined);
    entries = [];
    throw err;
  }
  return entries;
}

/**
 * update_ext_header_and_dir: a new directory listing `entries` (none: the extension goes and
 * the autoclear bit with it), the header naming it, then the old directory freed.
 */
export async function updateDirectory(
  target: BitmapHost,
  entries: readonly BitmapDirectoryEntry[],
  oldDir: { bitmapDirectoryOffset: number; bitmapDirectorySize: number } | undefined,
  freeOldDirectory = true,
  take: (size: number, what: string) => Promise<number> = (size) => target.allocateClusters(size),
  beforeHeader: () => void = () => undefined,
): Promise<void> {
  if (entries.length === 0) {
    beforeHeader();
    await target.updateBitmapsExtension(undefined);
  } else {
    // bitmap_list_store, not in place.
    const dir = encodeBitmapDirectory(entries);
    if (dir.length > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
      throw new FormatError('Failed to update bitmap extension: Invalid argument', { errno: 'EINVAL' });
    }
    const dirOffset = await take(dir.length, 'directory');
    await target.writeMetadata(dirOffset, dir);
    beforeHeader();
    await target.updateBitmapsExtension({ nbBitmaps: entries.length, bitmapDirectorySize: dir.length, bitmapDirectoryOffset: dirOffset });
  }
  // The header names the new directory now, so the old one can go.
  if (oldDir && freeOldDirectory && oldDir.bitmapDirectorySize > 0) {
    await target.freeClusters(oldDir.bitmapDirectoryOffset, oldDir.bitmapDirectorySize);
  }
}

/**
 * store_bitmap_data + store_bitmap: writes the clusters of `bm` that hold a dirty bit (the
 * others stay 0 in the table: all zeroes), then the bitmap table. Returns where the table is.
 */
async function storeBitmap(
  target: BitmapHost,
  bm: DirtyBitmap,
  take: (size: number, what: string) => Promise<number>,
): Promise<{ offset: number; size: number }> {
  const cs = target.clusterSize;
  const tableSize = bitmapTableSizeFor(bm.size, bm.granularityBits, cs);
  if (tableSize > BME_MAX_TABLE_SIZE || tableSize * cs > BME_MAX_PHYS_SIZE) {
    throw new UnsupportedError(`Bitmap '${bm.name}' is too big`, { errno: 'EINVAL' });
  }
  const nbits = bitCount(bm.size, bm.granularityBits);
  const bitsPerCluster = cs * 8;
  const table = new Uint8Array(tableSize * 8);
  const tableView = new DataView(table.buffer);
  for (let c = 0; c < tableSize; c++) {
    const from = c * bitsPerCluster;
    if (!anyBitSet(bm.data, from, Math.min(nbits, from + bitsPerCluster))) continue;
    const offset = await take(cs, bm.name);
    const cluster = new Uint8Array(cs);
    cluster.set(bm.data.subarray(c * cs, Math.min(bm.data.length, (c + 1) * cs)));
    await writeOrFail(target, offset, cluster, bm.name);
    tableView.setBigUint64(c * 8, BigInt(offset));
  }
  const tableOffset = await take(table.length, bm.name);
  await writeOrFail(target, tableOffset, table, bm.name);
  return { offset: tableOffset, size: tableSize };
}

async function writeOrFail(target: BitmapHost, offset: number, data: Uint8Array, name: string): Promise<void> {
  try {
    await target.writeMetadata(offset, data);
  } catch (err) {
    if (err instanceof TsimgError && err.code === 'corrupt') throw err;
    throw new IoError(`Failed to write bitmap '${name}' to file: ${errText(err)}`, { cause: err });
  }
}
