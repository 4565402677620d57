/**
 * Zero writes and discards of an open image (qcow2_co_pwrite_zeroes, qcow2_co_pdiscard and
 * qcow2_cluster_discard): zero flags in the L2 entries where the alignment allows, explicit
 * zeroes where it does not, and the clusters they free, with the host discards queued.
 */
import { decodeL2Entry, encodeL2Entry, entryHostCluster, type L2Entry } from '../format/l2-entry.js';
import { getClusterTable } from './l1-table.js';
import { beforeChange } from './header-write.js';
import { lookupRun, type Geometry } from './mapping.js';
import { chainReadsAsZero } from './read.js';
import { tableView, virtualSize, type EngineState } from './state.js';
import { freeAnyCluster, writeGuest } from './write.js';

/** Zero-filled writes (v2 zeroes, unaligned heads) go out in pieces of this size. */
const ZERO_WRITE_CHUNK = 4 * 1024 * 1024;

/** True when encoding `entry` would leave the bytes at `at` unchanged. */
function sameEntry(view: DataView, at: number, entry: L2Entry, geo: Geometry): boolean {
  const size = geo.entrySize;
  const scratch = new DataView(new ArrayBuffer(size));
  encodeL2Entry(entry, scratch, 0, geo);
  for (let i = 0; i < size; i += 4) if (scratch.getUint32(i) !== view.getUint32(at + i)) return false;
  return true;
}

/** True when the guest range reads as zeroes, judged from metadata only (qemu's is_zero). */
async function readsAsZero(s: EngineState, offset: number, length: number): Promise<boolean> {
  const end = Math.min(offset + length, virtualSize(s));
  let pos = offset;
  while (pos < end) {
    const run = await lookupRun(s, pos, end - pos);
    if (run.kind === 'data' || run.kind === 'compressed') return false;
    if (run.kind === 'unallocated' && s.backing !== undefined) {
      if (!(await chainReadsAsZero(s.backing, pos, run.length))) return false;
    }
    pos += run.length;
  }
  return true;
}

/** qcow2_co_pwrite_zeroes with the block layer's alignment split around it. */
export async function writeZeroes(s: EngineState, offset: number, length: number, mayUnmap: boolean): Promise<void> {
  await beforeChange(s);
  if (s.version < 3) {
    await writeExplicitZeroes(s, offset, length);
    return;
  }
  const scs = s.geo.subclusterSize;
  const end = offset + length;
  const imageEnd = virtualSize(s);
  let pos = offset;
  while (pos < end) {
    const scStart = Math.floor(pos / scs) * scs;
    const scEnd = Math.min(scStart + scs, imageEnd);
    if (pos === scStart && (end >= scEnd || end === imageEnd)) {
      // Aligned middle: everything up to the last whole subcluster (or the image end).
      const alignedEnd = end === imageEnd ? end : Math.floor(end / scs) * scs;
      await zeroize(s, pos, alignedEnd - pos, mayUnmap);
      pos = alignedEnd;
      continue;
    }
    // An unaligned piece inside one subcluster.
    const pieceEnd = Math.min(end, scStart + scs);
    const ok =
      (await readsAsZero(s, scStart, pos - scStart)) &&
      (pieceEnd >= imageEnd || (await readsAsZero(s, pieceEnd, scEnd - pieceEnd))) &&
      (await subclusterZeroable(s, scStart));
    if (ok) await zeroize(s, scStart, scEnd - scStart, mayUnmap);
    else await writeExplicitZeroes(s, pos, pieceEnd - pos);
    pos = pieceEnd;
  }
}

async function subclusterZeroable(s: EngineState, offset: number): Promise<boolean> {
  const run = await lookupRun(s, offset, 1);
  return run.kind === 'zero' || run.kind === 'unallocated';
}

async function writeExplicitZeroes(s: EngineState, offset: number, length: number): Promise<void> {
  const zero = new Uint8Array(Math.min(length, ZERO_WRITE_CHUNK));
  for (let pos = 0; pos < length; pos += zero.length) {
    await writeGuest(s, offset + pos, zero.subarray(0, Math.min(zero.length, length - pos)));
  }
}

