/**
 * The in-memory model of a qcow2 file while `create` builds it: the file's metadata bytes, the
 * refcount table and blocks, the L1 table and the L2 tables, and qemu's allocator replayed on them
 * (qcow2-refcount.c: alloc_clusters_noref, update_refcount, alloc_refcount_block,
 * qcow2_refcount_area; qcow2-cluster.c: l2_allocate).
 *
 * Why a second copy of the allocator next to engine/allocator.ts (`Allocator`): the logic is the
 * same qemu code, step for step, but this replay is synchronous and keeps every table in memory,
 * with no cache, no device I/O and no flush ordering. Preallocating a large image allocates
 * millions of clusters, and going through the engine's asynchronous, cache-backed allocator
 * for each one would make `create -o preallocation=metadata` many times slower. The two are held
 * to the same offsets by a property test (test/create-layout.test.ts): the same allocation
 * sequence gives the same host offsets, refcount table offset and table size.
 */
import { INT_MAX, TsimgError, UsageError, LimitError } from '@tsimg/raw';
import { getRefcount, refcountMax, refcountMetadataSize, setRefcount } from '../format/refcount.js';
import { QCOW_MAX_L1_SIZE, QCOW_MAX_REFTABLE_SIZE } from '../format/types.js';

/** OFLAG_COPIED: set in the L1 and L2 entries of a fresh image (every refcount is 1). */
export const COPIED = 1n << 63n;

/** An error with qemu's errno (EFBIG is reworded by qemu-img create). */
export function efbig(message: string): TsimgError {
  return new LimitError(message, { errno: 'EFBIG' });
}

/** Signal from the allocator that the caller must search for free clusters again (-EAGAIN). */
const AGAIN = Symbol('again');
type Again = typeof AGAIN;

/** The in-memory model of a qcow2 file being created; see the module comment. */
export class Layout {
  readonly cs: number;
  readonly cb: number;
  readonly order: number;
  /** Refcount entries per refcount block. */
  readonly rbSize: number;
  readonly l2EntrySize: number;
  /** Entries per L2 table (= per slice: qemu's default slice is the whole table). */
  readonly l2Size: number;
  readonly maxRefcount: number;

  reftable: number[];
  reftableOffset: number;
  maxReftableIndex = 0;
  readonly refblocks = new Map<number, Uint8Array>();
  freeClusterIndex = 0;

  l1: number[] = [];
  l1Offset = 0;
  readonly l2Tables = new Map<number, Uint8Array>();
  /** L2 tables that are complete and may be written out. */
  readonly finishedL2: number[] = [];
  l1IndexInProgress = -1;

  /** Other metadata bytes (refcount tables, freed and live), by cluster index. */
  readonly overlay = new Map<number, Uint8Array>();
  /** The part of each overlay cluster that was written ([start, end) within the cluster). */
  readonly extents = new Map<number, [number, number]>();
  fileLength = 0;

  constructor(clusterBits: number, refcountOrder: number, extendedL2: boolean) {
    this.cb = clusterBits;
    this.cs = 2 ** clusterBits;
    this.order = refcountOrder;
    this.rbSize = (this.cs * 8) / 2 ** refcountOrder;
    this.l2EntrySize = extendedL2 ? 16 : 8;
    this.l2Size = this.cs / this.l2EntrySize;
    this.maxRefcount = refcountMax(refcountOrder);
    this.reftable = new Array<number>(this.cs / 8).fill(0);
    this.reftableOffset = this.cs;
  }

  // ---- file bytes ----

  /** A write to the file that is not an L2 table or refcount block. */
  write(offset: number, data: Uint8Array): void {
    let pos = 0;
    while (pos < data.length) {
      const abs = offset + pos;
      const ci = Math.floor(abs / this.cs);
      const within = abs - ci * this.cs;
      const n = Math.min(this.cs - within, data.length - pos);
      let cluster = this.overlay.get(ci);
      if (!cluster) {
        cluster = new Uint8Array(this.cs);
        this.overlay.set(ci, cluster);
        this.extents.set(ci, [within, within + n]);
      }
      const ext = this.extents.get(ci)!;
      ext[0] = Math.min(ext[0], within);
      ext[1] = Math.max(ext[1], within + n);
      cluster.set(data.subarray(pos, pos + n), within);
      pos += n;
    }
    this.fileLength = Math.max(this.fileLength, offset + data.length);
  }

  /** A whole cluster now belongs to a table that will be written over it. */
  claim(offset: number): void {
    this.overlay.delete(offset / this.cs);
    this.extents.delete(offset / this.cs);
    this.fileLength = Math.max(this.fileLength, offset + this.cs);
  }

  /** ftruncate of the image file: shrinking drops what lay beyond. */
  truncate(length: number): void {
    if (length < this.fileLength) {
      for (const ci of [...this.overlay.keys()]) {
        if (ci * this.cs >= length) {
          this.overlay.delete(ci);
          this.extents.delete(ci);
        } else if ((ci + 1) * this.cs > length) {
          const ext = this.extents.get(ci)!;
          ext[1] = Math.min(ext[1], length - ci * this.cs);
        }
      }
    }
    this.fileLength = length;
  }

