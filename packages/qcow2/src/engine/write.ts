import { INT_MAX, BDRV_REQUEST_MAX_BYTES as REQUEST_MAX_BYTES, writeParts } from '@tsimg/raw';
/**
 * The allocating write path of an open image (qcow2_co_pwritev_part): mapping a guest range to
 * host clusters (in place or newly allocated), one data write with its copy-on-write regions,
 * then linking the L2 entries and freeing the clusters they replaced.
 */
import { compressedRange, decodeL2Entry, encodeL2Entry, entryHostCluster, entryWritableInPlace, type L2Entry } from '../format/l2-entry.js';
import { calculateL2Meta, linkedBitmap, type L2Meta } from './cow.js';
import { overlapCheck } from './corruption.js';
import { beforeChange, markDirtyIfLazy } from './header-write.js';
import { getClusterTable } from './l1-table.js';
import { hashHex } from './mapping.js';
import { readGuest } from './read.js';
import { dataDevice, tableView, type EngineState } from './state.js';
import { CRYPTO_SECTOR } from '../crypto/cipher.js';

/** What qcow2_alloc_host_offset mapped: the bytes covered, the host offset, allocations to link. */
export interface HostMapping {
  bytes: number;
  host: number;
  metas: L2Meta[];
}

/** How many clusters from l2Index on need (or do not need) a new allocation. */
function countSingleWrite(s: EngineState, view: DataView, l2Index: number, n: number, newAlloc: boolean): number {
  const geo = s.geo;
  let expected = entryHostCluster(decodeL2Entry(view, l2Index * geo.entrySize, geo)) ?? 0;
  let i = 0;
  for (; i < n; i++) {
    const e = decodeL2Entry(view, (l2Index + i) * geo.entrySize, geo);
    if (!entryWritableInPlace(e) !== newAlloc) break;
    if (!newAlloc) {
      if (entryHostCluster(e) !== expected) break;
      expected += geo.clusterSize;
    }
  }
  return i;
}

function clustersToLookAt(s: EngineState, start: number, bytes: number): number {
  const geo = s.geo;
  const inCluster = start % geo.clusterSize;
  const l2Index = Math.floor((start % geo.l2Span) / geo.clusterSize);
  return Math.min(Math.ceil((inCluster + bytes) / geo.clusterSize), geo.l2Entries - l2Index, Math.floor(REQUEST_MAX_BYTES / geo.clusterSize));
}

/**
 * qcow2_alloc_host_offset: maps as much of `[offset, offset+bytes)` as possible to one
 * contiguous host range, allocating clusters as qemu would. Returns the bytes covered, the
 * host offset of `offset`, and the allocations to link afterwards.
 */
export async function allocHostOffset(s: EngineState, offset: number, bytes: number): Promise<HostMapping> {
  const geo = s.geo;
  const cs = geo.clusterSize;
  const alloc = s.allocator!;
  let start = offset;
  let remaining = bytes;
  let clusterOffset: number | undefined;
  let host: number | undefined;
  let cur = 0;
  const metas: L2Meta[] = [];
  for (;;) {
    if (host === undefined && clusterOffset !== undefined) host = clusterOffset;
    start += cur;
    remaining -= cur;
    if (clusterOffset !== undefined) clusterOffset += cur;
    if (remaining === 0) break;
    cur = remaining;
    const inCluster = start % cs;

    // handle_copied: clusters we may write in place.
    {
      const n = clustersToLookAt(s, start, cur);
      const t = await getClusterTable(s, start);
      const view = tableView(t.table);
      const entry = decodeL2Entry(view, t.index * geo.entrySize, geo);
      if (entryWritableInPlace(entry)) {
        const hostCluster = entryHostCluster(entry)!;
        if (hostCluster % cs !== 0) await s.corrupt(`Preventing invalid write on metadata (unaligned cluster ${hashHex(hostCluster)})`);
        if (clusterOffset !== undefined && hostCluster !== clusterOffset - inCluster) break;
        const keep = countSingleWrite(s, view, t.index, n, false);
        cur = Math.min(cur, keep * cs - inCluster);
        const meta = calculateL2Meta(geo, view, t.index, hostCluster, start, cur, true);
        if (meta !== undefined) metas.push(meta);
        clusterOffset = hostCluster + inCluster;
        continue;
      }
    }

    // handle_alloc: new clusters (optionally exactly at clusterOffset, to stay contiguous).
    const n0 = clustersToLookAt(s, start, cur);
    const t = await getClusterTable(s, start);
    const view = tableView(t.table);
    let n = countSingleWrite(s, view, t.index, n0, true);
    let allocAt: number;
    if (s.dataFile !== undefined) {
      allocAt = start - inCluster; // external data files map guest offsets 1:1
      if (clusterOffset !== undefined && clusterOffset - inCluster !== allocAt) break;
    } else if (clusterOffset === undefined) {
      allocAt = await alloc.allocClusters(n * cs);
    } else {
      allocAt = clusterOffset - inCluster;
      n = await alloc.allocClustersAt(allocAt, n);
      if (n === 0) break;
    }
    const requested = cur + inCluster;
    const nbBytes = Math.min(requested, n * cs);
    cur = Math.min(cur, nbBytes - inCluster);
    const tv = tableView((await getClusterTable(s, start)).table);
    metas.push(calculateL2Meta(geo, tv, t.index, allocAt, start, cur, false)!);
    clusterOffset = allocAt + inCluster;
  }
  return { bytes: bytes - remaining, host: host!, metas };
}