/** qcow2_subcluster_zeroize: subcluster-aligned range (or up to the image end). */
export async function zeroize(s: EngineState, offset: number, length: number, mayUnmap: boolean): Promise<void> {
  const geo = s.geo;
  const cs = geo.clusterSize;
  if (s.dataRaw && s.dataFile !== undefined) await s.dataFile.writeZeroes(offset, length, { mayUnmap });
  let end = offset + length;
  const head = Math.min(end, Math.ceil(offset / cs) * cs) - offset;
  let pos = offset + head;
  const tail = end >= virtualSize(s) ? 0 : end - Math.max(pos, Math.floor(end / cs) * cs);
  end -= tail;
  // As qemu: the host discards of clusters this frees are collected and issued once the
  // L2 entries and refcounts are updated (in the caches), merged into as few as possible.
  const alloc = s.allocator!;
  alloc.cacheDiscards = true;
  try {
    if (head > 0) await zeroSubclusters(s, offset, head);
    let n = Math.ceil((end - pos) / cs);
    while (n > 0) {
      const done = await zeroInL2(s, pos, n, mayUnmap);
      n -= done;
      pos += done * cs;
    }
    if (tail > 0) await zeroSubclusters(s, end, tail);
  } catch (err) {
    // qcow2_process_discards(bs, ret < 0) drops the queue without discarding.
    alloc.cacheDiscards = false;
    alloc.dropDiscards();
    throw err;
  }
  alloc.cacheDiscards = false;
  await alloc.processDiscards();
}

/** zero_l2_subclusters: sets zero bits for some subclusters of one cluster (extended L2). */
async function zeroSubclusters(s: EngineState, offset: number, length: number): Promise<void> {
  const geo = s.geo;
  const t = await getClusterTable(s, offset);
  const view = tableView(t.table);
  const at = t.index * geo.entrySize;
  const e = decodeL2Entry(view, at, geo);
  if (e.kind !== 'extended') {
    // Compressed clusters cannot be partially zeroed: qemu falls back to writing zeroes.
    await writeExplicitZeroes(s, offset, length);
    return;
  }
  const sc = Math.floor((offset % geo.clusterSize) / geo.subclusterSize);
  const count = Math.ceil(length / geo.subclusterSize);
  const range = ((2 ** count - 1) * 2 ** sc) >>> 0;
  const zero = (e.zero | range) >>> 0;
  const allocBits = (e.alloc & ~range) >>> 0;
  if (zero === e.zero && allocBits === e.alloc) return;
  encodeL2Entry({ ...e, zero, alloc: allocBits }, view, at, geo);
  s.l2Cache.markDirty(t.l2Offset, t.table);
}

/** The entry zero_in_l2_slice leaves for `old` (`unmap`: the host cluster goes). */
function zeroedEntry(geo: Geometry, old: L2Entry, unmap: boolean): L2Entry {
  if (geo.extendedL2) {
    const host = unmap || old.kind !== 'extended' ? undefined : old.hostOffset;
    const copied = unmap || old.kind !== 'extended' ? false : old.copied;
    return { kind: 'extended', hostOffset: host, copied, alloc: 0, zero: 0xffff_ffff };
  }
  if (unmap || old.kind === 'unallocated') return { kind: 'zero', hostOffset: 0, copied: false };
  if (old.kind === 'data' || old.kind === 'zero') return { kind: 'zero', hostOffset: old.hostOffset, copied: old.copied };
  return old;
}

/** zero_in_l2_slice. */
async function zeroInL2(s: EngineState, offset: number, nbClusters: number, mayUnmap: boolean): Promise<number> {
  const geo = s.geo;
  const t = await getClusterTable(s, offset);
  const view = tableView(t.table);
  const n = Math.min(nbClusters, geo.l2Entries - t.index);
  for (let i = 0; i < n; i++) {
    const at = (t.index + i) * geo.entrySize;
    const old = decodeL2Entry(view, at, geo);
    const allocated = old.kind === 'compressed' || entryHostCluster(old) !== undefined;
    const unmap = old.kind === 'compressed' || (mayUnmap && allocated);
    const next = zeroedEntry(geo, old, unmap);
    if (sameEntry(view, at, next, geo)) continue;
    encodeL2Entry(next, view, at, geo);
    s.l2Cache.markDirty(t.l2Offset, t.table);
    if (unmap) {
      await s.refcountCache.setDependency(s.l2Cache);
      // qemu frees them as QCOW2_DISCARD_REQUEST: discarded in the file with unmap.
      await freeAnyCluster(s, old, s.passDiscardRequest);
    }
  }
  return n;
}

