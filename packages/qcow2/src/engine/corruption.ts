/**
 * Corruption handling of an open image: qemu's corruption signal (the corrupt bit, EIO) and
 * the pre-write overlap check that keeps writes into the image file off its metadata.
 */
import { TsimgError, CorruptError, IoError } from '@tsimg/raw';
import {
  OL_ACTIVE_L1,
  OL_ACTIVE_L2,
  OL_BITMAP_DIRECTORY,
  OL_INACTIVE_L1,
  OL_MAIN_HEADER,
  OL_REFCOUNT_BLOCK,
  OL_REFCOUNT_TABLE,
  OL_SNAPSHOT_TABLE,
  overlapName,
  type ByteRange,
} from '../format/overlap.js';
import { REFTABLE_ENTRY_SIZE } from '../format/refcount.js';
import { INCOMPAT_CORRUPT } from '../format/types.js';
import { writeFeatureFields } from './header-write.js';
import type { EngineState } from './state.js';

/**
 * Reports corruption like qcow2_signal_corruption: a writable image gets the corrupt bit (so
 * nothing writes over metadata again) and the operation fails with EIO. On a read-only image
 * the event is not fatal: the image stays usable, and only the first event carries qemu's
 * line ("Image is corrupt: ...") — later ones fail with a plain EIO, as qemu suppresses them.
 */
export async function signalCorruption(s: EngineState, message: string): Promise<never> {
  if (s.readOnly) {
    const first = !s.signaledCorruption;
    s.signaledCorruption = true;
    if (!first) throw new IoError(`qcow2: ${message}`, { errno: 'EIO' });
    throw new CorruptError(`qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`, {
      errno: 'EIO',
    });
  }
  // Like qemu making the node unusable: nothing cached is written back any more.
  s.broken = true;
  s.l2Cache.clear();
  s.refcountCache.clear();
  if (!s.readOnly && (s.header.incompatibleFeatures & INCOMPAT_CORRUPT) === 0n && s.version === 3) {
    s.header.incompatibleFeatures |= INCOMPAT_CORRUPT;
    try {
      await writeFeatureFields(s);
    } catch {
      // the corruption report matters more than the failed mark
    }
  }
  throw new CorruptError(`qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed`, {
    errno: 'EIO',
  });
}

/** A metadata write; `ign` names the kind of metadata it may overwrite (its own). */
export async function storeMetadata(s: EngineState, offset: number, data: Uint8Array, ign = 0): Promise<void> {
  await overlapCheck(s, offset, data.length, ign);
  await s.file.write(offset, data);
}

/**
 * qcow2_pre_write_overlap_check in qemu's default ("cached") mode: a write into the image
 * file must not hit the header, the active L1 table, the refcount table, the snapshot table,
 * a snapshot's L1 table, an active L2 table, a refcount block or the bitmap directory (a
 * wrong L2 entry or refcount would otherwise let data overwrite metadata). The image is
 * marked corrupt instead. `ign` is a mask of OL_* kinds not to check.
 */
export async function overlapCheck(s: EngineState, offset: number, length: number, ign = 0): Promise<void> {
  const what = overlappedMetadata(s, offset, length, ign);
  if (what !== 0) await s.corrupt(`Preventing invalid write on metadata (overlaps with ${overlapName(what)})`);
}

/** qcow2_check_metadata_overlap: the first kind of metadata (qemu's order) the write hits, or 0. */
function overlappedMetadata(s: EngineState, offset: number, length: number, ign: number): number {
  if (length === 0) return 0;
  const cs = s.clusterSize;
  if ((ign & OL_MAIN_HEADER) === 0 && offset < cs) return OL_MAIN_HEADER;
  // As qemu, the range is widened to whole clusters first.
  const first = Math.floor(offset / cs);
  const end = Math.ceil((offset + length) / cs);
  const start = first * cs;
  const stop = end * cs;
  const hit = (at: number, len: number): boolean => len > 0 && start < at + len && at < stop;
  const hitRange = (r: ByteRange | undefined): boolean => r !== undefined && hit(r.offset, r.length);
  const meta = s.protectedMetadata;
  if ((ign & OL_ACTIVE_L1) === 0 && hit(s.l1Offset, s.l1Size * 8)) return OL_ACTIVE_L1;
  const alloc = s.allocator;
  if ((ign & OL_REFCOUNT_TABLE) === 0 && alloc !== undefined && hit(alloc.tableOffset, alloc.table.length * REFTABLE_ENTRY_SIZE)) {
    return OL_REFCOUNT_TABLE;
  }
  if ((ign & OL_SNAPSHOT_TABLE) === 0 && hitRange(meta.snapshotTable)) return OL_SNAPSHOT_TABLE;
  if ((ign & OL_INACTIVE_L1) === 0 && meta.inactiveL1.some(hitRange)) return OL_INACTIVE_L1;
  if ((ign & OL_ACTIVE_L2) === 0 && meta.activeL2.overlaps(first, end)) return OL_ACTIVE_L2;
  if ((ign & OL_REFCOUNT_BLOCK) === 0 && meta.refblocks.overlaps(first, end)) return OL_REFCOUNT_BLOCK;
  if ((ign & OL_BITMAP_DIRECTORY) === 0 && hitRange(meta.bitmapDirectory)) return OL_BITMAP_DIRECTORY;
  return 0;
}
