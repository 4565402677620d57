/**
 * Creating a qcow2 image byte for byte as qemu-img 7.2 does.
 *
 * qemu writes a minimal image (header, one-cluster refcount table, one empty refcount block),
 * opens it, and then grows it through its normal metadata paths: allocate the first three
 * clusters, rewrite the header with its extensions, grow the L1 table for the size, preallocate
 * (L2 tables and data clusters in allocation order), and set the backing file. The file's final
 * bytes depend on that history — where the allocator puts refcount blocks, that a replaced
 * refcount table is freed but stays on disk, that the file ends right after the L1 table — so
 * this module replays qemu's allocator (qcow2-refcount.c: alloc_clusters_noref, update_refcount,
 * alloc_refcount_block, qcow2_refcount_area; qcow2-cluster.c: l2_allocate, handle_alloc,
 * qcow2_alloc_host_offset; qcow2.c: preallocate_co, qcow2_co_truncate) on an in-memory model,
 * then writes the result. Writes whose order does not change the final bytes are not replayed
 * one by one: each metadata cluster is written once with its final content.
 */
import { fillZeroes, truncateWithPreallocation, TsimgError, UsageError, type BlockDevice } from '@tsimg/raw';
import { encodeExtensions, encodeHeader, QEMU_FEATURE_NAMES, V2_HEADER_LENGTH, V3_HEADER_LENGTH, type HeaderExtension, type Qcow2Header } from '../format/header.js';
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  QCOW_MAX_L1_SIZE,
  QCOW_MAX_REFTABLE_SIZE,
} from '../format/types.js';
import { resolveQcow2CreateOptions, type Qcow2CreateOptions, type ResolvedQcow2CreateOptions } from './create-options.js';

export type { Qcow2CreateOptions, Qcow2Preallocation, ResolvedQcow2CreateOptions } from './create-options.js';
export { resolveQcow2CreateOptions } from './create-options.js';

const INV = -1;
const INT_MAX = 2 ** 31 - 1;
/** BDRV_REQUEST_MAX_BYTES: (INT_MAX >> 9) << 9. */
const REQUEST_MAX_BYTES = Math.floor(INT_MAX / 512) * 512;
/** BDRV_MAX_LENGTH: INT64_MAX aligned down to 1 GiB. */
const MAX_LENGTH = (1n << 63n) - (1n << 30n);
const COPIED = 1n << 63n;
/** Flush finished L2 tables to the device once this many bytes are waiting. */
const L2_FLUSH_BYTES = 64 * 1024 * 1024;

/** What a create needs from the files it writes: a BlockDevice satisfies it. */
export type CreateTarget = Pick<BlockDevice, 'write' | 'resize' | 'size'>;

/** An error with qemu's errno (EFBIG is reworded by qemu-img create). */
function efbig(message: string): TsimgError {
  return new TsimgError('limit', message, { errno: 'EFBIG' });
}

/** Signal from the allocator that the caller must search for free clusters again (-EAGAIN). */
const AGAIN = Symbol('again');
type Again = typeof AGAIN;

/**
 * qcow2_refcount_metadata_size: refcount blocks (and table clusters) needed so every cluster,
 * the refcount structures included, has a refcount.
 */
function refcountMetadataSize(clusters: number, clusterSize: number, refcountOrder: number, generous: boolean) {
  const blocksPerTableCluster = clusterSize / 8;
  const refcountsPerBlock = (clusterSize * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let last: number;
  let n = 0;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / refcountsPerBlock);
    table = Math.ceil(blocks / blocksPerTableCluster);
    n = clusters + blocks + table;
    if (n === last && generous) {
      clusters += Math.ceil(table / 2);
      n = 0;
      generous = false;
    }
  } while (n !== last);
  return { blocks, bytes: (blocks + table) * clusterSize };
}

/** The in-memory model of a qcow2 file being created; see the module comment. */
class Layout {
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

  /** One DataView per refcount block: the allocator reads entries millions of times. */
  readonly #views = new Map<Uint8Array, DataView>();
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
    this.maxRefcount = refcountOrder >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** 2 ** refcountOrder - 1;
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

  viewOf(block: Uint8Array): DataView {
    let v = this.#views.get(block);
    if (!v) {
      v = new DataView(block.buffer, block.byteOffset, block.byteLength);
      this.#views.set(block, v);
    }
    return v;
  }