/** qcow2_co_pdiscard + qcow2_cluster_discard (not full_discard). */
export async function discard(s: EngineState, offset: number, length: number): Promise<void> {
  if (s.version < 3 && s.backing !== undefined) return; // would expose the backing file
  await beforeChange(s);
  const cs = s.clusterSize;
  const size = virtualSize(s);
  const start = Math.ceil(offset / cs) * cs;
  let end = Math.floor((offset + length) / cs) * cs;
  if (offset + length === size) end = size;
  if (start >= end) return;
  await discardClusters(s, start, end - start, false);
}

/**
 * qcow2_cluster_discard over cluster-aligned `[start, start+length)`. A full discard (when
 * shrinking) leaves the clusters unallocated and drops freed host clusters from the file.
 */
export async function discardClusters(s: EngineState, start: number, length: number, full: boolean): Promise<void> {
  const cs = s.clusterSize;
  const alloc = s.allocator!;
  let pos = start;
  let n = Math.ceil(length / cs);
  alloc.cacheDiscards = true;
  try {
    while (n > 0) {
      const done = await discardInL2(s, pos, n, full);
      n -= done;
      pos += done * cs;
    }
  } finally {
    alloc.cacheDiscards = false;
    await alloc.processDiscards();
  }
}

/** The entry discard_in_l2_slice leaves for `old`. */
function discardedEntry(s: EngineState, old: L2Entry, full: boolean): L2Entry {
  const geo = s.geo;
  const allocated = old.kind === 'compressed' || entryHostCluster(old) !== undefined;
  if (full) return geo.extendedL2 ? { kind: 'extended', hostOffset: undefined, copied: false, alloc: 0, zero: 0 } : { kind: 'unallocated' };
  if (s.backing !== undefined || allocated) {
    if (geo.extendedL2) return { kind: 'extended', hostOffset: undefined, copied: false, alloc: 0, zero: 0xffff_ffff };
    return s.version >= 3 ? { kind: 'zero', hostOffset: 0, copied: false } : { kind: 'unallocated' };
  }
  return old;
}

/** discard_in_l2_slice. */
async function discardInL2(s: EngineState, offset: number, nbClusters: number, full: boolean): Promise<number> {
  const geo = s.geo;
  const t = await getClusterTable(s, offset);
  const view = tableView(t.table);
  const n = Math.min(nbClusters, geo.l2Entries - t.index);
  const dropped: L2Entry[] = [];
  for (let i = 0; i < n; i++) {
    const at = (t.index + i) * geo.entrySize;
    const old = decodeL2Entry(view, at, geo);
    const next = discardedEntry(s, old, full);
    if (sameEntry(view, at, next, geo)) continue;
    encodeL2Entry(next, view, at, geo);
    s.l2Cache.markDirty(t.l2Offset, t.table);
    if (full) {
      dropped.push(old);
      continue;
    }
    await s.refcountCache.setDependency(s.l2Cache);
    // A guest discard frees as QCOW2_DISCARD_REQUEST: passed to the file with unmap.
    await freeAnyCluster(s, old, s.passDiscardRequest);
  }
  if (dropped.length > 0) {
    // A shrink frees (and discards) these clusters for good: the L2 entries that drop them
    // reach the disk first, so that if the shrink fails later, a reused cluster is never
    // still mapped at its old place on disk. A failed flush here leaks them instead.
    await s.l2Cache.flush();
    await s.refcountCache.setDependency(s.l2Cache);
    for (const e of dropped) await freeAnyCluster(s, e, true);
  }
  return n;
}
