/**
 * Turning zero clusters into what a v2 image can hold, before a downgrade: a port of qemu
 * 7.2's qcow2_expand_zero_clusters and expand_zero_clusters_in_l1 over the active L1 table
 * (through the L2 cache) and every snapshot's L1 table (L2 tables read and written directly).
 * Without a backing file a plain zero cluster becomes unallocated; with one it gets a fresh
 * cluster of zeroes; a preallocated zero cluster keeps its cluster, zeroed.
 */
import { decodeL1Entry, decodeL2Entry, encodeL2Entry } from '../format/l2-entry.js';
import { validateTable } from './open-checks.js';
import { QCOW_MAX_L1_SIZE } from '../format/types.js';
import { OL_ACTIVE_L2, OL_INACTIVE_L2 } from '../format/overlap.js';
import { overlapCheck } from './corruption.js';
import { readL1 } from './snapshot-refcount.js';
import type { StatusCallback } from './refcount-order.js';
import { dataDevice, tableView, type EngineState } from './state.js';

/** Progress over all L1 entries of the active table and the snapshots'. */
interface Visit {
  visited: number;
  total: number;
  status: StatusCallback;
}

/** Expands one L2 table's zero entries in place; true when it changed. */
async function expandTable(s: EngineState, table: Uint8Array, l2Offset: number, l2Refcount: number, active: boolean): Promise<boolean> {
  const geo = s.geo;
  const alloc = s.allocator!;
  const view = tableView(table);
  let dirty = false;
  for (let j = 0; j < geo.l2Entries; j++) {
    const at = j * geo.entrySize;
    const e = decodeL2Entry(view, at, geo);
    if (e.kind !== 'zero') continue;
    let offset = e.hostOffset;
    const plain = offset === 0;
    if (plain) {
      if (s.backing === undefined) {
        encodeL2Entry({ kind: 'unallocated' }, view, at, geo);
        dirty = true;
        continue;
      }
      offset = await alloc.allocClusters(s.clusterSize);
      // A shared L2 table counts once per table that names it.
      if (l2Refcount > 1) await alloc.addToCluster(offset / s.clusterSize, l2Refcount - 1);
    }
    if (offset % s.clusterSize !== 0) {
      await s.corrupt(
        `Cluster allocation offset 0x${offset.toString(16)} unaligned (L2 offset: 0x${l2Offset.toString(16)}, L2 index: 0x${j.toString(16)})`,
      );
    }
    await overlapCheck(s, offset, s.clusterSize);
    await dataDevice(s).writeZeroes(offset, s.clusterSize, { mayUnmap: false });
    encodeL2Entry({ kind: 'data', hostOffset: offset, copied: l2Refcount === 1 }, view, at, geo);
    dirty = true;
  }
  if (dirty && active) {
    // The new clusters' refcounts and zeroes reach the disk before the entries naming them.
    await s.l2Cache.setDependency(s.refcountCache);
    s.l2Cache.setDependsOnFlush();
  }
  return dirty;
}

/** expand_zero_clusters_in_l1. */
async function expandL1(s: EngineState, l1: DataView, entries: number, active: boolean, visit: Visit): Promise<void> {
  for (let i = 0; i < entries; i++) {
    const { l2Offset } = decodeL1Entry(l1, i * 8);
    if (l2Offset !== 0) {
      if (l2Offset % s.clusterSize !== 0) {
        await s.corrupt(`L2 table offset 0x${l2Offset.toString(16)} unaligned (L1 index: 0x${i.toString(16)})`);
      }
      const l2Refcount = await s.allocator!.getRefcount(l2Offset / s.clusterSize);
      if (active) {
        const table = await s.l2Cache.get(l2Offset);
        if (await expandTable(s, table, l2Offset, l2Refcount, true)) s.l2Cache.markDirty(l2Offset, table);
      } else {
        const table = new Uint8Array(s.clusterSize);
        await s.file.read(l2Offset, table);
        if (await expandTable(s, table, l2Offset, l2Refcount, false)) {
          // Written behind the cache's back: the clusters it names and their refcounts first.
          await s.refcountCache.flush();
          await s.file.flush();
          await overlapCheck(s, l2Offset, s.clusterSize, OL_INACTIVE_L2 | OL_ACTIVE_L2);
          await s.file.write(l2Offset, table);
        }
      }
    }
    visit.visited++;
    visit.status(visit.visited, visit.total);
  }
}

/** qcow2_expand_zero_clusters (standard L2 entries only: downgrade refuses extended L2). */
export async function expandZeroClusters(s: EngineState, status: StatusCallback): Promise<void> {
  const visit: Visit = { visited: 0, total: s.l1Size + s.snapshots.reduce((n, sn) => n + sn.l1Size, 0), status };
  await expandL1(s, s.l1, s.l1Size, true, visit);
  // Snapshot L1 tables may name active L2 tables: the cache is written and emptied first, so
  // they are read as expanded and never written over by a stale cached copy.
  await s.l2Cache.flush();
  s.l2Cache.clear();
  await s.file.flush();
  for (const sn of s.snapshots) {
    validateTable(BigInt(sn.l1TableOffset), sn.l1Size, 8, QCOW_MAX_L1_SIZE, s.clusterSize, 'Snapshot L1 table');
    const l1 = await readL1(s, sn.l1TableOffset, sn.l1Size);
    await expandL1(s, tableView(l1), sn.l1Size, false, visit);
  }
}
