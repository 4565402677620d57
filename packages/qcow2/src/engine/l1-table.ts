/**
 * The active L1 table of a writable image: finding (and allocating or copying) the L2 table
 * for a guest offset, writing one L1 entry, and growing or shrinking the table, in qemu's
 * order (new table written and synced before the header names it; old one freed after).
 */
import { TsimgError, LimitError } from '@tsimg/raw';
import { INT_MAX } from '@tsimg/raw';
import { decodeL1Entry, encodeL1Entry } from '../format/l2-entry.js';
import { OL_ACTIVE_L1 } from '../format/overlap.js';
import { QCOW_MAX_L1_SIZE } from '../format/types.js';
import { overlapCheck } from './corruption.js';
import { headerSwitch } from './header-write.js';
import { hashHex } from './mapping.js';
import { type EngineState } from './state.js';

/** One L2 table, where it is, and the entry index of the guest offset asked for. */
export interface ClusterTable {
  table: Uint8Array;
  l2Offset: number;
  index: number;
}

/** get_cluster_table: the L2 table for guest `offset`, allocated (or copied) when needed. */
export async function getClusterTable(s: EngineState, offset: number): Promise<ClusterTable> {
  const geo = s.geo;
  const l1Index = Math.floor(offset / geo.l2Span);
  if (l1Index >= s.l1Size) await growL1(s, l1Index + 1, false);
  const e = decodeL1Entry(s.l1, l1Index * 8);
  if (e.l2Offset % geo.clusterSize !== 0) {
    await s.corrupt(`L2 table offset ${hashHex(e.l2Offset)} unaligned (L1 index: ${hashHex(l1Index)})`);
  }
  let l2Offset = e.l2Offset;
  if (!e.copied) {
    await l2Allocate(s, l1Index);
    if (e.l2Offset !== 0) await s.allocator!.freeClusters(e.l2Offset, geo.clusterSize);
    l2Offset = decodeL1Entry(s.l1, l1Index * 8).l2Offset;
  }
  const table = await s.l2Cache.get(l2Offset);
  return { table, l2Offset, index: Math.floor((offset % geo.l2Span) / geo.clusterSize) };
}

/** l2_allocate: a new L2 table (a copy of the old one when shared), hooked into the L1 table. */
async function l2Allocate(s: EngineState, l1Index: number): Promise<void> {
  const cs = s.clusterSize;
  const alloc = s.allocator!;
  const oldEntry = s.l1Bytes.slice(l1Index * 8, l1Index * 8 + 8);
  const old = decodeL1Entry(s.l1, l1Index * 8).l2Offset;
  const l2Offset = await alloc.allocClusters(cs);
  let l1WriteTried = false;
  try {
    if (l2Offset === 0) await s.corrupt('Preventing invalid allocation of L2 table at offset 0');
    await s.refcountCache.flush();
    let oldTable: Uint8Array | undefined;
    if (old !== 0) oldTable = await s.l2Cache.get(old);
    const table = s.l2Cache.getEmpty(l2Offset);
    if (oldTable !== undefined) table.set(oldTable);
    s.l2Cache.markDirty(l2Offset, table);
    await s.l2Cache.flush();
    encodeL1Entry({ l2Offset, copied: true }, s.l1, l1Index * 8);
    l1WriteTried = true;
    await writeL1Entry(s, l1Index);
    s.protectedMetadata.activeL2.delete(old);
    s.protectedMetadata.activeL2.add(l2Offset);
  } catch (err) {
    // As qemu's l2_allocate, the L1 entry in memory keeps pointing at the old table. Unlike
    // qemu, once the L1 write was tried the new table is kept (leaked), not freed: the write
    // may have reached the disk, and the new table (zeroes, or a copy of the old one) must
    // stay valid for it. Before that point it goes back, and out of the cache.
    s.l1Bytes.set(oldEntry, l1Index * 8);
    if (!l1WriteTried && !s.broken && l2Offset > 0) await alloc.freeClusters(l2Offset, cs, true).catch(() => undefined);
    throw err;
  }
}

async function writeL1Entry(s: EngineState, l1Index: number): Promise<void> {
  await overlapCheck(s, s.l1Offset + l1Index * 8, 8, OL_ACTIVE_L1);
  await s.file.write(s.l1Offset + l1Index * 8, s.l1Bytes.subarray(l1Index * 8, l1Index * 8 + 8));
  await s.file.flush();
}

/** qcow2_grow_l1_table. */
export async function growL1(s: EngineState, minSize: number, exact: boolean): Promise<void> {
  if (minSize <= s.l1Size) return;
  if (minSize > INT_MAX / 8) throw new LimitError('Active L1 table too large', { errno: 'EFBIG' });
  let newSize = minSize;
  if (!exact) {
    newSize = Math.max(s.l1Size, 1);
    while (minSize > newSize) newSize = Math.ceil((newSize * 3) / 2);
  }
  if (newSize > QCOW_MAX_L1_SIZE / 8) throw new LimitError('Active L1 table too large', { errno: 'EFBIG' });
  const bytes = new Uint8Array(newSize * 8);
  bytes.set(s.l1Bytes.subarray(0, s.l1Size * 8));
  const alloc = s.allocator!;
  const newOffset = await alloc.allocClusters(bytes.length);
  try {
    await s.refcountCache.flush();
    await overlapCheck(s, newOffset, bytes.length);
    await s.file.write(newOffset, bytes);
    await s.file.flush();
  } catch (err) {
    // The old table stays active; its replacement goes back (qemu's qcow2_grow_l1_table).
    if (!s.broken) await alloc.freeClusters(newOffset, bytes.length).catch(() => undefined);
    throw err;
  }
  const hdr = new Uint8Array(12);
  const v = new DataView(hdr.buffer);
  v.setUint32(0, newSize);
  v.setBigUint64(4, BigInt(newOffset));
  await headerSwitch(s, () => s.file.write(36, hdr));
  const oldOffset = s.l1Offset;
  const oldSize = s.l1Size;
  s.l1Bytes = bytes;
  s.l1 = new DataView(bytes.buffer);
  s.l1Offset = newOffset;
  s.l1Size = newSize;
  s.header.l1Size = newSize;
  s.header.l1TableOffset = newOffset;
  await alloc.freeClusters(oldOffset, oldSize * 8);
}

/** qcow2_shrink_l1_table: zeroes the L1 entries from `newSize` on and frees their L2 tables. */
export async function shrinkL1(s: EngineState, newSize: number): Promise<void> {
  if (newSize >= s.l1Size) return;
  const from = newSize * 8;
  const to = s.l1Size * 8;
  const dropped: number[] = [];
  for (let i = s.l1Size - 1; i >= newSize; i--) {
    const e = decodeL1Entry(s.l1, i * 8);
    if (e.l2Offset !== 0) dropped.push(e.l2Offset);
  }
  try {
    await s.file.flush();
    await s.file.write(s.l1Offset + from, new Uint8Array(to - from));
    await s.file.flush();
  } finally {
    // As qemu: the entries leave memory even when the zeroes may not have reached the disk
    // (a half-cleared table on disk only leaks its L2 tables), and before their clusters are
    // freed — otherwise a failed free leaves memory pointing at a reusable cluster.
    s.l1Bytes.fill(0, from, to);
    for (const l2Offset of dropped) s.protectedMetadata.activeL2.delete(l2Offset);
  }
  for (const l2Offset of dropped) await s.allocator!.freeClusters(l2Offset, s.clusterSize, true);
}
