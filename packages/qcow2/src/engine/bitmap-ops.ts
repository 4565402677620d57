/**
 * The operations of `qemu-img bitmap` on a writable image's bitmaps (held-bitmaps.ts), with the
 * checks and messages of qemu's block-dirty-bitmap-* commands: add (qmp_block_dirty_bitmap_add
 * with qcow2_co_can_store_new_dirty_bitmap), remove (from the directory at once), clear,
 * enable, disable, and merge (bdrv_merge_dirty_bitmap, hbitmap_merge across granularities).
 * Everything but remove changes memory only; the close stores it.
 */
import { errorWithCode } from '@tsimg/raw';
import { storeProblem } from '../bitmap-copy.js';
import { memName, serializedBytes, type DirtyBitmap } from '../bitmap-store.js';
import { bitmapDirEntrySize } from '../format/bitmap-directory.js';
import { encodeByteString } from '../format/byte-string.js';
import { markRange, removeStoredBitmap, type HeldBitmap } from './held-bitmaps.js';
import { virtualSize, type EngineState } from './state.js';

/** One operation of `qemu-img bitmap` on the bitmap `name`; merge names the source bitmap's bits. */
export type BitmapAction =
  | { op: 'add'; name: string; granularity?: number }
  | { op: 'remove' | 'clear' | 'enable' | 'disable'; name: string }
  | { op: 'merge'; name: string; source: SourceBitmap | undefined; sourceName: string };

/** A merge source: the bits of a bitmap of this or another image. */
export type SourceBitmap = Pick<DirtyBitmap, 'granularityBits' | 'size' | 'data'> & { inconsistent: boolean };

/** The node name qemu's messages give an image qemu-img opened (an automatic one, "#blockNNN"). */
export const NODE_NAME = '#block100';

function fail(code: 'usage' | 'unsupported' | 'not-found', message: string, errno: string, hint?: string): never {
  throw errorWithCode(code, message, { errno, hint });
}

/** block_dirty_bitmap_lookup. */
function lookup(list: readonly HeldBitmap[], name: string): HeldBitmap {
  const bm = list.find((b) => b.name === name);
  if (bm === undefined) fail('not-found', `Dirty bitmap '${name}' not found`, 'ENOENT');
  return bm;
}

/** bdrv_dirty_bitmap_check (BDRV_BITMAP_DEFAULT or _ALLOW_RO): an inconsistent bitmap cannot be used. */
function checkUsable(bm: HeldBitmap): void {
  if (bm.inconsistent) {
    fail('unsupported', `Bitmap '${bm.name}' is inconsistent and cannot be used`, 'EINVAL', 'Try block-dirty-bitmap-remove to delete this bitmap from disk');
  }
}

/** bdrv_get_default_bitmap_granularity: the cluster size, within [4 KiB, 64 KiB]. */
function defaultGranularity(clusterSize: number): number {
  return Math.min(65536, Math.max(4096, clusterSize));
}

/** qmp_block_dirty_bitmap_add (persistent, enabled): the new bitmap heads the list, all clear. */
function addBitmap(s: EngineState, list: HeldBitmap[], name: string, granularity: number | undefined): void {
  if (name === '') fail('usage', 'Bitmap name cannot be empty', 'EINVAL');
  if (granularity !== undefined && (granularity < 512 || (granularity & (granularity - 1)) !== 0)) {
    fail('usage', 'Granularity must be power of 2 and at least 512', 'EINVAL');
  }
  const g = granularity ?? defaultGranularity(s.clusterSize);
  if (list.some((b) => b.name === name)) fail('usage', `Bitmap already exists: ${name}`, 'EEXIST');
  const granularityBits = Math.log2(g);
  const size = virtualSize(s);
  const entry = (n: string): number => bitmapDirEntrySize(encodeByteString(n).length, 0);
  const dirSize = list.reduce((n, b) => n + entry(b.name), entry(name));
  const problem = storeProblem({ clusterSize: s.clusterSize, size: () => size }, name, granularityBits, list.length + 1, dirSize);
  if (problem !== undefined) fail('unsupported', `Can't make bitmap '${name}' persistent in '${NODE_NAME}': ${problem}`, 'EINVAL');
  list.unshift({ name, granularityBits, enabled: true, size, data: new Uint8Array(serializedBytes(size, granularityBits)), inconsistent: false });
}

/** hbitmap_merge: every granule set in `src` sets the granules of `dest` over the same bytes. */
function mergeBits(dest: DirtyBitmap, src: SourceBitmap): void {
  if (src.granularityBits === dest.granularityBits) {
    for (let i = 0; i < dest.data.length; i++) dest.data[i]! |= src.data[i]!;
    return;
  }
  const g = 2 ** src.granularityBits;
  const nbits = Math.ceil(src.size / g);
  for (let i = 0; i < nbits; i++) {
    if (src.data[i >> 3]! & (1 << (i & 7))) markRange(dest, i * g, g);
  }
}

/**
 * Runs one action on the image's bitmaps. A v2 image holds none: only add tells it apart
 * ("Cannot store dirty bitmaps in qcow2 v2 files"); the others find no bitmap.
 */
export async function bitmapAction(s: EngineState, action: BitmapAction): Promise<void> {
  const list = s.heldBitmaps?.list;
  if (list === undefined) {
    if (action.op === 'add' && action.name === '') fail('usage', 'Bitmap name cannot be empty', 'EINVAL');
    if (action.op === 'add') {
      fail('unsupported', `Can't make bitmap '${action.name}' persistent in '${NODE_NAME}': Cannot store dirty bitmaps in qcow2 v2 files`, 'ENOTSUP');
    }
    fail('not-found', `Dirty bitmap '${action.name}' not found`, 'ENOENT');
  }
  switch (action.op) {
    case 'add':
      return addBitmap(s, list, action.name, action.granularity);
    case 'remove': {
      const bm = lookup(list, action.name);
      await removeStoredBitmap(s, memName(bm.name));
      list.splice(list.indexOf(bm), 1);
      return;
    }
    case 'clear': {
      const bm = lookup(list, action.name);
      checkUsable(bm);
      bm.data.fill(0);
      return;
    }
    case 'enable':
    case 'disable': {
      // BDRV_BITMAP_ALLOW_RO still refuses an inconsistent bitmap.
      const bm = lookup(list, action.name);
      checkUsable(bm);
      bm.enabled = action.op === 'enable';
      return;
    }
    case 'merge': {
      const bm = lookup(list, action.name);
      checkUsable(bm);
      if (action.source === undefined) fail('not-found', `Dirty bitmap '${action.sourceName}' not found`, 'ENOENT');
      if (action.source.inconsistent) checkUsable({ ...bm, name: action.sourceName, inconsistent: true });
      if (action.source.size !== bm.size) {
        fail('unsupported', `Bitmaps are of different sizes (destination size is ${bm.size}, source size is ${action.source.size}) and can't be merged`, 'EINVAL');
      }
      mergeBits(bm, action.source);
      return;
    }
  }
}
