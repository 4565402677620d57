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

/**
 * What expanding one L2 table did: whether it changed, and the references it dropped from
 * preallocated zero clusters that stay shared (cluster index → count), which may only be
 * released once the table is on disk.
 */
interface Expanded {
  dirty: boolean;
  released: Map<number, number>;
}

/**
 * Expands one L2 table's zero entries in place. One deliberate difference from qemu: a
 * preallocated zero cluster that other tables (a snapshot) still use is not zeroed in place
 * — qemu 7.2 does, which changes what the snapshot reads — but gets a fresh zeroed cluster
 * like a plain zero cluster, and drops this table's references to the shared one.
 */
async function expandTable(s: EngineState, table: Uint8Array, l2Offset: number, l2Refcount: number): Promise<Expanded> {
  const geo = s.geo;
  const alloc = s.allocator!;
  const view = tableView(table);
  const out: Expanded = { dirty: false, released: new Map() };
  for (let j = 0; j < geo.l2Entries; j++) {
    const at = j * geo.entrySize;
    const e = decodeL2Entry(view, at, geo);
    if (e.kind !== 'zero') continue;
    let offset = e.hostOffset;
    if (offset === 0 && s.backing === undefined) {
      encodeL2Entry({ kind: 'unallocated' }, view, at, geo);
      out.dirty = true;
      continue;
    }
    const shared = offset !== 0 && offset % s.clusterSize === 0 && (await alloc.getRefcount(offset / s.clusterSize)) > l2Refcount;
    if (offset === 0 || shared) {
      if (shared) out.released.set(offset / s.clusterSize, (out.released.get(offset / s.clusterSize) ?? 0) + l2Refcount);
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
    out.dirty = true;
  }
  return out;
}

/** Drops the references an expanded table no longer holds (after the table is on disk, or ordered after it). */
async function release(s: EngineState, released: Map<number, number>): Promise<void> {
  for (const [cluster, count] of released) await s.allocator!.addToCluster(cluster, -count);
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
        const done = await expandTable(s, table, l2Offset, l2Refcount);
        if (done.dirty) {
          // The new clusters' refcounts and zeroes reach the disk before the entries naming them.
          await s.l2Cache.setDependency(s.refcountCache);
          s.l2Cache.setDependsOnFlush();
          s.l2Cache.markDirty(l2Offset, table);
        }
        // A decrease orders the refcount cache after the L2 cache (the allocator's rule).
        await release(s, done.released);
      } else {
        const table = new Uint8Array(s.clusterSize);
        await s.file.read(l2Offset, table);
        const done = await expandTable(s, table, l2Offset, l2Refcount);
        if (done.dirty) {
          // Written behind the cache's back: the clusters it names and their refcounts first.
          await s.refcountCache.flush();
          await s.file.flush();
          await overlapCheck(s, l2Offset, s.clusterSize, OL_INACTIVE_L2 | OL_ACTIVE_L2);
          await s.file.write(l2Offset, table);
          if (done.released.size > 0) await s.file.flush();
        }
        await release(s, done.released);
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
