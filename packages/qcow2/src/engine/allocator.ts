/**
 * Host cluster allocation through refcounts, mirroring qemu's qcow2-refcount.c step for step so
 * that tsimg places clusters exactly where qemu would: first-fit from `freeClusterIndex`
 * (qcow2_alloc_clusters), refcount blocks that describe themselves (alloc_refcount_block), and
 * refcount table growth into a fresh self-describing area at the end (qcow2_refcount_area).
 *
 * "Again" is qemu's -EAGAIN: metadata was placed where the caller's clusters were going to go,
 * so the caller searches again.
 */
import { FormatError, TsimgError, type BlockDevice, IoError, LimitError } from '@tsimg/raw';
import type { TableCache } from './cache.js';
import {
  REFTABLE_ENTRY_SIZE,
  getRefcount,
  refcountMax,
  refcountMetadataSize,
  setRefcount,
} from '../format/refcount.js';
import { QCOW_MAX_REFTABLE_SIZE } from '../format/types.js';

/** Largest host offset qemu allocates (QCOW_MAX_CLUSTER_OFFSET: bits 9..55). */
const MAX_CLUSTER_OFFSET = 2 ** 56 - 1;

const AGAIN = Symbol('again');
type Again = typeof AGAIN;

/** What the allocator needs from the image that owns it. */
export interface AllocatorHost {
  file: BlockDevice;
  clusterBits: number;
  refcountOrder: number;
  refcountCache: TableCache;
  l2Cache: TableCache;
  /** Writes refcount_table_offset and refcount_table_clusters into the header (and syncs). */
  writeReftableHeader(offset: number, clusters: number): Promise<void>;
  /** Called with the offending value when metadata would be placed at offset 0 etc. */
  corrupt(message: string): Promise<never>;
  /**
   * Told when a refcount table entry in memory changes from refcount block `from` to `to`
   * (0 = none), so the owner's pre-write overlap check knows every refcount block.
   */
  refblockMoved?(from: number, to: number): void;
}

/** The refcount side of an open image: the refcount table in memory plus the allocator. */
export class Allocator {
  readonly #h: AllocatorHost;
  readonly #clusterSize: number;
  readonly #blockBits: number; // log2(refcounts per block)
  readonly #max: number;
  /** Refcount table entries (refcount block offsets; 0 = none). */
  table: Float64Array;
  tableOffset: number;
  #maxTableIndex = 0;
  /** Next cluster index the first-fit search starts from. */
  freeClusterIndex = 0;
  /** Byte allocator position for compressed data (qcow2_alloc_bytes); 0 = none. */
  freeByteOffset = 0;

  constructor(host: AllocatorHost, table: Float64Array, tableOffset: number) {
    this.#h = host;
    this.#clusterSize = 2 ** host.clusterBits;
    this.#blockBits = host.clusterBits + 3 - host.refcountOrder;
    this.#max = refcountMax(host.refcountOrder);
    this.table = table;
    this.tableOffset = tableOffset;
    this.#updateMaxTableIndex();
  }

  /** Largest refcount an entry holds. */
  get refcountMax(): number {
    return this.#max;
  }

