/**
 * Persistent dirty bitmaps while an image is open for writing, as qemu keeps them: loaded at
 * the open and marked in use in the directory (qcow2_load_dirty_bitmaps with
 * update_ext_header_and_dir_in_place), the bits of every range written, zeroed or discarded set
 * in the enabled ones (bdrv_set_dirty), resized with the image (bdrv_dirty_bitmap_truncate),
 * and stored again at the close, in use no more (qcow2_store_persistent_dirty_bitmaps). The
 * operations of `tsimg bitmap` act on the same list (bitmap-ops.ts).
 */
import { errorWithCode } from '@tsimg/raw';
import {
  bitCount, clearBitsFrom, loadBitmap, memName, serializedBytes, storeBitmapSlots, updateDirectory,
  type BitmapHost, type BitmapSlot, type DirtyBitmap,
} from '../bitmap-store.js';
import {
  BME_FLAG_AUTO, BME_FLAG_IN_USE, encodeBitmapDirectory, loadBitmapDirectory, loadBitmapTable,
  type BitmapDirectoryEntry, type BitmapDirectoryLocation,
} from '../format/bitmap-directory.js';
import { findExtension } from '../format/header.js';
import { OL_BITMAP_DIRECTORY } from '../format/overlap.js';
import { AUTOCLEAR_BITMAPS } from '../format/types.js';
import { storeMetadata } from './corruption.js';
import { updateBitmapsExtension, writeFeatureFields } from './header-write.js';
import { virtualSize, type EngineState } from './state.js';

/** A bitmap in memory; an inconsistent one (in use on disk when loaded) has no bits and is never stored. */
export interface HeldBitmap extends DirtyBitmap {
  inconsistent: boolean;
}

/** What a writable v3 image holds of its bitmaps. */
export interface HeldBitmaps {
  /** qemu's list of the node's bitmaps: the newest first, so loaded ones in reverse directory order. */
  readonly list: HeldBitmap[];
}

/**
 * bitmap_list_load of the directory the header names now (s->nb_bitmaps is 0 while the
 * autoclear bit says the extension is stale), and where it is.
 */
async function loadCurrentDirectory(s: EngineState): Promise<{ entries: BitmapDirectoryEntry[]; location: BitmapDirectoryLocation | undefined }> {
  const ext = findExtension(s.extensions, 'bitmaps');
  // A v2 header has no autoclear field: an image held as v3 and downgraded by amend keeps the
  // directory qemu's memory still holds (its close stores the bitmaps there, freeing the old).
  const valid = (s.header.autoclearFeatures & AUTOCLEAR_BITMAPS) !== 0n || (s.header.version < 3 && s.heldBitmaps !== undefined);
  if (ext === undefined || ext.nbBitmaps === 0 || !valid) return { entries: [], location: undefined };
  return { entries: await loadBitmapDirectory(s.file, ext, s.clusterSize, virtualSize(s)), location: ext };
}

