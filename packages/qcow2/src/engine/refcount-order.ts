/**
 * Changing the refcount width of an open image (amend's refcount_bits), a port of qemu 7.2's
 * qcow2_change_refcount_order and walk_over_reftable: the new refcount blocks and table are
 * allocated through the old structures until nothing more needs allocating, written, named by
 * the header, and the old structures are then freed through the new ones — so every cluster
 * lands where qemu puts it.
 */
import { UnsupportedError, UsageError } from '@tsimg/raw';
import { REFTABLE_ENTRY_SIZE, getRefcount, refcountsPerBlock, setRefcount } from '../format/refcount.js';
import { QCOW_MAX_REFTABLE_SIZE } from '../format/types.js';
import { overlapCheck } from './corruption.js';
import { rewriteHeaderSynced } from './header-write.js';
import { newAllocator } from './open.js';
import type { EngineState } from './state.js';

/** Progress of one walk: (done, total) in qemu's units, for the amend status callback. */
export type StatusCallback = (offset: number, total: number) => void;

/** What a walk does with each finished new refcount block (qemu's RefblockFinishOp). */
type FinishOp = (index: number, block: Uint8Array | undefined, empty: boolean) => Promise<void>;

/** The new structures being built: the new reftable's entries and whether a walk allocated. */
interface NewTable {
  entries: number[];
  allocated: boolean;
}

/**
 * walk_over_reftable: every refcount of the old structures, in order, packed into new refcount
 * blocks of `newOrder` (filled only when `fill`), each passed to `finish` when complete.
 */
async function walk(
  s: EngineState,
  newOrder: number,
  fill: boolean,
  finish: FinishOp,
  status: StatusCallback,
  walkIndex: number,
  totalWalks: number,
): Promise<void> {
  const alloc = s.allocator!;
  const oldOrder = s.header.refcountOrder;
  const oldPerBlock = refcountsPerBlock(s.header.clusterBits, oldOrder);
  const newPerBlock = refcountsPerBlock(s.header.clusterBits, newOrder);
  const block = new Uint8Array(s.clusterSize);
  let newIndex = 0;
  let at = 0;
  let empty = true;
  const complete = async (): Promise<void> => {
    await finish(newIndex, fill ? block : undefined, empty);
    newIndex++;
    at = 0;
    empty = true;
    // Only non-zero refcounts are set below: the next block starts from zeroes.
    if (fill) block.fill(0);
  };
  const newBits = 2 ** newOrder;
  // The old table may grow while the first walk allocates: its length is read every time.
  for (let t = 0; t < alloc.table.length; t++) {
    status(walkIndex * alloc.table.length + t, totalWalks * alloc.table.length);
    const offset = alloc.table[t]!;
    if (offset === 0) {
      // No refcount block: oldPerBlock zero refcounts, passed over a new block at a time.
      let left = oldPerBlock;
      while (left > 0) {
        if (at >= newPerBlock) await complete();
        const n = Math.min(left, newPerBlock - at);
        at += n;
        left -= n;
      }
      continue;
    }
    if (offset % s.clusterSize !== 0) {
      await s.corrupt(`Refblock offset 0x${offset.toString(16)} unaligned (reftable index: 0x${t.toString(16)})`);
    }
    const old = await s.refcountCache.get(offset);
    for (let i = 0; i < oldPerBlock; i++) {
      if (at >= newPerBlock) await complete();
      const refcount = getRefcount(old, i, oldOrder);
      if (refcount !== 0) {
        if (newBits < 64 && refcount >= 2 ** newBits) {
          const cluster = (t * oldPerBlock + i) * s.clusterSize;
          throw new UsageError(
            `Cannot decrease refcount entry width to ${newBits} bits: Cluster at offset 0x${cluster.toString(16)} has a refcount of ${refcount}`,
            { errno: 'EINVAL' },
          );
        }
        if (fill) setRefcount(block, at, newOrder, refcount);
        empty = false;
      }
      at++;
    }
  }
  if (at > 0) await complete();
  status((walkIndex + 1) * alloc.table.length, totalWalks * alloc.table.length);
}

