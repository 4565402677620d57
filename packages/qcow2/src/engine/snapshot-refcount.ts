/**
 * qcow2_update_snapshot_refcount: raising or dropping the refcount of every cluster an L1 table
 * reaches (its L2 tables and the data clusters they map), and setting the COPIED flags of its
 * L1 and L2 entries to what the refcounts now say — the one walk behind snapshot create, apply
 * and delete.
 */
import { IoError } from '@tsimg/raw';
import { compressedRange, decodeL1Entry, decodeL2Entry, encodeL1Entry } from '../format/l2-entry.js';
import { hashHex } from './mapping.js';
import { flushAll, tableView, type EngineState } from './state.js';

/** -1 drops a reference, +1 adds one, 0 only brings the COPIED flags up to date. */
export type RefcountAddend = -1 | 0 | 1;

const COPIED_HI = 0x8000_0000;
const COMPRESSED_HI = 0x4000_0000;
const OFFSET_HI_MASK = 0x00ff_ffff;
const OFFSET_LO_MASK = 0xffff_fe00;
const TWO32 = 2 ** 32;

/**
 * Walks the L1 table at `l1Offset` (`l1Size` entries) as qemu 7.2 does: the active table is
 * the one in memory (changed in place), any other is read from the file. Every reachable
 * cluster's refcount changes by `addend` (freed clusters are discarded from the file, qemu's
 * QCOW2_DISCARD_SNAPSHOT, which defaults to on), entries get COPIED exactly when their cluster's
 * refcount is 1, the caches are flushed, and — unless the table is being dropped (`addend` -1)
 * — a changed L1 table is written back and synced.
 */
export async function updateSnapshotRefcount(s: EngineState, l1Offset: number, l1Size: number, addend: RefcountAddend): Promise<void> {
  const alloc = s.allocator!;
  const active = l1Offset === s.l1Offset;
  const l1 = active ? s.l1Bytes : await readL1(s, l1Offset, l1Size);
  const l1View = tableView(l1);
  let modified = false;
  alloc.cacheDiscards = true;
  let failed = false;
  try {
    for (let i = 0; i < l1Size; i++) {
      const e = decodeL1Entry(l1View, i * 8);
      if (l1View.getUint32(i * 8) === 0 && l1View.getUint32(i * 8 + 4) === 0) continue;
      if (e.l2Offset % s.clusterSize !== 0) {
        await s.corrupt(`L2 table offset ${hashHex(e.l2Offset)} unaligned (L1 index: ${hashHex(i)})`);
      }
      if (e.l2Offset === 0) continue; // only flag bits set: no table to walk
      await updateL2Table(s, e.l2Offset, addend);
      const l2Cluster = e.l2Offset / s.clusterSize;
      if (addend !== 0) await changeClusterRefcount(s, l2Cluster, addend);
      const copied = (await alloc.getRefcount(l2Cluster)) === 1;
      if (copied !== e.copied || e.reserved) {
        encodeL1Entry({ l2Offset: e.l2Offset, copied }, l1View, i * 8);
        modified = true;
      }
    }
    await flushAll(s);
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    alloc.cacheDiscards = false;
    if (failed) alloc.dropDiscards();
    else await alloc.processDiscards();
  }
  // Update L1 only if it isn't dropped anyway (qemu's words).
  if (addend >= 0 && modified) {
    await s.file.write(l1Offset, l1.subarray(0, l1Size * 8));
    await s.file.flush();
  }
}

/** The L1 table at `offset`, read as bdrv_pread does (bytes past the end of the file are zero). */
export async function readL1(s: EngineState, offset: number, entries: number, bufferEntries = entries): Promise<Uint8Array> {
  const l1 = new Uint8Array(bufferEntries * 8);
  const inFile = Math.max(0, Math.min(entries * 8, s.file.size() - offset));
  if (inFile > 0) await s.file.read(offset, l1.subarray(0, inFile));
  return l1;
}

/** One L2 table's entries: refcounts of their clusters by `addend`, then their COPIED flags. */
async function updateL2Table(s: EngineState, l2Offset: number, addend: RefcountAddend): Promise<void> {
  const geo = s.geo;
  const alloc = s.allocator!;
  const table = await s.l2Cache.get(l2Offset);
  const view = tableView(table);
  for (let j = 0; j < geo.l2Entries; j++) {
    const at = j * geo.entrySize;
    const hi = view.getUint32(at);
    const lo = view.getUint32(at + 4);
    let refcount: number;
    if ((hi & COMPRESSED_HI) !== 0) {
      if (addend !== 0) {
        const entry = decodeL2Entry(view, at, geo);
        if (entry.kind !== 'compressed') throw new IoError('compressed L2 entry did not decode as compressed');
        const { offset, length } = compressedRange(entry);
        await mustUpdate(alloc.updateRefcount(offset, length, 1, addend < 0, true));
      }
      refcount = 2; // compressed clusters are never written in place
    } else {
      const hostOffset = (hi & OFFSET_HI_MASK) * TWO32 + ((lo & OFFSET_LO_MASK) >>> 0);
      if (hostOffset === 0) {
        refcount = 0; // unallocated, or reads as zero without a cluster
      } else {
        if (hostOffset % s.clusterSize !== 0) {
          await s.corrupt(
            `Cluster allocation offset ${hashHex(hostOffset)} unaligned (L2 offset: ${hashHex(l2Offset)}, L2 index: ${hashHex(j)})`,
          );
        }
        const cluster = hostOffset / s.clusterSize;
        // Without awaiting where the refcount block is cached (the walk's usual case).
        const fast = addend !== 0 ? alloc.tryChangeOne(cluster, addend, true) : alloc.tryGetRefcount(cluster);
        if (fast !== undefined) refcount = fast;
        else {
          if (addend !== 0) await changeClusterRefcount(s, cluster, addend);
          refcount = await alloc.getRefcount(cluster);
        }
      }
    }
    const next = refcount === 1 ? (hi | COPIED_HI) >>> 0 : (hi & ~COPIED_HI) >>> 0;
    if (next !== hi) {
      // L2 entries that stop saying COPIED must not reach the disk before the raised refcounts.
      if (addend > 0 && !s.l2Cache.trySetDependency(s.refcountCache)) await s.l2Cache.setDependency(s.refcountCache);
      view.setUint32(at, next);
      s.l2Cache.markDirty(l2Offset, table);
    }
  }
}

/** qcow2_update_cluster_refcount with QCOW2_DISCARD_SNAPSHOT: one cluster, by ±1. */
async function changeClusterRefcount(s: EngineState, cluster: number, addend: -1 | 1): Promise<void> {
  await mustUpdate(s.allocator!.updateRefcount(cluster * s.clusterSize, 1, 1, addend < 0, true));
}

/**
 * A refcount update of clusters that are in use already never needs a new refcount block; when
 * one is missing all the same (a damaged image), qemu fails with its -EAGAIN.
 */
async function mustUpdate(update: Promise<unknown>): Promise<void> {
  if ((await update) !== undefined) throw new IoError('Resource temporarily unavailable', { errno: 'EAGAIN' });
}

