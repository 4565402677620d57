/**
 * Persistent dirty bitmaps across a resize, as qemu-img resize leaves them: qemu loads every
 * bitmap when it opens the image read-write (marking them in use in the directory, rewritten
 * in place), resizes them in memory with the image, and stores them again when it closes it —
 * new data clusters and tables, a new directory, the header, then the old directory and the old
 * tables and data clusters freed. tsimg does all of it within the resize, in that order, so the
 * file comes out as qemu's.
 */
import { errorWithCode } from '@tsimg/raw';
import { bitCount, clearBitsFrom, loadBitmap, serializedBytes, storeBitmaps, type BitmapHost, type DirtyBitmap } from '../bitmap-store.js';
import {
  BME_FLAG_IN_USE, cName, encodeBitmapDirectory, loadBitmapDirectory, loadBitmapTable, type BitmapDirectoryEntry, type BitmapTableEntry,
} from '../format/bitmap-directory.js';
import { findExtension } from '../format/header.js';
import { OL_BITMAP_DIRECTORY } from '../format/overlap.js';
import { AUTOCLEAR_BITMAPS } from '../format/types.js';
import { storeMetadata } from './corruption.js';
import { beforeChange, updateBitmapsExtension } from './header-write.js';
import { virtualSize, type EngineState } from './state.js';

/** The bitmaps a resize carries over: their bits, and what the old directory held. */
export interface HeldBitmaps {
  readonly bitmaps: DirtyBitmap[];
  readonly entries: readonly BitmapDirectoryEntry[];
  readonly tables: readonly BitmapTableEntry[][];
  readonly directory: { bitmapDirectoryOffset: number; bitmapDirectorySize: number };
}

/** The engine's view for bitmap-store.ts (the facade's methods would wait for the gate). */
function host(s: EngineState): BitmapHost {
  return {
    clusterSize: s.clusterSize,
    file: s.file,
    size: () => virtualSize(s),
    allocateClusters: (size) => s.allocator!.allocClusters(size),
    freeClusters: (offset, size) => s.allocator!.freeClusters(offset, size),
    writeMetadata: (offset, data) => storeMetadata(s, offset, data),
    updateBitmapsExtension: (bitmaps) => updateBitmapsExtension(s, bitmaps),
  };
}

/**
 * qcow2_load_dirty_bitmaps on a read-write open, then qcow2_truncate_bitmaps_check: loads the
 * valid bitmaps (none when the autoclear bit says they are stale) and marks them in use on
 * disk. A bitmap already in use is inconsistent: qemu refuses the resize with its message.
 */
export async function holdBitmaps(s: EngineState): Promise<HeldBitmaps | undefined> {
  if (s.cleanedAutoclear || (s.header.autoclearFeatures & AUTOCLEAR_BITMAPS) === 0n) return undefined;
  const ext = findExtension(s.extensions, 'bitmaps');
  if (ext === undefined || ext.nbBitmaps === 0) return undefined;
  const size = virtualSize(s);
  const entries = await loadBitmapDirectory(s.file, ext, s.clusterSize, size);
  for (const e of entries) {
    if ((e.flags & BME_FLAG_IN_USE) !== 0) {
      throw errorWithCode('unsupported', `Bitmap '${cName(e.name)}' is inconsistent and cannot be used`, {
        errno: 'ENOTSUP',
        hint: 'Try block-dirty-bitmap-remove to delete this bitmap from disk',
      });
    }
  }
  const h = host(s);
  const bitmaps: DirtyBitmap[] = [];
  const tables: BitmapTableEntry[][] = [];
  for (const e of entries) {
    bitmaps.push(await loadBitmap(h, e));
    tables.push(await loadBitmapTable(s.file, e, s.clusterSize, size));
  }
  // update_ext_header_and_dir_in_place: the bitmaps are in use while the image is open. The
  // autoclear bit goes first (beforeChange), so a crash leaves them stale, never wrong.
  await beforeChange(s);
  const dir = encodeBitmapDirectory(entries.map((e) => ({ ...e, flags: e.flags | BME_FLAG_IN_USE })));
  await storeMetadata(s, ext.bitmapDirectoryOffset, dir, OL_BITMAP_DIRECTORY);
  await s.file.flush();
  return { bitmaps, entries, tables, directory: ext };
}

/**
 * bdrv_dirty_bitmap_truncate for each bitmap, then qcow2_store_persistent_dirty_bitmaps: the
 * bitmaps stored anew at the image's new size, the old directory freed once the header names
 * the new one, then the old tables (their data clusters discarded), in qemu's order — its list
 * of a node's bitmaps runs opposite to the directory.
 */
export async function storeHeldBitmaps(s: EngineState, held: HeldBitmaps): Promise<void> {
  const size = virtualSize(s);
  for (const bm of held.bitmaps) {
    const data = new Uint8Array(serializedBytes(size, bm.granularityBits));
    data.set(bm.data.subarray(0, Math.min(data.length, bm.data.length)));
    clearBitsFrom(data, bitCount(size, bm.granularityBits));
    bm.data = data;
    bm.size = size;
  }
  await storeBitmaps(host(s), [], held.directory, held.bitmaps, true);
  const alloc = s.allocator!;
  for (let i = held.entries.length - 1; i >= 0; i--) {
    for (const e of held.tables[i]!) {
      if (e.kind === 'data') await alloc.freeClusters(e.offset, s.clusterSize, true);
    }
    const entry = held.entries[i]!;
    await alloc.freeClusters(entry.bitmapTableOffset, entry.bitmapTableSize * 8);
  }
}