/** alloc_refblock: a non-empty new block gets a cluster (and the new table room for it). */
function allocRefblock(s: EngineState, table: NewTable): FinishOp {
  const perCluster = s.clusterSize / REFTABLE_ENTRY_SIZE;
  return async (index, _block, empty) => {
    if (empty) return;
    if (index >= table.entries.length) {
      const size = Math.ceil((index + 1) / perCluster) * perCluster;
      if (size > QCOW_MAX_REFTABLE_SIZE / REFTABLE_ENTRY_SIZE) {
        throw new UnsupportedError(
          'This operation would make the refcount table grow beyond the maximum size supported by QEMU, aborting',
          { errno: 'ENOTSUP' },
        );
      }
      while (table.entries.length < size) table.entries.push(0);
    }
    if (table.entries[index] === 0) {
      table.entries[index] = await s.allocator!.allocClusters(s.clusterSize);
      table.allocated = true;
    }
  };
}

/** flush_refblock: writes a finished new block where the new table says. */
function flushRefblock(s: EngineState, table: NewTable): FinishOp {
  return async (index, block) => {
    const offset = table.entries[index] ?? 0;
    if (offset === 0) return;
    await overlapCheck(s, offset, s.clusterSize);
    await s.file.write(offset, block!);
  };
}

/**
 * qcow2_change_refcount_order: rebuilds the refcount structures with 2^`newOrder`-bit
 * refcounts (v3 only). Fails with qemu's message when a refcount does not fit the new width,
 * leaving the image as it was apart from what was allocated and freed again.
 */
export async function changeRefcountOrder(s: EngineState, newOrder: number, status: StatusCallback): Promise<void> {
  const alloc = s.allocator!;
  const table: NewTable = { entries: [], allocated: false };
  let tableOffset = 0;
  let tableAllocated = 0; // entries the allocated new table has room for
  let walkIndex = 0;
  let done = false;
  try {
    do {
      table.allocated = false;
      const totalWalks = Math.max(walkIndex + 2, 3);
      await walk(s, newOrder, false, allocRefblock(s, table), status, walkIndex++, totalWalks);
      if (table.allocated) {
        if (tableOffset !== 0) await alloc.freeClusters(tableOffset, tableAllocated * REFTABLE_ENTRY_SIZE);
        tableOffset = await alloc.allocClusters(table.entries.length * REFTABLE_ENTRY_SIZE);
        tableAllocated = table.entries.length;
      }
    } while (table.allocated);

    await walk(s, newOrder, true, flushRefblock(s, table), status, walkIndex, walkIndex + 1);
    const bytes = new Uint8Array(table.entries.length * REFTABLE_ENTRY_SIZE);
    const view = new DataView(bytes.buffer);
    table.entries.forEach((e, i) => view.setBigUint64(i * REFTABLE_ENTRY_SIZE, BigInt(e)));
    await overlapCheck(s, tableOffset, bytes.length);
    await s.file.write(tableOffset, bytes);
    // The new blocks and table, and every refcount the old structures hold, are on disk
    // before the header names the new ones.
    await s.refcountCache.flush();
    await s.file.flush();

    const old = { order: s.header.refcountOrder, offset: s.header.refcountTableOffset, clusters: s.header.refcountTableClusters };
    s.header.refcountOrder = newOrder;
    s.header.refcountTableOffset = tableOffset;
    s.header.refcountTableClusters = (table.entries.length * REFTABLE_ENTRY_SIZE) / s.clusterSize;
    try {
      await rewriteHeaderSynced(s);
    } catch (err) {
      Object.assign(s.header, { refcountOrder: old.order, refcountTableOffset: old.offset, refcountTableClusters: old.clusters });
      throw err;
    }
    done = true;
    // From here on the new structures count: the old blocks are dropped from the cache (their
    // clusters are about to be freed) and the allocator is rebuilt for the new width.
    const oldEntries = [...alloc.table];
    const oldTableBytes = old.clusters * s.clusterSize;
    s.refcountCache.clear();
    const next = newAllocator(s, Float64Array.from(table.entries));
    next.freeClusterIndex = alloc.freeClusterIndex;
    next.freeByteOffset = alloc.freeByteOffset;
    s.allocator = next;
    s.protectedMetadata.refblocks.reset(next.table);
    for (const offset of oldEntries) if (offset !== 0) await next.freeClusters(offset, s.clusterSize);
    await next.freeClusters(old.offset, oldTableBytes);
  } finally {
    if (!done) {
      // qemu's "done:" label on failure: what was allocated for the new structures goes back.
      for (const offset of table.entries) if (offset !== 0) await alloc.freeClusters(offset, s.clusterSize);
      if (tableOffset !== 0) await alloc.freeClusters(tableOffset, tableAllocated * REFTABLE_ENTRY_SIZE);
    }
  }
}