  #updateMaxTableIndex(): void {
    let i = this.table.length - 1;
    while (i > 0 && this.table[i] === 0) i--;
    this.#maxTableIndex = Math.max(i, 0);
  }

  async #loadBlock(offset: number): Promise<Uint8Array> {
    if (offset % this.#clusterSize !== 0) {
      await this.#h.corrupt(`Refblock offset ${hex(offset)} unaligned`);
    }
    return this.#h.refcountCache.get(offset);
  }

  /** qcow2_get_refcount: the refcount of host cluster `clusterIndex` (0 beyond the table). */
  async getRefcount(clusterIndex: number): Promise<number> {
    const tableIndex = Math.floor(clusterIndex / 2 ** this.#blockBits);
    if (tableIndex >= this.table.length) return 0;
    const blockOffset = this.table[tableIndex]!;
    if (blockOffset === 0) return 0;
    const block = await this.#loadBlock(blockOffset);
    return getRefcount(block, clusterIndex % 2 ** this.#blockBits, this.#h.refcountOrder);
  }

  /** getRefcount without awaiting: undefined when its refcount block is not in the cache. */
  tryGetRefcount(clusterIndex: number): number | undefined {
    const tableIndex = Math.floor(clusterIndex / 2 ** this.#blockBits);
    if (tableIndex >= this.table.length) return 0;
    const blockOffset = this.table[tableIndex]!;
    if (blockOffset === 0) return 0;
    if (blockOffset % this.#clusterSize !== 0) return undefined;
    const block = this.#h.refcountCache.peek(blockOffset);
    return block === undefined ? undefined : getRefcount(block, clusterIndex % 2 ** this.#blockBits, this.#h.refcountOrder);
  }

  /**
   * updateRefcount of one cluster by ±1 (`discard` as there) when it needs no I/O and cannot
   * fail: its refcount block is cached, the ordering dependency is set already, the count stays
   * in range, and a freed cluster's discard is only queued. Returns the new refcount, or
   * undefined — nothing changed, and the caller takes updateRefcount, which also reports errors.
   * Bulk walks (snapshot create/apply/delete) change 10^5 refcounts this way without a promise
   * per cluster.
   */
  tryChangeOne(clusterIndex: number, addend: -1 | 1, discard: boolean): number | undefined {
    const h = this.#h;
    const perBlock = 2 ** this.#blockBits;
    const tableIndex = Math.floor(clusterIndex / perBlock);
    if (tableIndex >= this.table.length) return undefined;
    const blockOffset = this.table[tableIndex]!;
    if (blockOffset === 0 || blockOffset % this.#clusterSize !== 0) return undefined;
    if (addend < 0 && !h.refcountCache.trySetDependency(h.l2Cache)) return undefined;
    const block = h.refcountCache.peek(blockOffset);
    if (block === undefined) return undefined;
    const blockIndex = clusterIndex % perBlock;
    const refcount = getRefcount(block, blockIndex, h.refcountOrder) + addend;
    if (refcount < 0 || refcount > this.#max) return undefined;
    if (refcount === 0 && discard && !this.cacheDiscards) return undefined;
    setRefcount(block, blockIndex, h.refcountOrder, refcount);
    h.refcountCache.markDirty(blockOffset, block);
    if (refcount === 0) {
      const clusterOffset = clusterIndex * this.#clusterSize;
      if (clusterIndex < this.freeClusterIndex) this.freeClusterIndex = clusterIndex;
      if (addend < 0) this.#freedSinceL2Flush = true;
      if (h.refcountCache.has(clusterOffset)) h.refcountCache.discard(clusterOffset);
      h.l2Cache.discard(clusterOffset);
      if (discard) this.#queueDiscard(clusterOffset, this.#clusterSize);
    }
    return refcount;
  }

  /** alloc_clusters_noref: first fit of `size` bytes from freeClusterIndex, refcounts untouched. */
  async #allocNoref(size: number, max: number): Promise<number> {
    // A cluster still queued for discard must not be handed out: the discard would come after
    // its new contents.
    if (this.cacheDiscards) await this.processDiscards();
    const n = Math.ceil(size / this.#clusterSize);
    // qemu's per-cluster qcow2_get_refcount, with the refcount block looked up once per block
    // rather than once per cluster (nothing changes refcounts during the search).
    const perBlock = 2 ** this.#blockBits;
    let blockIndex = -1;
    let block: Uint8Array | undefined;
    retry: for (;;) {
      for (let i = 0; i < n; i++) {
        const next = this.freeClusterIndex++;
        const tableIndex = Math.floor(next / perBlock);
        if (tableIndex !== blockIndex) {
          blockIndex = tableIndex;
          const offset = tableIndex < this.table.length ? this.table[tableIndex]! : 0;
          block = offset === 0 ? undefined : await this.#loadBlock(offset);
        }
        if (block !== undefined && getRefcount(block, next % perBlock, this.#h.refcountOrder) !== 0) continue retry;
      }
      break;
    }
    if (this.freeClusterIndex > 0 && this.freeClusterIndex - 1 > Math.floor(max / this.#clusterSize)) {
      throw new LimitError('Image is too large: no host offset left to allocate', { errno: 'EFBIG' });
    }
    return (this.freeClusterIndex - n) * this.#clusterSize;
  }

  /**
   * Clusters were freed whose unlinking L2 entries may not be on disk yet. Before one of them
   * is handed out again, the L2 tables are flushed: otherwise new data written into it would
   * show at its old guest offset after a crash (qemu leaves that window open).
   */
  #freedSinceL2Flush = false;

  async #settleFreed(): Promise<void> {
    if (!this.#freedSinceL2Flush) return;
    await this.#h.l2Cache.flush();
    this.#freedSinceL2Flush = false;
  }

  /** qcow2_alloc_clusters: allocates `size` bytes (whole clusters) and returns the host offset. */
  async allocClusters(size: number): Promise<number> {
    for (;;) {
      const offset = await this.#allocNoref(size, MAX_CLUSTER_OFFSET);
      if ((await this.updateRefcount(offset, size, 1, false)) !== AGAIN) {
        await this.#settleFreed();
        return offset;
      }
    }
  }

  /**
   * qcow2_alloc_clusters_at: allocates up to `n` clusters starting exactly at `offset`, as many
   * as are free there in a row; returns how many.
   */
  async allocClustersAt(offset: number, n: number): Promise<number> {
    if (n === 0) return 0;
    for (;;) {
      let i = 0;
      let index = offset / this.#clusterSize;
      for (; i < n; i++) if ((await this.getRefcount(index++)) !== 0) break;
      if ((await this.updateRefcount(offset, i * this.#clusterSize, 1, false)) !== AGAIN) {
        if (i > 0) await this.#settleFreed();
        return i;
      }
    }
  }

  /**
   * qcow2_alloc_bytes: `size` bytes for compressed data, packed after the previous compressed
   * cluster while it fits (sharing host clusters, whose refcount counts the pieces).
   */
  async allocBytes(size: number): Promise<number> {
    let offset = this.freeByteOffset;
    if (offset !== 0 && (await this.getRefcount(Math.floor(offset / this.#clusterSize))) === this.#max) offset = 0;
    let freeInCluster = this.#clusterSize - (offset % this.#clusterSize);
    for (;;) {
      if (offset === 0 || freeInCluster < size) {
        const newCluster = await this.#allocNoref(this.#clusterSize, MAX_CLUSTER_OFFSET);
        if (newCluster === 0) await this.#h.corrupt('Preventing invalid allocation of compressed cluster at offset 0');
        if (offset === 0 || Math.ceil(offset / this.#clusterSize) * this.#clusterSize !== newCluster) {
          offset = newCluster;
          freeInCluster = this.#clusterSize;
        } else {
          freeInCluster += this.#clusterSize;
        }
      }
      const r = await this.updateRefcount(offset, size, 1, false);
      if (r !== AGAIN) break;
      // As qemu: after metadata was placed, the search starts over with a fresh cluster
      // (the partly used one may now be followed by that metadata).
      offset = 0;
    }
    this.freeByteOffset = offset + size;
    if (this.freeByteOffset % this.#clusterSize === 0) this.freeByteOffset = 0;
    await this.#settleFreed();
    return offset;
  }

  /** qcow2_free_clusters: drops one reference from every cluster in the byte range. */
  async freeClusters(offset: number, size: number, discard = false): Promise<void> {
    await this.updateRefcount(offset, size, 1, true, discard);
  }

  /** Adds `delta` (may be negative) to one cluster's refcount (qcow2_update_cluster_refcount). */
  async addToCluster(clusterIndex: number, delta: number): Promise<void> {
    if (delta === 0) return;
    const r = await this.updateRefcount(clusterIndex * this.#clusterSize, 1, Math.abs(delta), delta < 0);
    if (r === AGAIN) throw new IoError('refcount update unexpectedly needed a new refcount block');
  }

  /**
   * update_refcount: adds (or with `decrease` subtracts) `addend` to every cluster touching
   * `[offset, offset+length)`. Returns AGAIN when a refcount block had to be allocated (the
   * changes made so far are undone, as qemu does).
   */
  async updateRefcount(
    offset: number,
    length: number,
    addend: number,
    decrease: boolean,
    discard = false,
  ): Promise<Again | void> {
    if (length === 0) return;
    const h = this.#h;
    if (decrease) await h.refcountCache.setDependency(h.l2Cache);
    const cs = this.#clusterSize;
    const start = Math.floor(offset / cs) * cs;
    const last = Math.floor((offset + length - 1) / cs) * cs;
    let oldTableIndex = -1;
    let block: Uint8Array | undefined;
    let blockOffset = 0;
    let clusterOffset = start;
    let failure: unknown;
    let again = false;
    try {
      for (; clusterOffset <= last; clusterOffset += cs) {
        const clusterIndex = clusterOffset / cs;
        const tableIndex = Math.floor(clusterIndex / 2 ** this.#blockBits);
        if (tableIndex !== oldTableIndex) {
          const r = await this.#allocRefcountBlock(clusterIndex);
          if (r === AGAIN) {
            if (this.freeClusterIndex > start / cs) this.freeClusterIndex = start / cs;
            again = true;
            break;
          }
          block = r.block;
          blockOffset = r.offset;
        }
        oldTableIndex = tableIndex;
        const blockIndex = clusterIndex % 2 ** this.#blockBits;
        let refcount = getRefcount(block!, blockIndex, h.refcountOrder);
        if (decrease ? refcount - addend < 0 : refcount + addend > this.#max) {
          throw new FormatError(
            `Refcount of cluster ${hex(clusterOffset)} would ${decrease ? 'drop below zero' : 'exceed the maximum'}`,
            { errno: 'EINVAL' },
          );
        }
        refcount = decrease ? refcount - addend : refcount + addend;
        if (refcount === 0 && clusterIndex < this.freeClusterIndex) this.freeClusterIndex = clusterIndex;
        setRefcount(block!, blockIndex, h.refcountOrder, refcount);
        h.refcountCache.markDirty(blockOffset, block);
        if (refcount === 0) {
          if (decrease) this.#freedSinceL2Flush = true;
          // A freed cluster may have held a cached table: forget it, never write it back.
          if (h.refcountCache.has(clusterOffset)) {
            h.refcountCache.discard(clusterOffset);
            oldTableIndex = -1;
          }
          h.l2Cache.discard(clusterOffset);
          // Discard passthrough (qemu's update_refcount_discard): the freed cluster is
          // dropped from the file too, adjacent clusters merged into one request.
          if (discard) this.#queueDiscard(clusterOffset, cs);
        }
      }
    } catch (err) {
      failure = err;
    }
    if (again || failure !== undefined) {
      // As qemu's qcow2_process_discards on failure: the queued discards are dropped, not
      // issued — the undo below makes those clusters used again.
      if (!this.cacheDiscards) this.#discards = [];
      // Undo what this call changed so far (qemu's "Try do undo any updates").
      if (clusterOffset > offset) {
        try {
          await this.updateRefcount(offset, clusterOffset - offset, addend, !decrease);
        } catch {
          // the original error matters more
        }
      }
      if (failure !== undefined) throw failure;
      return AGAIN;
    }
    if (!this.cacheDiscards) await this.processDiscards();
  }

  /** While set, freed-cluster discards are collected and issued by {@link processDiscards}. */
  cacheDiscards = false;
  #discards: { offset: number; length: number }[] = [];

  /** update_refcount_discard: queue a range, merging it with an adjacent queued one. */
  #queueDiscard(offset: number, length: number): void {
    const last = this.#discards[this.#discards.length - 1];
    if (last !== undefined && last.offset + last.length === offset) last.length += length;
    else if (last !== undefined && offset + length === last.offset) {
      last.offset = offset;
      last.length += length;
    } else this.#discards.push({ offset, length });
  }

  /** qcow2_process_discards with an error: forgets the queued ranges without discarding. */
  dropDiscards(): void {
    this.#discards = [];
  }

  /** qcow2_process_discards: drops the queued ranges from the file. */
  async processDiscards(): Promise<void> {
    const list = this.#discards.sort((a, b) => a.offset - b.offset);
    this.#discards = [];
    const file = this.#h.file;
    for (let i = 0; i < list.length; i++) {
      let { offset, length } = list[i]!;
      while (i + 1 < list.length && list[i + 1]!.offset <= offset + length) {
        const n = list[++i]!;
        length = Math.max(length, n.offset + n.length - offset);
      }
      const end = Math.min(offset + length, file.size());
      // As qemu: discarding freed clusters is optional, so its failure is ignored — failing
      // here would abandon an operation whose metadata changes are already made in memory.
      if (end > offset) await file.discard(offset, end - offset).catch(() => undefined);
    }
  }

  /**
   * qcow2_shrink_reftable: drops refcount blocks that count nothing but themselves from the
   * refcount table (written in one piece), then frees their clusters.
   */
  async shrinkReftable(): Promise<void> {
    const h = this.#h;
    const cs = this.#clusterSize;
    const perBlock = 2 ** this.#blockBits;
    const next = new Float64Array(this.table.length);
    for (let i = 0; i < this.table.length; i++) {
      const off = this.table[i]!;
      if (off === 0) continue;
      const block = await this.#loadBlock(off);
      let unused: boolean;
      if (Math.floor(off / cs / perBlock) === i) {
        const idx = (off / cs) % perBlock;
        const own = getRefcount(block, idx, h.refcountOrder);
        setRefcount(block, idx, h.refcountOrder, 0);
        unused = block.every((b) => b === 0);
        setRefcount(block, idx, h.refcountOrder, own);
      } else {
        unused = block.every((b) => b === 0);
      }
      next[i] = unused ? 0 : off;
    }
    const bytes = new Uint8Array(this.table.length * REFTABLE_ENTRY_SIZE);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < next.length; i++) if (next[i] !== 0) view.setBigUint64(i * REFTABLE_ENTRY_SIZE, BigInt(next[i]!));
    await h.file.write(this.tableOffset, bytes);
    await h.file.flush();
    for (let i = 0; i < this.table.length; i++) {
      if (this.table[i] !== 0 && next[i] === 0) {
        await this.#discardRefcountBlock(this.table[i]!);
        h.refblockMoved?.(this.table[i]!, 0);
        this.table[i] = 0;
      }
    }
    this.#updateMaxTableIndex();
    if (!this.cacheDiscards) await this.processDiscards();
  }

  /** qcow2_discard_refcount_block: the block's own refcount (1) drops to 0. */
  async #discardRefcountBlock(offset: number): Promise<void> {
    const h = this.#h;
    const cs = this.#clusterSize;
    const perBlock = 2 ** this.#blockBits;
    const clusterIndex = offset / cs;
    const describing = this.table[Math.floor(clusterIndex / perBlock)] ?? 0;
    if (describing === 0) await h.corrupt(`Refblock offset of discarded block ${hex(offset)} is 0`);
    const block = await this.#loadBlock(describing);
    const idx = clusterIndex % perBlock;
    const rc = getRefcount(block, idx, h.refcountOrder);
    if (rc !== 1) await h.corrupt(`Invalid refcount: ${rc}`);
    setRefcount(block, idx, h.refcountOrder, 0);
    h.refcountCache.markDirty(describing, block);
    if (clusterIndex < this.freeClusterIndex) this.freeClusterIndex = clusterIndex;
    h.refcountCache.discard(offset);
    this.#queueDiscard(offset, cs);
  }

  /** qcow2_get_last_cluster: the highest host cluster below `size` bytes with a reference. */
  async lastUsedCluster(size: number): Promise<number> {
    for (let i = Math.ceil(size / this.#clusterSize) - 1; i >= 0; i--) {
      if ((await this.getRefcount(i)) > 0) return i;
    }
    return this.#h.corrupt('There are no references in the refcount table.');
  }

  /** alloc_refcount_block: the refcount block covering `clusterIndex`, creating it if needed. */
  async #allocRefcountBlock(clusterIndex: number): Promise<Again | { block: Uint8Array; offset: number }> {
    const h = this.#h;
    const cs = this.#clusterSize;
    const perBlock = 2 ** this.#blockBits;
    const tableIndex = Math.floor(clusterIndex / perBlock);
    if (tableIndex < this.table.length) {
      const existing = this.table[tableIndex]!;
      if (existing !== 0) return { block: await this.#loadBlock(existing), offset: existing };
    }
    // We write to the refcount table, so L2 tables pointing at earlier allocations go first.
    await h.l2Cache.flush();
    const newBlock = await this.#allocNoref(cs, Number.MAX_SAFE_INTEGER);
    if (newBlock === 0) await h.corrupt('Preventing invalid allocation of refcount block at offset 0');
    const order = h.refcountOrder;
    let block: Uint8Array;
    if (Math.floor(newBlock / cs / perBlock) === tableIndex) {
      // The new block describes itself.
      block = h.refcountCache.getEmpty(newBlock);
      setRefcount(block, (newBlock / cs) % perBlock, order, 1);
    } else {
      // Described elsewhere: at most two levels of recursion reach a self-describing block.
      // That block may need a new refcount block (or a bigger table) itself: then its
      // allocation placed metadata, the caller's search restarts and so does this one (qemu
      // returns update_refcount's -EAGAIN from here; newBlock stays free and is found again).
      const r = await this.updateRefcount(newBlock, cs, 1, false);
      if (r === AGAIN) return AGAIN;
      await h.refcountCache.flush();
      block = h.refcountCache.getEmpty(newBlock);
    }
    h.refcountCache.markDirty(newBlock, block);
    await h.refcountCache.flush();

    if (tableIndex < this.table.length) {
      const entry = new Uint8Array(REFTABLE_ENTRY_SIZE);
      new DataView(entry.buffer).setBigUint64(0, BigInt(newBlock));
      await h.file.write(this.tableOffset + tableIndex * REFTABLE_ENTRY_SIZE, entry);
      await h.file.flush();
      this.table[tableIndex] = newBlock;
      h.refblockMoved?.(0, newBlock);
      if (tableIndex > this.#maxTableIndex) this.#maxTableIndex = tableIndex;
      return AGAIN;
    }

    // The table is full: grow it into a fresh area that describes itself.
    const blocksUsed = Math.ceil(Math.max(clusterIndex + 1, newBlock / cs + 1) / perBlock);
    const metaOffset = blocksUsed * perBlock * cs;
    await this.refcountArea(metaOffset, 0, false, tableIndex, newBlock);
    return AGAIN;
  }

  /**
   * qcow2_refcount_area: builds a new, larger refcount table at `startOffset` (after any new
   * refcount blocks it needs), with refcounts for itself, and switches the header to it.
   * Returns the end offset of the new area.
   */
  async refcountArea(
    startOffset: number,
    additionalClusters: number,
    exactSize: boolean,
    newRefblockIndex: number,
    newRefblockOffset: number,
  ): Promise<number> {
    const h = this.#h;
    const cs = this.#clusterSize;
    const perBlock = 2 ** this.#blockBits;
    const { refblockCount: total } = refcountMetadataSize(
      startOffset / cs + additionalClusters,
      cs,
      h.refcountOrder,
      !exactSize,
    );
    if (total > QCOW_MAX_REFTABLE_SIZE) {
      throw new LimitError('Refcount table would exceed the maximum size', { errno: 'EFBIG' });
    }
    const areaIndex = Math.floor(startOffset / cs / perBlock);
    let tableSize = exactSize ? total : total + Math.ceil(total / 2);
    const entriesPerCluster = cs / REFTABLE_ENTRY_SIZE;
    tableSize = Math.ceil(tableSize / entriesPerCluster) * entriesPerCluster;
    const tableClusters = (tableSize * REFTABLE_ENTRY_SIZE) / cs;
    if (tableSize > QCOW_MAX_REFTABLE_SIZE) {
      throw new LimitError('Refcount table would exceed the maximum size', { errno: 'EFBIG' });
    }
    const newTable = new Float64Array(tableSize);
    if (tableSize > this.#maxTableIndex) {
      newTable.set(this.table.subarray(0, Math.min(this.#maxTableIndex + 1, this.table.length)));
    } else {
      newTable.set(this.table.subarray(0, tableSize));
    }
    if (newRefblockOffset !== 0) newTable[newRefblockIndex] = newRefblockOffset;

    let additional = 0;
    for (let i = areaIndex; i < total; i++) if (newTable[i] === 0) additional++;
    const tableOffset = startOffset + additional * cs;
    const endOffset = tableOffset + tableClusters * cs;

    let blockOffset = startOffset;
    for (let i = areaIndex; i < total; i++) {
      let block: Uint8Array;
      let offset: number;
      if (newTable[i] !== 0) {
        offset = newTable[i]!;
        block = await h.refcountCache.get(offset);
      } else {
        offset = blockOffset;
        block = h.refcountCache.getEmpty(offset);
        h.refcountCache.markDirty(offset, block);
        newTable[i] = offset;
        blockOffset += cs;
      }
      const firstCovered = i * perBlock * cs;
      if (firstCovered < endOffset) {
        let j = firstCovered < startOffset ? (startOffset - firstCovered) / cs : 0;
        const endIndex = Math.min((endOffset - firstCovered) / cs, perBlock);
        for (; j < endIndex; j++) setRefcount(block, j, h.refcountOrder, 1);
        h.refcountCache.markDirty(offset, block);
      }
    }
    await h.refcountCache.flush();

    const bytes = new Uint8Array(tableSize * REFTABLE_ENTRY_SIZE);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < total; i++) view.setBigUint64(i * REFTABLE_ENTRY_SIZE, BigInt(newTable[i]!));
    // Entries beyond `total` are written from memory as qemu does (they are zero or stale-free).
    for (let i = total; i < tableSize; i++) if (newTable[i] !== 0) view.setBigUint64(i * 8, BigInt(newTable[i]!));
    await h.file.write(tableOffset, bytes);
    await h.file.flush();
    await h.writeReftableHeader(tableOffset, tableClusters);

    const oldOffset = this.tableOffset;
    const oldSize = this.table.length;
    if (h.refblockMoved !== undefined) {
      for (let i = 0; i < Math.max(oldSize, tableSize); i++) {
        const from = this.table[i] ?? 0;
        const to = newTable[i] ?? 0;
        if (from !== to) h.refblockMoved(from, to);
      }
    }
    this.table = newTable;
    this.tableOffset = tableOffset;
    this.#updateMaxTableIndex();
    await this.freeClusters(oldOffset, oldSize * REFTABLE_ENTRY_SIZE);
    return endOffset;
  }
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
