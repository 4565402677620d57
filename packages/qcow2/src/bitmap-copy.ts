/**
 * Persistent dirty bitmaps across `convert --bitmaps`: reading a source image's bitmaps, and
 * storing copies of them in the target the way qemu-img 7.2 does — convert_copy_bitmaps adds
 * each bitmap to the target and merges the source's bits into it, and on close
 * qcow2_store_persistent_dirty_bitmaps writes them out.
 *
 * Store order (qcow2-bitmap.c), which decides where every cluster lands: for each bitmap in
 * directory order, its dirty data clusters (store_bitmap_data) then its bitmap table
 * (store_bitmap); then the directory (bitmap_list_store); then the caches are written and the
 * header names the directory with the bitmaps autoclear bit set (update_ext_header_and_dir).
 * Everything the directory points at is on disk before the header points at the directory.
 *
 * Bitmap data is held in qemu's serialized form (hbitmap_serialize_part): little-endian 64-bit
 * words, bit `i` covering guest bytes [i << granularityBits, (i + 1) << granularityBits), so
 * byte `i >> 3`, bit `i & 7`. A cluster of bitmap data is `clusterSize` bytes of that stream.
 */
import { FormatError, TsimgError, UnsupportedError, IoError } from '@tsimg/raw';
import { findExtension } from './format/header.js';
import {
  BME_FLAG_AUTO,
  BME_FLAG_IN_USE,
  BME_MAX_GRANULARITY_BITS,
  BME_MAX_NAME_SIZE,
  BME_MAX_PHYS_SIZE,
  BME_MAX_TABLE_SIZE,
  BME_MIN_GRANULARITY_BITS,
  BT_DIRTY_TRACKING_BITMAP,
  QCOW2_MAX_BITMAPS,
  QCOW2_MAX_BITMAP_DIRECTORY_SIZE,
  bitmapDirEntrySize,
  bitmapTableSizeFor,
  encodeBitmapDirectory,
  loadBitmapDirectory,
  loadBitmapTable,
  type BitmapDirectoryEntry,
} from './format/bitmap-directory.js';
import { cutAtNul, encodeByteString } from './format/byte-string.js';
import type { Qcow2Image } from './engine/image.js';
import { AUTOCLEAR_BITMAPS } from './format/types.js';

/** A bitmap in memory: what qemu's BdrvDirtyBitmap holds for the copy. */
interface DirtyBitmap {
  name: string;
  granularityBits: number;
  /** Tracks writes (BME_FLAG_AUTO), i.e. the bitmap is enabled. */
  enabled: boolean;
  /** The disk size the bitmap covers, in bytes (bdrv_dirty_bitmap_size). */
  size: number;
  /** The serialized bits (see the module comment), a whole number of 64-bit words. */
  data: Uint8Array;
}

/** The name as qemu holds it in memory: a C string, ending at the first NUL. */
const memName = cutAtNul;

/** Bytes of a name on disk (names are byte strings, see byte-string.ts). */
function nameBytes(name: string): number {
  return encodeByteString(name).length;
}

/** Number of bits of a bitmap of 2^granularityBits-byte granules over `size` bytes. */
function bitCount(size: number, granularityBits: number): number {
  return Math.ceil(size / 2 ** granularityBits);
}

/** hbitmap_serialization_size for the whole bitmap: the bits rounded up to 64-bit words. */
function serializedBytes(size: number, granularityBits: number): number {
  return Math.ceil(bitCount(size, granularityBits) / 64) * 8;
}

/**
 * The directory entries of the image's persistent bitmaps as qemu sees them when it opens the
 * image: none when the bitmaps autoclear bit is clear (a program without bitmap support
 * changed the image, so qemu ignores the extension), else the checked directory.
 */
async function loadDirectory(image: Qcow2Image): Promise<BitmapDirectoryEntry[]> {
  const ext = findExtension(image.extensions, 'bitmaps');
  if (!ext || (image.header.autoclearFeatures & AUTOCLEAR_BITMAPS) === 0n) return [];
  return loadBitmapDirectory(image.file, ext, image.clusterSize, image.size());
}