  getEntry(block: Uint8Array, index: number): number {
    const o = this.order;
    if (o <= 2) {
      const per = 8 >> o;
      const bits = 1 << o;
      return (block[Math.floor(index / per)]! >> ((index % per) * bits)) & ((1 << bits) - 1);
    }
    if (o === 3) return block[index]!;
    const v = this.viewOf(block);
    if (o === 4) return v.getUint16(index * 2);
    if (o === 5) return v.getUint32(index * 4);
    return Number(v.getBigUint64(index * 8));
  }

  setEntry(block: Uint8Array, index: number, value: number): void {
    const o = this.order;
    if (o <= 2) {
      const per = 8 >> o;
      const bits = 1 << o;
      const shift = (index % per) * bits;
      const byte = Math.floor(index / per);
      const mask = ((1 << bits) - 1) << shift;
      block[byte] = (block[byte]! & ~mask) | ((value << shift) & mask);
      return;
    }
    if (o === 3) {
      block[index] = value;
      return;
    }
    const v = this.viewOf(block);
    if (o === 4) v.setUint16(index * 2, value);
    else if (o === 5) v.setUint32(index * 4, value);
    else v.setBigUint64(index * 8, BigInt(value));
  }

  /** qcow2_get_refcount. */
  getRefcount(ci: number): number {
    const ti = Math.floor(ci / this.rbSize);
    if (ti >= this.reftable.length) return 0;
    const off = this.reftable[ti]!;
    if (!off) return 0;
    return this.getEntry(this.refblocks.get(off)!, ci % this.rbSize);
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
      let rc = this.getEntry(block!, bi);
      if (decrease ? rc < 1 : rc + 1 > this.maxRefcount) {
        throw new UsageError('Refcount overflow while creating the image', { errno: 'EINVAL' });
      }
      rc += decrease ? -1 : 1;
      if (rc === 0 && ci < this.freeClusterIndex) this.freeClusterIndex = ci;
      this.setEntry(block!, bi, rc);
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
      this.setEntry(block, (newBlock / cs) % this.rbSize, 1);
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
    const total = refcountMetadataSize(startOffset / cs + additionalClusters, cs, this.order, !exactSize).blocks;
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
        for (; j < endIndex; j++) this.setEntry(block, j, 1);
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

/** What one qcow2_alloc_host_offset call did. */
interface HostAllocation {
  hostOffset: number;
  bytes: number;
  metas: { guest: number; host: number; nbClusters: number }[];
}

/** The creation run: the layout plus the devices it ends up in. */
class Creator {
  readonly o: ResolvedQcow2CreateOptions;
  readonly lay: Layout;
  readonly file: CreateTarget;
  readonly dataFile?: CreateTarget;
  readonly size: number;

  constructor(o: ResolvedQcow2CreateOptions, file: CreateTarget, dataFile: CreateTarget | undefined) {
    this.o = o;
    this.lay = new Layout(o.clusterBits, o.refcountOrder, o.extendedL2);
    this.file = file;
    this.dataFile = dataFile;
    this.size = Number(o.size);
  }

  /** qcow2_alloc_host_offset on a fresh image (no copied clusters, no in-flight requests). */
  allocHostOffset(offset: number, bytes: number): HostAllocation {
    const lay = this.lay;
    const cs = lay.cs;
    let start = offset;
    let remaining = bytes;
    let clusterOffset = INV;
    let hostOffset = INV;
    let cur = 0;
    const metas: HostAllocation['metas'] = [];
    for (;;) {
      if (hostOffset === INV && clusterOffset !== INV) hostOffset = clusterOffset;
      start += cur;
      remaining -= cur;
      if (clusterOffset !== INV) clusterOffset += cur;
      if (remaining === 0) break;
      cur = remaining;
      // handle_copied: only looks up (and so allocates) the L2 table
      lay.l2For(start);
      // handle_alloc
      const into = start % cs;
      let nb = Math.ceil((into + cur) / cs);
      nb = Math.min(nb, lay.l2Size - (Math.floor(start / cs) % lay.l2Size), Math.floor(REQUEST_MAX_BYTES / cs));
      let alloc: number;
      if (this.dataFile) {
        alloc = start - into;
      } else if (clusterOffset === INV) {
        alloc = lay.allocClusters(nb * cs);
      } else {
        alloc = clusterOffset - (clusterOffset % cs);
        nb = lay.allocClustersAt(alloc, nb);
      }
      if (nb === 0) break;
      const nbBytes = Math.min(cur + into, nb * cs);
      clusterOffset = alloc + into;
      cur = Math.min(cur, nbBytes - into);
      metas.push({ guest: start - into, host: alloc, nbClusters: Math.ceil((into + cur) / cs) });
    }
    return { hostOffset, bytes: bytes - remaining, metas };
  }

  /** preallocate_co(0, size): L2 tables and data clusters, then the file length. */
  async preallocateMetadata(mode: 'metadata' | 'falloc' | 'full'): Promise<void> {
    const lay = this.lay;
    let offset = 0;
    let bytes = this.size;
    let last: HostAllocation | undefined;
    while (bytes) {
      const want = Math.min(bytes, Math.floor(INT_MAX / lay.cs) * lay.cs);
      last = this.allocHostOffset(offset, want);
      for (const m of last.metas) lay.link(m.guest, m.host, m.nbClusters);
      bytes -= last.bytes;
      offset += last.bytes;
      await this.drainL2(false);
    }
    if (!last) return;
    // qemu 7.2 extends the file to the end of the last allocated subcluster (measured: a
    // 1001 KiB image with 64 KiB clusters ends on a cluster boundary, its data file at 1 MiB;
    // with extended L2 entries both end on a 2 KiB boundary)
    const sub = this.o.extendedL2 ? lay.cs / 32 : lay.cs;
    const end = Math.ceil((last.hostOffset + last.bytes) / sub) * sub;
    if (this.dataFile) {
      const length = Math.ceil(this.dataFile.size() / 512) * 512;
      if (end > length) await this.truncateData(end, mode);
    } else {
      const length = Math.ceil(lay.fileLength / 512) * 512;
      if (end > length) lay.truncate(end);
    }
  }

  /** The data file's part of qcow2_co_truncate / preallocate_co. */
  async truncateData(length: number, mode: 'off' | 'metadata' | 'falloc' | 'full'): Promise<void> {
    await truncateWithPreallocation(this.dataFile!, BigInt(length), mode === 'metadata' ? 'off' : mode);
  }

  /** The falloc/full branch of qcow2_co_truncate (no data file). */
  async preallocateFull(): Promise<{ start: number; end: number }> {
    const lay = this.lay;
    const cs = lay.cs;
    let oldFileSize = Math.ceil(lay.fileLength / 512) * 512;
    const lastCluster = lay.lastCluster(oldFileSize);
    if ((lastCluster + 1) * cs < oldFileSize) {
      lay.truncate((lastCluster + 1) * cs);
    }
    oldFileSize = Math.ceil(oldFileSize / cs) * cs;
    let nbData = Math.ceil(this.size / cs);
    const nbL2 = Math.ceil(nbData / (cs / lay.l2EntrySize)) + 1;
    const allocationStart = lay.refcountArea(oldFileSize, nbData + nbL2, true, 0, 0);
    lay.allocClustersAt(allocationStart, nbData);
    const newFileSize = allocationStart + nbData * cs;
    lay.fileLength = Math.max(lay.fileLength, newFileSize);
    let host = allocationStart;
    let guest = 0;
    while (nbData) {
      const nb = Math.min(nbData, lay.l2Size - (Math.floor(guest / cs) % lay.l2Size));
      lay.link(guest, host, nb);
      guest += nb * cs;
      host += nb * cs;
      nbData -= nb;
      await this.drainL2(false);
    }
    return { start: allocationStart, end: newFileSize };
  }

  /** Writes finished L2 tables (every table when `all`) once enough have piled up. */
  async drainL2(all: boolean): Promise<void> {
    const lay = this.lay;
    if (!all && lay.finishedL2.length * lay.cs < L2_FLUSH_BYTES) return;
    const offsets = all ? [...lay.l2Tables.keys()] : lay.finishedL2;
    lay.finishedL2.splice(0);
    if (all) lay.l1IndexInProgress = -1;
    offsets.sort((a, b) => a - b);
    await writeRuns(this.file, offsets.map((o) => [o, lay.l2Tables.get(o)!] as const));
    for (const o of offsets) lay.l2Tables.delete(o);
  }

  /** The header cluster qcow2_update_header writes; throws ENOSPC like qemu when it does not fit. */
  headerCluster(withBacking: boolean): Uint8Array {
    const o = this.o;
    const lay = this.lay;
    const cs = lay.cs;
    let incompat = 0n;
    if (o.dataFile !== undefined) incompat |= INCOMPAT_DATA_FILE;
    if (o.compressionType !== 'zlib') incompat |= INCOMPAT_COMPRESSION;
    if (o.extendedL2) incompat |= INCOMPAT_EXTL2;
    const header: Qcow2Header = {
      version: o.version,
      backingFileOffset: 0,
      backingFileSize: 0,
      clusterBits: o.clusterBits,
      size: this.size,
      cryptMethod: 0,
      l1Size: lay.l1.length,
      l1TableOffset: lay.l1Offset,
      refcountTableOffset: lay.reftableOffset,
      refcountTableClusters: (lay.reftable.length * 8) / cs,
      nbSnapshots: 0,
      snapshotsOffset: 0,
      incompatibleFeatures: incompat,
      compatibleFeatures: o.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n,
      autoclearFeatures: o.dataFileRaw ? AUTOCLEAR_DATA_FILE_RAW : 0n,
      refcountOrder: o.refcountOrder,
      headerLength: o.version === 3 ? V3_HEADER_LENGTH : V2_HEADER_LENGTH,
      compressionType: o.compressionType === 'zstd' ? 1 : 0,
    };
    const exts: HeaderExtension[] = [];
    if (withBacking && o.backingFormat !== undefined) exts.push({ kind: 'backing-format', name: o.backingFormat });
    if (o.dataFile !== undefined) exts.push({ kind: 'data-file', name: o.dataFile });
    // qemu omits the feature table for clusters of 4 KiB and less, to leave room for names
    if (o.version === 3 && cs > 4096) exts.push({ kind: 'feature-names', features: [...QEMU_FEATURE_NAMES] });
    const extBytes = encodeExtensions(exts);
    const buf = new Uint8Array(cs);
    const start = header.headerLength;
    const nospc = (): never => {
      throw new TsimgError('limit', 'No space left on device', { errno: 'ENOSPC' });
    };
    if (start + extBytes.length > cs) nospc();
    buf.set(extBytes, start);
    if (withBacking && o.backingFile !== undefined) {
      const name = new TextEncoder().encode(o.backingFile);
      const at = start + extBytes.length;
      if (cs - at < name.length) nospc();
      buf.set(name, at);
      header.backingFileOffset = at;
      header.backingFileSize = name.length;
    }
    encodeHeader(header, new DataView(buf.buffer));
    return buf;
  }

  /** The whole creation (see the module comment). */
  async run(): Promise<void> {
    const lay = this.lay;
    const o = this.o;
    const cs = lay.cs;
    // qcow2_co_create: header cluster, then the refcount table and one empty refcount block
    lay.write(0, new Uint8Array(cs));
    const table = new Uint8Array(cs);
    new DataView(table.buffer).setBigUint64(0, BigInt(2 * cs));
    lay.write(cs, table);
    lay.reftable[0] = 2 * cs;
    lay.refblocks.set(2 * cs, new Uint8Array(cs));
    lay.claim(2 * cs);
    if (lay.allocClusters(3 * cs) !== 0) throw new UsageError('Huh, first cluster in empty image is already in use?');
    // qcow2_update_header with the data file name
    try {
      this.headerCluster(false);
    } catch (err) {
      if (err instanceof TsimgError && err.errno === 'ENOSPC') {
        throw new TsimgError('limit', 'Could not update qcow2 header: No space left on device', { errno: 'ENOSPC' });
      }
      throw err;
    }
    // blk_truncate(size, preallocation)
    if (o.size >= 1n << 63n) throw new UsageError('Could not resize image: Image size cannot be negative', { errno: 'EINVAL' });
    if (o.size > MAX_LENGTH) {
      throw new TsimgError('io', `Could not resize image: offset(${o.size}) exceeds maximum(${MAX_LENGTH})`, { errno: 'EIO' });
    }
    const l2Coverage = 2 ** (o.clusterBits + o.clusterBits - (o.extendedL2 ? 4 : 3));
    const l1Size = Number((o.size + BigInt(l2Coverage) - 1n) / BigInt(l2Coverage));
    lay.growL1(l1Size);
    let zeroFill: { start: number; end: number } | undefined;
    const mode = o.preallocation;
    if (mode === 'off') {
      if (this.dataFile) await this.truncateData(this.size, 'off');
    } else if (mode === 'metadata' || this.dataFile) {
      await this.preallocateMetadata(mode);
    } else {
      zeroFill = await this.preallocateFull();
    }
    // bdrv_change_backing_file
    let header: Uint8Array;
    try {
      if (o.backingFile !== undefined && new TextEncoder().encode(o.backingFile).length > 1023) {
        throw new TsimgError('usage', 'Invalid argument', { errno: 'EINVAL' });
      }
      header = this.headerCluster(true);
    } catch (err) {
      if (err instanceof TsimgError && (err.errno === 'ENOSPC' || err.errno === 'EINVAL')) {
        throw new TsimgError(
          'limit',
          `Could not assign backing file '${o.backingFile}' with format '${o.backingFormat}': ${err.message}`,
          { errno: err.errno },
        );
      }
      throw err;
    }
    lay.write(0, header);
    // the L1 table with its final entries
    if (lay.l1.length) {
      const l1 = new Uint8Array(lay.l1.length * 8);
      const v = new DataView(l1.buffer);
      lay.l1.forEach((e, i) => e && v.setBigUint64(i * 8, BigInt(e) | COPIED));
      lay.write(lay.l1Offset, l1);
    }
    await this.flush(zeroFill);
  }

  /** Writes everything the model holds, then sets the final file length. */
  async flush(zeroFill: { start: number; end: number } | undefined): Promise<void> {
    const lay = this.lay;
    if (zeroFill) {
      await fillZeroes(this.file, zeroFill.start, zeroFill.end);
    }
    await this.drainL2(true);
    // only what qemu wrote: a cluster holding a 16-byte L1 table stays a hole after it
    const pieces: (readonly [number, Uint8Array])[] = [];
    for (const [ci, bytes] of lay.overlay) {
      const [lo, hi] = lay.extents.get(ci)!;
      if (hi > lo) pieces.push([ci * lay.cs + lo, bytes.subarray(lo, hi)]);
    }
    for (const [off, bytes] of lay.refblocks) pieces.push([off, bytes]);
    pieces.sort((a, b) => a[0] - b[0]);
    await writeRuns(this.file, pieces);
    if (this.file.size() !== lay.fileLength) await this.file.resize(lay.fileLength);
  }
}

/** Writes pieces (offset, bytes) sorted by offset, merging adjacent ones into large writes. */
async function writeRuns(dev: CreateTarget, pieces: readonly (readonly [number, Uint8Array])[]): Promise<void> {
  const MAX_RUN = 16 * 1024 * 1024;
  let i = 0;
  while (i < pieces.length) {
    const start = pieces[i]![0];
    let end = start + pieces[i]![1].length;
    let j = i + 1;
    while (j < pieces.length && pieces[j]![0] === end && end - start < MAX_RUN) end += pieces[j++]![1].length;
    if (j === i + 1) {
      await dev.write(start, pieces[i]![1]);
    } else {
      const buf = new Uint8Array(end - start);
      for (let k = i; k < j; k++) buf.set(pieces[k]![1], pieces[k]![0] - start);
      await dev.write(start, buf);
    }
    i = j;
  }
}

/**
 * Creates a qcow2 image in `file` (an empty, writable device), byte-identical to
 * `qemu-img create -f qcow2` with the same options. `dataFile` is the external data file's
 * device (required when `options.dataFile` is set). Throws with qemu's messages; errors with
 * errno `EFBIG` mean the size is too large for the cluster size.
 */
export async function createQcow2(file: CreateTarget, options: Qcow2CreateOptions, dataFile?: CreateTarget): Promise<void> {
  const o = resolveQcow2CreateOptions(options);
  if (o.dataFile !== undefined && !dataFile) throw new UsageError('data-file needs a device for the external data file');
  await new Creator(o, file, o.dataFile !== undefined ? dataFile : undefined).run();
}