  // ---- refcounts ----

  /** qcow2_get_refcount. */
  getRefcount(ci: number): number {
    const ti = Math.floor(ci / this.rbSize);
    if (ti >= this.reftable.length) return 0;
    const off = this.reftable[ti]!;
    if (!off) return 0;
    return getRefcount(this.refblocks.get(off)!, ci % this.rbSize, this.order);
  }

  updateMaxReftableIndex(): void {
    let i = this.reftable.length - 1;
    while (i > 0 && !this.reftable[i]) i--;
    this.maxReftableIndex = i;
  }

  /** update_refcount (addend 1): increases, or decreases when `decrease`. */
  updateRefcount(offset: number, length: number, decrease: boolean): Again | undefined {
    if (length === 0) return undefined;
    const cs = this.cs;
    const start = Math.floor(offset / cs) * cs;
    const last = Math.floor((offset + length - 1) / cs) * cs;
    let oldTableIndex = -1;
    let block: Uint8Array | undefined;
    for (let co = start; co <= last; co += cs) {
      const ci = co / cs;
      const ti = Math.floor(ci / this.rbSize);
      if (ti !== oldTableIndex) {
        const r = this.allocRefcountBlock(ci);
        if (r === AGAIN) {
          if (this.freeClusterIndex > start / cs) this.freeClusterIndex = start / cs;
          // qemu undoes what it changed before failing
          if (co - offset > 0) this.updateRefcount(offset, co - offset, !decrease);
          return AGAIN;
        }
        block = r;
      }
      oldTableIndex = ti;
      const bi = ci % this.rbSize;
      let rc = getRefcount(block!, bi, this.order);
      if (decrease ? rc < 1 : rc + 1 > this.maxRefcount) {
        throw new UsageError('Refcount overflow while creating the image', { errno: 'EINVAL' });
      }
      rc += decrease ? -1 : 1;
      if (rc === 0 && ci < this.freeClusterIndex) this.freeClusterIndex = ci;
      setRefcount(block!, bi, this.order, rc);
    }
    return undefined;
  }

  /** alloc_refcount_block: the block covering `ci`, or AGAIN after allocating one. */
  allocRefcountBlock(ci: number): Uint8Array | Again {
    const cs = this.cs;
    const ti = Math.floor(ci / this.rbSize);
    if (ti < this.reftable.length && this.reftable[ti]) return this.refblocks.get(this.reftable[ti]!)!;

    const newBlock = this.allocClustersNoref(cs);
    const block = new Uint8Array(cs);
    if (Math.floor(newBlock / cs / this.rbSize) === Math.floor(ci / this.rbSize)) {
      // the block describes itself
      setRefcount(block, (newBlock / cs) % this.rbSize, this.order, 1);
    } else {
      if (this.updateRefcount(newBlock, cs, false) === AGAIN) return AGAIN;
    }
    this.refblocks.set(newBlock, block);
    this.claim(newBlock);

    if (ti < this.reftable.length) {
      const entry = new Uint8Array(8);
      new DataView(entry.buffer).setBigUint64(0, BigInt(newBlock));
      this.write(this.reftableOffset + ti * 8, entry);
      this.reftable[ti] = newBlock;
      this.maxReftableIndex = Math.max(this.maxReftableIndex, ti);
      return AGAIN;
    }

    const blocksUsed = Math.ceil(Math.max(ci + 1, newBlock / cs + 1) / this.rbSize);
    const metaOffset = blocksUsed * this.rbSize * cs;
    this.refcountArea(metaOffset, 0, false, ti, newBlock);
    return AGAIN;
  }