/** The engine's view for bitmap-store.ts (the facade's methods would wait for the gate). */
export function bitmapHost(s: EngineState): BitmapHost {
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
 * qcow2_load_dirty_bitmaps on a read-write open of a v3 image (a stale extension dropped): every bitmap of a valid
 * directory loaded (one in use already comes in inconsistent, without bits), then the others
 * marked in use in place — autoclear bit off, directory rewritten, autoclear bit on, a sync
 * after each, so a crash leaves the bitmaps stale or in use, never wrong.
 */
export async function loadHeldBitmaps(s: EngineState, staleExtension: boolean): Promise<void> {
  const held: HeldBitmaps = { list: [] };
  s.heldBitmaps = held;
  if (staleExtension) {
    // A program without bitmap support changed the image: qemu's open drops the stale
    // extension from the header (qcow2_read_extensions asks for the header update).
    await updateBitmapsExtension(s, undefined);
    return;
  }
  const { entries, location: ext } = await loadCurrentDirectory(s);
  if (ext === undefined) return;
  const size = virtualSize(s);
  const h = bitmapHost(s);
  for (const e of entries) {
    const inUse = (e.flags & BME_FLAG_IN_USE) !== 0;
    const bm: DirtyBitmap = inUse
      ? { name: memName(e.name), granularityBits: e.granularityBits, enabled: (e.flags & BME_FLAG_AUTO) !== 0, size, data: new Uint8Array(serializedBytes(size, e.granularityBits)) }
      : await loadBitmap(h, e);
    held.list.unshift({ ...bm, inconsistent: inUse });
  }
  if (entries.every((e) => (e.flags & BME_FLAG_IN_USE) !== 0)) return;
  const inUse = entries.map((e) => ({ ...e, flags: e.flags | BME_FLAG_IN_USE }));
  s.header.autoclearFeatures &= ~AUTOCLEAR_BITMAPS;
  await writeFeatureFields(s);
  await storeMetadata(s, ext.bitmapDirectoryOffset, encodeBitmapDirectory(inUse), OL_BITMAP_DIRECTORY);
  await s.file.flush();
  s.header.autoclearFeatures |= AUTOCLEAR_BITMAPS;
  await writeFeatureFields(s);
}

/** Sets bits [from, to) of serialized bitmap data. */
export function setBits(data: Uint8Array, from: number, to: number): void {
  let i = from;
  for (; i < to && i & 7; i++) data[i >> 3]! |= 1 << (i & 7);
  const wholeEnd = to & ~7;
  if (i < wholeEnd) {
    data.fill(0xff, i >> 3, wholeEnd >> 3);
    i = wholeEnd;
  }
  for (; i < to; i++) data[i >> 3]! |= 1 << (i & 7);
}

/** Sets the bits of guest bytes [offset, offset + length) in `bm` (hbitmap_set on bytes). */
export function markRange(bm: DirtyBitmap, offset: number, length: number): void {
  const end = Math.min(offset + length, bm.size);
  if (length <= 0 || offset >= end) return;
  const g = 2 ** bm.granularityBits;
  setBits(bm.data, Math.floor(offset / g), Math.ceil(end / g));
}

/** bdrv_set_dirty: a write, zero write or discard of guest bytes [offset, offset + length). */
export function markDirty(s: EngineState, offset: number, length: number): void {
  for (const bm of s.heldBitmaps?.list ?? []) if (bm.enabled) markRange(bm, offset, length);
}

/**
 * qcow2_truncate_bitmaps_check: a resize refuses while a bitmap is inconsistent, with qemu's
 * message and hint.
 */
export function checkBitmapsForResize(s: EngineState): void {
  // bitmap_list_load's order: the directory's, the reverse of the list.
  const bad = [...(s.heldBitmaps?.list ?? [])].reverse().find((b) => b.inconsistent);
  if (bad === undefined) return;
  throw errorWithCode('unsupported', `Bitmap '${bad.name}' is inconsistent and cannot be used`, {
    errno: 'ENOTSUP',
    hint: 'Try block-dirty-bitmap-remove to delete this bitmap from disk',
  });
}

/** bdrv_dirty_bitmap_truncate: every bitmap now covers `size` bytes, new bits clear. */
export function truncateHeldBitmaps(s: EngineState, size: number): void {
  for (const bm of s.heldBitmaps?.list ?? []) {
    const data = new Uint8Array(serializedBytes(size, bm.granularityBits));
    data.set(bm.data.subarray(0, Math.min(data.length, bm.data.length)));
    clearBitsFrom(data, bitCount(size, bm.granularityBits));
    bm.data = data;
    bm.size = size;
  }
}

/** free_bitmap_clusters: the data clusters its table names (discarded), then the table. */
async function freeBitmapClusters(s: EngineState, entry: BitmapDirectoryEntry): Promise<void> {
  const alloc = s.allocator!;
  for (const e of await loadBitmapTable(s.file, entry, s.clusterSize, undefined)) {
    if (e.kind === 'data') await alloc.freeClusters(e.offset, s.clusterSize, true);
  }
  await alloc.freeClusters(entry.bitmapTableOffset, entry.bitmapTableSize * 8);
}

/**
 * qcow2_store_persistent_dirty_bitmaps at the close: each consistent bitmap takes its place in
 * the directory (its old table to be dropped) or joins it at the end; the bitmaps are written
 * in directory order, then the new directory and the header; then the old tables are freed in
 * list order. Inconsistent bitmaps stay as the directory has them.
 */
export async function storeHeldBitmaps(s: EngineState): Promise<void> {
  const held = s.heldBitmaps;
  if (held === undefined) return;
  const consistent = held.list.filter((b) => !b.inconsistent);
  if (consistent.length === 0) return;
  const { entries, location } = await loadCurrentDirectory(s);
  const slots: BitmapSlot[] = [...entries];
  const drop: BitmapDirectoryEntry[] = [];
  for (const bm of consistent) {
    const i = entries.findIndex((e) => memName(e.name) === bm.name);
    if (i < 0) {
      slots.push(bm);
      continue;
    }
    if ((entries[i]!.flags & BME_FLAG_IN_USE) === 0) {
      throw errorWithCode('format', `Bitmap '${bm.name}' already exists in the image`, { errno: 'EINVAL' });
    }
    drop.push(entries[i]!);
    slots[i] = bm;
  }
  await storeBitmapSlots(bitmapHost(s), slots, location, true);
  for (const e of drop) await freeBitmapClusters(s, e);
}

/**
 * qcow2_co_remove_persistent_dirty_bitmap: the bitmap's entry leaves the directory (a new one,
 * or none), then its clusters are freed. Not in the directory (added in this session): nothing
 * on disk changes.
 */
export async function removeStoredBitmap(s: EngineState, name: string): Promise<void> {
  const { entries, location } = await loadCurrentDirectory(s);
  const i = entries.findIndex((e) => memName(e.name) === name);
  if (i < 0) return;
  await updateDirectory(bitmapHost(s), entries.filter((_, j) => j !== i), location);
  await freeBitmapClusters(s, entries[i]!);
}