/** A persistent bitmap as qemu holds it once the image is open. */
export interface PersistentBitmap {
  /** Its name in memory (a C string: up to the first NUL). */
  name: string;
  /** Bytes of guest data one bit covers. */
  granularity: number;
  /** The IN_USE flag is set: the bitmap was not stored cleanly and cannot be trusted. */
  inconsistent: boolean;
}

/**
 * The persistent bitmaps of an open qcow2 image, or undefined for v2 images, which cannot
 * carry any (bdrv_supports_persistent_dirty_bitmap). They come in the order of qemu's list of
 * a node's bitmaps (FOR_EACH_DIRTY_BITMAP), the reverse of the directory: qemu inserts each
 * loaded bitmap at the head. So the first inconsistent one is the one convert_check_bitmaps names.
 */
export async function listImageBitmaps(image: Qcow2Image): Promise<PersistentBitmap[] | undefined> {
  if (image.version < 3) return undefined;
  const entries = (await loadDirectory(image)).reverse();
  return entries.map((e) => ({ name: memName(e.name), granularity: 2 ** e.granularityBits, inconsistent: (e.flags & BME_FLAG_IN_USE) !== 0 }));
}

/** load_bitmap + load_bitmap_data: the bits of a consistent bitmap of `image`. */
async function loadBitmap(image: Qcow2Image, entry: BitmapDirectoryEntry): Promise<DirtyBitmap> {
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

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Clears every bit from bit `from` to the end of `data`. */
function clearBitsFrom(data: Uint8Array, from: number): void {
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
 * check_constraints_on_bitmap plus the rest of qcow2_co_can_store_new_dirty_bitmap, for a new
 * bitmap in `target`: the message qemu gives, or undefined when it can be stored.
 */
function storeProblem(target: Qcow2Image, name: string, granularityBits: number, count: number, dirSize: number): string | undefined {
  if (granularityBits > BME_MAX_GRANULARITY_BITS) return `Granularity exceeds maximum (${2 ** BME_MAX_GRANULARITY_BITS} bytes)`;
  if (granularityBits < BME_MIN_GRANULARITY_BITS) return `Granularity is under minimum (${2 ** BME_MIN_GRANULARITY_BITS} bytes)`;
  const bitmapBytes = Math.ceil(bitCount(target.size(), granularityBits) / 8);
  if (bitmapBytes > BME_MAX_PHYS_SIZE || bitmapBytes > BME_MAX_TABLE_SIZE * target.clusterSize) {
    return 'Too much space will be occupied by the bitmap. Use larger granularity';
  }
  if (nameBytes(name) > BME_MAX_NAME_SIZE) return `Name length exceeds maximum (${BME_MAX_NAME_SIZE} characters)`;
  if (count > QCOW2_MAX_BITMAPS) return 'Maximum number of persistent bitmaps is already reached';
  if (dirSize > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) return 'Not enough space in the bitmap directory';
  return undefined;
}

/** convert_copy_bitmaps: copies every bitmap that is not inconsistent (inconsistent ones are skipped — the caller refuses them first unless --skip-broken-bitmaps) from `source` to `target` (freshly created, opened read-write), keeping name, granularity, and the auto (enabled) flag; the data is the source bitmap's bits. */
export async function copyPersistentBitmaps(source: Qcow2Image, target: Qcow2Image): Promise<void> {
  // qemu-img convert refuses such a target before it copies anything (bdrv_supports_persistent_dirty_bitmap).
  if (target.version < 3) throw new UnsupportedError("Format driver 'qcow2' does not support bitmaps", { errno: 'ENOTSUP' });
  const sourceEntries = await loadDirectory(source);
  if (sourceEntries.length === 0) return;
  // The target's own bitmaps, if they are still valid: tsimg does not track writes, so any
  // change of the target since it was opened has already cleared the autoclear bit.
  const targetExt = findExtension(target.extensions, 'bitmaps');
  const existing = await loadDirectory(target);
  const names = new Set(existing.map((e) => memName(e.name)));
  let dirSize = existing.reduce((n, e) => n + bitmapDirEntrySize(nameBytes(e.name), 0), 0);

  // qemu adds the bitmaps one by one in its list order (the reverse of the source directory);
  // a failure stops the copy, but those added before it are still stored when the target is
  // closed. Each is added at the head of the target's list, which is the order they are stored
  // in: the source's directory order again.
  const added: DirtyBitmap[] = [];
  let failure: TsimgError | undefined;
  for (const entry of [...sourceEntries].reverse()) {
    if (entry.flags & BME_FLAG_IN_USE) continue;
    const name = memName(entry.name);
    if (names.has(name)) {
      failure = new UnsupportedError(`Failed to create bitmap ${name}: Bitmap already exists: ${name}`, { errno: 'EEXIST' });
      break;
    }
    const entrySize = bitmapDirEntrySize(nameBytes(name), 0);
    const problem = storeProblem(target, name, entry.granularityBits, existing.length + added.length + 1, dirSize + entrySize);
    if (problem !== undefined) {
      failure = new UnsupportedError(
        `Failed to create bitmap ${name}: Can't make bitmap '${name}' persistent in '${target.filename}': ${problem}`,
        { errno: 'EINVAL' },
      );
      break;
    }
    const bitmap = await loadBitmap(source, entry);
    if (bitmap.size !== target.size()) {
      failure = new UnsupportedError(
        `Failed to populate bitmap ${name}: Bitmaps are of different sizes (destination size is ${target.size()}, ` +
          `source size is ${bitmap.size}) and can't be merged`,
        { errno: 'EINVAL' },
      );
      break;
    }
    names.add(name);
    dirSize += entrySize;
    added.push(bitmap);
  }
  if (added.length > 0) await storeBitmaps(target, existing, targetExt, added.reverse());
  if (failure) throw failure;
}

/**
 * qcow2_store_persistent_dirty_bitmaps for bitmaps new to `target`: data and tables of each,
 * then a directory listing the target's valid bitmaps followed by the new ones, then the header.
 * On failure every cluster taken so far is freed again and the header is left alone.
 */
async function storeBitmaps(
  target: Qcow2Image,
  existing: BitmapDirectoryEntry[],
  oldDir: { bitmapDirectoryOffset: number; bitmapDirectorySize: number } | undefined,
  bitmaps: DirtyBitmap[],
): Promise<void> {
  const taken: { offset: number; size: number }[] = [];
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
  try {
    const entries: BitmapDirectoryEntry[] = [...existing];
    for (const bm of bitmaps) {
      const { offset, size } = await storeBitmap(target, bm, take);
      entries.push({
        bitmapTableOffset: offset,
        bitmapTableSize: size,
        flags: bm.enabled ? BME_FLAG_AUTO : 0,
        type: BT_DIRTY_TRACKING_BITMAP,
        granularityBits: bm.granularityBits,
        name: bm.name,
        extraData: new Uint8Array(0),
      });
    }
    // bitmap_list_store, not in place.
    const dir = encodeBitmapDirectory(entries);
    if (dir.length > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
      throw new FormatError('Failed to update bitmap extension: Invalid argument', { errno: 'EINVAL' });
    }
    const dirOffset = await take(dir.length, 'directory');
    await target.writeMetadata(dirOffset, dir);
    await target.updateBitmapsExtension({
      nbBitmaps: entries.length,
      bitmapDirectorySize: dir.length,
      bitmapDirectoryOffset: dirOffset,
    });
  } catch (err) {
    for (const t of taken.reverse()) await target.freeClusters(t.offset, t.size).catch(() => undefined);
    throw err;
  }
  // The header names the new directory now, so the old one can go.
  if (oldDir && existing.length > 0) await target.freeClusters(oldDir.bitmapDirectoryOffset, oldDir.bitmapDirectorySize);
}

/**
 * store_bitmap_data + store_bitmap: writes the clusters of `bm` that hold a dirty bit (the
 * others stay 0 in the table: all zeroes), then the bitmap table. Returns where the table is.
 */
async function storeBitmap(
  target: Qcow2Image,
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

async function writeOrFail(target: Qcow2Image, offset: number, data: Uint8Array, name: string): Promise<void> {
  try {
    await target.writeMetadata(offset, data);
  } catch (err) {
    if (err instanceof TsimgError && err.code === 'corrupt') throw err;
    throw new IoError(`Failed to write bitmap '${name}' to file: ${errText(err)}`, { cause: err });
  }
}