/**
 * The bytes to store at `host` for guest bytes `data` at `guest`: an encrypted copy for an
 * encrypted image (qcow2_co_encrypt), `data` itself otherwise.
 */
async function hostBytes(s: EngineState, host: number, guest: number, data: Uint8Array): Promise<Uint8Array> {
  const c = s.crypto;
  if (c === undefined) return data;
  return c.cipher.encryptedAsync((c.physical ? host : guest) / CRYPTO_SECTOR, data);
}

/** qcow2_co_pwritev_part. */
export async function writeGuest(s: EngineState, offset: number, data: Uint8Array): Promise<void> {
  if (s.crypto !== undefined && (offset % CRYPTO_SECTOR !== 0 || data.length % CRYPTO_SECTOR !== 0)) {
    // An encrypted image's request alignment is its sector (bs->bl.request_alignment): the
    // block layer reads the partial sectors around the request and writes whole ones.
    const start = offset - (offset % CRYPTO_SECTOR);
    const end = Math.ceil((offset + data.length) / CRYPTO_SECTOR) * CRYPTO_SECTOR;
    const buf = new Uint8Array(end - start);
    await readGuest(s, start, buf);
    buf.set(data, offset - start);
    return writeGuest(s, start, buf);
  }
  await beforeChange(s);
  let done = 0;
  const pending: L2Meta[] = [];
  try {
    while (done < data.length) {
      const want = Math.min(data.length - done, INT_MAX);
      const guest = offset + done;
      const r = await allocHostOffset(s, guest, want);
      try {
        await writeChunk(s, guest, data.subarray(done, done + r.bytes), r);
      } catch (err) {
        // qcow2_alloc_cluster_abort: the clusters this chunk allocated go back unused.
        if (!s.broken && s.dataFile === undefined) {
          for (const m of r.metas) {
            if (!m.keepOld) await s.allocator!.freeClusters(m.hostStart, m.nbClusters * s.clusterSize).catch(() => undefined);
          }
        }
        throw err;
      }
      pending.push(...r.metas);
      done += r.bytes;
    }
  } finally {
    // qemu runs the chunks of a multi-chunk request as parallel tasks: all allocations happen
    // before the first task links its L2 entries (and frees the clusters it replaced). Chunks
    // whose data was written are linked even when a later one failed.
    if (!s.broken) for (const m of pending) await linkL2(s, m);
  }
}

/** Writes one chunk's data with the COW regions around it, as one device write. */
async function writeChunk(s: EngineState, guest: number, chunk: Uint8Array, r: HostMapping): Promise<void> {
  const allocating = r.metas.some((m) => !m.keepOld);
  if (allocating) await markDirtyIfLazy(s);
  // One write covering the data and the COW regions at both ends.
  const first = r.metas.find((m) => m.guestStart + m.cowStartTo === guest);
  const last = r.metas.find((m) => m.guestStart + m.cowEndFrom === guest + r.bytes);
  const head = first !== undefined ? first.cowStartTo - first.cowStartFrom : 0;
  const tail = last !== undefined ? last.cowEndTo - last.cowEndFrom : 0;
  if (s.dataFile === undefined) await overlapCheck(s, r.host - head, head + chunk.length + tail);
  if (head === 0 && tail === 0) {
    await dataDevice(s).write(r.host, await hostBytes(s, r.host, guest, chunk));
  } else {
    // The COW regions beside the data, written with it as one vectored request: no copy of
    // the guest data into a new buffer (each part encrypted on its own where the image is:
    // all three start at sector boundaries, as an encrypted image's requests do).
    const parts: Uint8Array[] = [];
    const start = r.host - head;
    if (head > 0) {
      const buf = new Uint8Array(head);
      await readGuest(s, guest - head, buf);
      parts.push(await hostBytes(s, start, guest - head, buf));
    }
    parts.push(await hostBytes(s, r.host, guest, chunk));
    if (tail > 0) {
      const buf = new Uint8Array(tail);
      await readGuest(s, guest + r.bytes, buf);
      parts.push(await hostBytes(s, r.host + chunk.length, guest + r.bytes, buf));
    }
    await writeParts(dataDevice(s), start, parts);
  }
  if (allocating) s.l2Cache.setDependsOnFlush();
}

