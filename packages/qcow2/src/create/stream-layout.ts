/**
 * A qcow2 file laid out to be written strictly forward, for a target that cannot seek (a pipe,
 * standard output): every metadata structure first, computed from the list of guest clusters
 * that will hold data, then the data clusters in guest order.
 *
 *     header | L1 table | refcount table | refcount blocks | L2 tables | data clusters
 *
 * Compressed clusters (their lengths known in advance) are packed byte by byte as qemu packs
 * them (qcow2_alloc_bytes), a host cluster shared by as many of them as its refcount can count;
 * an uncompressed cluster starts on a cluster boundary. Every cluster up to the end of the file
 * is in use, so `qemu-img check` finds no leak. The header is qcow2_update_header's
 * (header-cluster.ts) and the refcount metadata size the one fixed point of refcount.ts.
 */
import { UsageError } from '@tsimg/raw';
import { compressedEntry, encodeL1Entry, encodeL2Entry, l2EntrySize, type EntryContext, type L2Entry } from '../format/l2-entry.js';
import { encodeReftableEntry, refcountMax, refcountMetadataSize, refcountsPerBlock, setRefcount } from '../format/refcount.js';
import { resolveQcow2CreateOptions, type Qcow2CreateOptions } from './create-options.js';
import { headerCluster } from './header-cluster.js';

/** One guest cluster that holds data; `compressedLength` when it is stored compressed. */
export interface StreamCluster {
  /** The guest cluster index (guest offset / cluster size), ascending and distinct. */
  index: number;
  compressedLength?: number;
}

/** Where everything of a forward-written qcow2 file goes. */
export interface Qcow2StreamLayout {
  readonly clusterSize: number;
  /** The file's bytes before the first data cluster: header and every table. */
  readonly metadata: Uint8Array;
  /** The host offset of each cluster of the list, in its order. */
  readonly hostOffsets: readonly number[];
  /** The length of the whole file (a multiple of the cluster size). */
  readonly fileLength: number;
}

/**
 * Lays out a qcow2 file (options as `createQcow2` takes them) whose data clusters are
 * `clusters`; see the module comment. A backing file, an external data file and preallocation
 * need seeks or a second file and are refused.
 */
export function planQcow2Stream(options: Qcow2CreateOptions, clusters: readonly StreamCluster[]): Qcow2StreamLayout {
  const o = resolveQcow2CreateOptions(options);
  if (o.backingFile !== undefined) throw new UsageError('A backing file is not supported when writing a stream');
  if (o.dataFile !== undefined) throw new UsageError('An external data file is not supported when writing a stream');
  if (o.preallocation !== 'off') throw new UsageError('Preallocation is not supported when writing a stream');
  const cs = 2 ** o.clusterBits;
  const ctx: EntryContext = { clusterBits: o.clusterBits, extendedL2: o.extendedL2, dataFile: false };
  const entrySize = l2EntrySize(o.extendedL2);
  const l2Entries = cs / entrySize;
  const size = Number(o.size);
  const l1Size = Math.ceil(size / (l2Entries * cs));
  const l1Clusters = Math.ceil((l1Size * 8) / cs);

  // The data area, relative to its (cluster-aligned) start, and each host cluster's refcount.
  const maxRefcount = refcountMax(o.refcountOrder);
  const relOffsets: number[] = [];
  const dataRefcounts: number[] = [];
  const l2Tables: number[] = []; // L1 indices with a table, ascending
  let pos = 0;
  let last = -1;
  for (const c of clusters) {
    if (!Number.isInteger(c.index) || c.index <= last || c.index * cs >= size) {
      throw new UsageError(`Stream clusters must be distinct, ascending and inside the image (cluster ${c.index})`);
    }
    last = c.index;
    const l1Index = Math.floor(c.index / l2Entries);
    if (l2Tables[l2Tables.length - 1] !== l1Index) l2Tables.push(l1Index);
    const len = c.compressedLength;
    if (len === undefined) {
      pos = Math.ceil(pos / cs) * cs;
      relOffsets.push(pos);
      dataRefcounts[pos / cs] = 1;
      pos += cs;
      continue;
    }
    if (!Number.isInteger(len) || len < 1 || len >= cs) throw new UsageError(`Invalid compressed length ${len}`);
    if (pos % cs !== 0 && (dataRefcounts[Math.floor(pos / cs)] ?? 0) >= maxRefcount) pos = Math.ceil(pos / cs) * cs;
    relOffsets.push(pos);
    for (let h = Math.floor(pos / cs); h <= Math.floor((pos + len - 1) / cs); h++) dataRefcounts[h] = (dataRefcounts[h] ?? 0) + 1;
    pos += len;
  }
  const dataClusters = Math.ceil(pos / cs);

  const other = 1 + l1Clusters + l2Tables.length + dataClusters;
  const rc = refcountMetadataSize(other, cs, o.refcountOrder, false);
  const reftableClusters = rc.bytes / cs - rc.refblockCount;
  const l1Offset = cs;
  const reftableOffset = l1Offset + l1Clusters * cs;
  const refblocksOffset = reftableOffset + reftableClusters * cs;
  const l2Start = refblocksOffset + rc.refblockCount * cs;
  const dataStart = l2Start + l2Tables.length * cs;
  const metadataClusters = dataStart / cs;

  const metadata = new Uint8Array(dataStart);
  const view = new DataView(metadata.buffer);
  const l1 = new Array<number>(l1Size).fill(0);
  l2Tables.forEach((l1Index, i) => (l1[l1Index] = l2Start + i * cs));
  const reftable = new Array<number>((reftableClusters * cs) / 8).fill(0);
  metadata.set(headerCluster(o, { cs, l1, l1Offset, reftable, reftableOffset }, true), 0);
  l1.forEach((l2Offset, i) => encodeL1Entry({ l2Offset, copied: true }, view, l1Offset + i * 8));

  const hostOffsets = relOffsets.map((r) => dataStart + r);
  let table = 0;
  clusters.forEach((c, i) => {
    while (l2Tables[table] !== Math.floor(c.index / l2Entries)) table++;
    const at = l2Start + table * cs + (c.index % l2Entries) * entrySize;
    const host = hostOffsets[i]!;
    let entry: L2Entry;
    if (c.compressedLength !== undefined) entry = compressedEntry(host, c.compressedLength);
    else if (o.extendedL2) entry = { kind: 'extended', hostOffset: host, copied: true, alloc: 0xffff_ffff, zero: 0 };
    else entry = { kind: 'data', hostOffset: host, copied: true };
    encodeL2Entry(entry, view, at, ctx);
  });

  const perBlock = refcountsPerBlock(o.clusterBits, o.refcountOrder);
  for (let b = 0; b < rc.refblockCount; b++) encodeReftableEntry(view, reftableOffset / 8 + b, refblocksOffset + b * cs);
  const totalClusters = metadataClusters + dataClusters;
  for (let h = 0; h < totalClusters; h++) {
    const count = h < metadataClusters ? 1 : (dataRefcounts[h - metadataClusters] ?? 0);
    if (count === 0) continue;
    const block = metadata.subarray(refblocksOffset + Math.floor(h / perBlock) * cs, refblocksOffset + (Math.floor(h / perBlock) + 1) * cs);
    setRefcount(block, h % perBlock, o.refcountOrder, count);
  }
  return { clusterSize: cs, metadata, hostOffsets, fileLength: totalClusters * cs };
}
