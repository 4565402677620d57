/**
 * Persistent dirty bitmaps across `convert --bitmaps`: reading a source image's bitmaps, and
 * storing copies of them in the target the way qemu-img 7.2 does — convert_copy_bitmaps adds
 * each bitmap to the target and merges the source's bits into it, and on close
 * qcow2_store_persistent_dirty_bitmaps writes them out (held-bitmaps.ts, bitmap-store.ts).
 *
 * The store order, which decides where every cluster lands, is described there.
 */
import { TsimgError, UnsupportedError } from '@tsimg/raw';
import { findExtension } from './format/header.js';
import {
  BME_FLAG_IN_USE,
  BME_MAX_GRANULARITY_BITS,
  BME_MAX_NAME_SIZE,
  BME_MAX_PHYS_SIZE,
  BME_MAX_TABLE_SIZE,
  BME_MIN_GRANULARITY_BITS,
  QCOW2_MAX_BITMAPS,
  QCOW2_MAX_BITMAP_DIRECTORY_SIZE,
  bitmapDirEntrySize,
  loadBitmapDirectory,
  type BitmapDirectoryEntry,
} from './format/bitmap-directory.js';
import { encodeByteString } from './format/byte-string.js';
import { bitCount, loadBitmap, memName, serializedBytes, type DirtyBitmap } from './bitmap-store.js';
import type { Qcow2Image } from './engine/image.js';
import { AUTOCLEAR_BITMAPS } from './format/types.js';

/** Bytes of a name on disk (names are byte strings, see byte-string.ts). */
function nameBytes(name: string): number {
  return encodeByteString(name).length;
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

/**
 * The bits of the bitmap `name` of a read-only image as qemu loads them (load_bitmap: none for
 * one in use), or undefined when the image has no such bitmap.
 */
export async function readImageBitmap(image: Qcow2Image, name: string): Promise<(DirtyBitmap & { inconsistent: boolean }) | undefined> {
  if (image.version < 3) return undefined;
  const entry = (await loadDirectory(image)).find((e) => memName(e.name) === name);
  if (entry === undefined) return undefined;
  if (entry.flags & BME_FLAG_IN_USE) {
    const size = image.size();
    return { name, granularityBits: entry.granularityBits, enabled: false, size, data: new Uint8Array(serializedBytes(size, entry.granularityBits)), inconsistent: true };
  }
  return { ...(await loadBitmap(image, entry)), inconsistent: false };
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

/**
 * check_constraints_on_bitmap plus the rest of qcow2_co_can_store_new_dirty_bitmap, for a new
 * bitmap in `target`: the message qemu gives, or undefined when it can be stored.
 */
export function storeProblem(target: { clusterSize: number; size(): number }, name: string, granularityBits: number, count: number, dirSize: number): string | undefined {
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
  // The target's own bitmaps (an existing -n target's): held since the open, in use in the
  // directory until the close stores them with the new ones (held-bitmaps.ts).
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
  // As qemu: the new bitmaps join the target's list, and its close stores them all.
  target.adoptBitmaps(added);
  if (failure) throw failure;
}