/**
 * perform_cow without guest data (preallocation): the COW regions at both ends of `m` are read
 * from the current guest view and written to the new host clusters, one write each.
 */
export async function performCow(s: EngineState, m: L2Meta): Promise<void> {
  const regions = [
    [m.cowStartFrom, m.cowStartTo],
    [m.cowEndFrom, m.cowEndTo],
  ] as const;
  if (regions.every(([from, to]) => to === from)) return;
  const bufs: (Uint8Array | undefined)[] = [];
  for (const [from, to] of regions) {
    if (to === from) bufs.push(undefined);
    else {
      const buf = new Uint8Array(to - from);
      await readGuest(s, m.guestStart + from, buf);
      bufs.push(buf);
    }
  }
  for (let i = 0; i < regions.length; i++) {
    const buf = bufs[i];
    if (buf === undefined) continue;
    const host = m.hostStart + regions[i]![0];
    if (s.dataFile === undefined) await overlapCheck(s, host, buf.length);
    await dataDevice(s).write(host, await hostBytes(s, host, m.guestStart + regions[i]![0], buf));
  }
  s.l2Cache.setDependsOnFlush();
}

/** qcow2_alloc_cluster_link_l2: points the L2 entries at the new clusters, frees the old ones. */
export async function linkL2(s: EngineState, m: L2Meta): Promise<void> {
  const geo = s.geo;
  if (!s.lazy) await s.l2Cache.setDependency(s.refcountCache);
  const t = await getClusterTable(s, m.guestStart);
  const view = tableView(t.table);
  const old: L2Entry[] = [];
  for (let i = 0; i < m.nbClusters; i++) {
    const at = (t.index + i) * geo.entrySize;
    if (view.getUint32(at) !== 0 || view.getUint32(at + 4) !== 0) old.push(decodeL2Entry(view, at, geo));
    const prev = decodeL2Entry(view, at, geo);
    const hostOffset = m.hostStart + i * geo.clusterSize;
    if (geo.extendedL2) {
      const bits = prev.kind === 'extended' ? { alloc: prev.alloc, zero: prev.zero } : { alloc: 0, zero: 0 };
      const nb = m.prealloc === true ? bits : linkedBitmap(geo, m, i, bits);
      encodeL2Entry({ kind: 'extended', hostOffset, copied: true, alloc: nb.alloc, zero: nb.zero }, view, at, geo);
    } else {
      encodeL2Entry({ kind: 'data', hostOffset, copied: true }, view, at, geo);
    }
  }
  s.l2Cache.markDirty(t.l2Offset, t.table);
  if (!m.keepOld) for (const e of old) await freeAnyCluster(s, e);
}

/** qcow2_free_any_cluster. */
export async function freeAnyCluster(s: EngineState, e: L2Entry, discard = false): Promise<void> {
  const alloc = s.allocator!;
  if (e.kind === 'compressed') {
    const r = compressedRange(e);
    await alloc.freeClusters(r.offset, r.length, discard);
    return;
  }
  const host = entryHostCluster(e);
  if (host === undefined) return;
  if (host % s.clusterSize !== 0) {
    await s.corrupt(`Cannot free unaligned cluster ${hashHex(host)}`);
  }
  if (s.dataFile !== undefined) {
    // Data file clusters are not refcounted; with discard passthrough they are dropped.
    if (discard) await s.dataFile.discard(host, Math.max(0, Math.min(s.clusterSize, s.dataFile.size() - host)));
    return;
  }
  await alloc.freeClusters(host, s.clusterSize, discard);
}