  /**
   * qcow2_refcount_area: new refcount blocks from `startOffset` (for whatever the table does not
   * cover yet), then a new refcount table after them; the old table is freed. Returns the end.
   */
  refcountArea(startOffset: number, additionalClusters: number, exactSize: boolean, newIndex: number, newOffset: number): number {
    const cs = this.cs;
    const total = refcountMetadataSize(startOffset / cs + additionalClusters, cs, this.order, !exactSize).refblockCount;
    if (total > QCOW_MAX_REFTABLE_SIZE) throw efbig('Could not resize image: Failed to grow the refcount table: File too large');
    const areaIndex = Math.floor(startOffset / cs / this.rbSize);
    let tableSize = exactSize ? total : total + Math.ceil(total / 2);
    tableSize = Math.ceil(tableSize / (cs / 8)) * (cs / 8);
    const tableClusters = (tableSize * 8) / cs;
    if (tableSize > QCOW_MAX_REFTABLE_SIZE) throw efbig('Could not resize image: Failed to grow the refcount table: File too large');
    const table = new Array<number>(tableSize).fill(0);
    const keep = tableSize > this.maxReftableIndex ? this.maxReftableIndex + 1 : tableSize;
    for (let i = 0; i < keep && i < this.reftable.length; i++) table[i] = this.reftable[i]!;
    if (newOffset) table[newIndex] = newOffset;
    let additional = 0;
    for (let i = areaIndex; i < total; i++) if (!table[i]) additional++;
    const tableOffset = startOffset + additional * cs;
    const endOffset = tableOffset + tableClusters * cs;
    let blockOffset = startOffset;
    for (let i = areaIndex; i < total; i++) {
      let block: Uint8Array;
      if (table[i]) {
        block = this.refblocks.get(table[i]!)!;
      } else {
        block = new Uint8Array(cs);
        this.refblocks.set(blockOffset, block);
        this.claim(blockOffset);
        table[i] = blockOffset;
        blockOffset += cs;
      }
      const firstCovered = i * this.rbSize * cs;
      if (firstCovered < endOffset) {
        let j = firstCovered < startOffset ? (startOffset - firstCovered) / cs : 0;
        const endIndex = Math.min((endOffset - firstCovered) / cs, this.rbSize);
        for (; j < endIndex; j++) setRefcount(block, j, this.order, 1);
      }
    }
    const bytes = new Uint8Array(tableSize * 8);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < total; i++) view.setBigUint64(i * 8, BigInt(table[i]!));
    this.write(tableOffset, bytes);

    const oldOffset = this.reftableOffset;
    const oldSize = this.reftable.length;
    this.reftable = table;
    this.reftableOffset = tableOffset;
    this.updateMaxReftableIndex();
    this.updateRefcount(oldOffset, oldSize * 8, true);
    return endOffset;
  }

  /** alloc_clusters_noref: the first run of free clusters from free_cluster_index. */
  allocClustersNoref(size: number): number {
    const n = Math.ceil(size / this.cs);
    for (let i = 0; i < n; i++) {
      const idx = this.freeClusterIndex++;
      if (this.getRefcount(idx) !== 0) i = -1;
    }
    return (this.freeClusterIndex - n) * this.cs;
  }

  /** qcow2_alloc_clusters. */
  allocClusters(size: number): number {
    for (;;) {
      const offset = this.allocClustersNoref(size);
      if (this.updateRefcount(offset, size, false) !== AGAIN) return offset;
    }
  }

  /** qcow2_alloc_clusters_at: how many of `n` clusters at `offset` could be taken. */
  allocClustersAt(offset: number, n: number): number {
    if (n === 0) return 0;
    for (;;) {
      let i = 0;
      let ci = offset / this.cs;
      for (; i < n; i++) if (this.getRefcount(ci++) !== 0) break;
      if (this.updateRefcount(offset, i * this.cs, false) !== AGAIN) return i;
    }
  }

  /** qcow2_get_last_cluster. */
  lastCluster(size: number): number {
    for (let i = Math.ceil(size / this.cs) - 1; i >= 0; i--) if (this.getRefcount(i) > 0) return i;
    throw new UsageError('Image is corrupt: no cluster in use', { errno: 'EIO' });
  }

  // ---- L1 / L2 ----

  /** qcow2_grow_l1_table(exact) for a fresh image. */
  growL1(size: number): void {
    if (size <= this.l1.length) return;
    if (size > Math.floor(INT_MAX / 8) || size > QCOW_MAX_L1_SIZE / 8) {
      throw efbig('Could not resize image: Failed to grow the L1 table: File too large');
    }
    this.l1Offset = this.allocClusters(size * 8);
    this.l1 = new Array<number>(size).fill(0);
    this.write(this.l1Offset, new Uint8Array(size * 8));
  }

  /** get_cluster_table: the L2 table for `guest`, allocated (l2_allocate) if missing. */
  l2For(guest: number): Uint8Array {
    const l1Index = Math.floor(guest / (this.l2Size * this.cs));
    let off = this.l1[l1Index]!;
    if (!off) {
      off = this.allocClusters(this.cs);
      this.l2Tables.set(off, new Uint8Array(this.cs));
      this.claim(off);
      this.l1[l1Index] = off;
    }
    return this.l2Tables.get(off)!;
  }

  /** qcow2_alloc_cluster_link_l2 for preallocated clusters: entries `host | COPIED`. */
  link(guest: number, host: number, nbClusters: number): void {
    const table = this.l2For(guest);
    const l1Index = Math.floor(guest / (this.l2Size * this.cs));
    if (l1Index !== this.l1IndexInProgress) {
      // preallocation links guest offsets upwards: the previous table is complete
      if (this.l1IndexInProgress >= 0) this.finishedL2.push(this.l1[this.l1IndexInProgress]!);
      this.l1IndexInProgress = l1Index;
    }
    const view = new DataView(table.buffer);
    let index = Math.floor(guest / this.cs) % this.l2Size;
    for (let i = 0; i < nbClusters; i++, index++) {
      view.setBigUint64(index * this.l2EntrySize, BigInt(host + i * this.cs) | COPIED);
    }
  }
}
