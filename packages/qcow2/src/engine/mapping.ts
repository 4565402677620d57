/**
 * Guest-to-host mapping: the geometry of the L1/L2 tables and the lookup of what a guest range
 * maps to, as runs of one kind (data contiguous on the host, zero, unallocated, or one
 * compressed cluster), never crossing an L2 table except where whole L2 tables are missing.
 */
import {
  decodeL1Entry,
  decodeL2Entry,
  l2EntrySize,
  plainRunLength,
  subclusterKind,
  SUBCLUSTERS_PER_CLUSTER,
  type EntryContext,
  type L2Entry,
} from '../format/l2-entry.js';

/** Sizes derived from the header that every mapping computation uses. */
export interface Geometry extends EntryContext {
  clusterSize: number;
  /** Entries per L2 table. */
  l2Entries: number;
  /** Guest bytes one L2 table maps. */
  l2Span: number;
  /** Bytes per L2 entry (8 or 16). */
  entrySize: number;
  /** Subcluster size (= clusterSize without extended L2). */
  subclusterSize: number;
  /** Subclusters per cluster (1 without extended L2). */
  subclusters: number;
}

/** Geometry of an image with `clusterBits` and the given L2 entry width. */
export function geometry(clusterBits: number, extendedL2: boolean, dataFile: boolean): Geometry {
  const clusterSize = 2 ** clusterBits;
  const entrySize = l2EntrySize(extendedL2);
  const l2Entries = clusterSize / entrySize;
  const subclusters = extendedL2 ? SUBCLUSTERS_PER_CLUSTER : 1;
  return {
    clusterBits,
    extendedL2,
    dataFile,
    clusterSize,
    l2Entries,
    l2Span: l2Entries * clusterSize,
    entrySize,
    subclusterSize: clusterSize / subclusters,
    subclusters,
  };
}

/** One run of guest bytes with a single kind, as the image itself stores it. */
export type MappedRun =
  | { kind: 'data'; length: number; hostOffset: number }
  | { kind: 'zero'; length: number; hostOffset?: number }
  /** `hostOffset`: the host cluster an extended L2 entry keeps under unallocated subclusters. */
  | { kind: 'unallocated'; length: number; hostOffset?: number }
  | { kind: 'compressed'; length: number; entry: Extract<L2Entry, { kind: 'compressed' }>; clusterOffset: number };

/** Where the mapping reads its tables from. */
export interface MappingSource {
  readonly geo: Geometry;
  readonly version: number;
  /** Number of active L1 entries. */
  readonly l1Size: number;
  /** The raw active L1 table. */
  readonly l1: DataView;
  /** Loads an L2 table (through the cache). */
  l2Table(offset: number): Promise<Uint8Array>;
  /** Reports a corruption (marks the image corrupt when writable) and throws. */
  corrupt(message: string): Promise<never>;
}

/** printf's `%#x`, as qemu's corruption messages format numbers: no `0x` for zero. */
export function hashHex(n: number): string {
  return n === 0 ? '0' : `0x${n.toString(16)}`;
}

/** L2 table offset for guest `offset` (0 when unallocated or beyond the L1 table). */
export async function l2OffsetFor(src: MappingSource, offset: number): Promise<number> {
  const l1Index = Math.floor(offset / src.geo.l2Span);
  if (l1Index >= src.l1Size) return 0;
  const e = decodeL1Entry(src.l1, l1Index * 8);
  // No limit on the offset itself (qemu has none): a table past the end of the file reads as
  // zeroes, as file-posix reads there (the table loader in image.ts).
  if (e.l2Offset % src.geo.clusterSize !== 0) {
    await src.corrupt(`L2 table offset ${hashHex(e.l2Offset)} unaligned (L1 index: ${hashHex(l1Index)})`);
  }
  return e.l2Offset;
}

type Kind = 'data' | 'zero' | 'unallocated' | 'compressed';

/**
 * Cluster-aligned host offsets are exact numbers up to 2^56 (multiples of 512 need at most 47
 * significant bits), so data clusters anywhere qemu allows map like qemu's; reading one past
 * the end of its file gives zeroes (read.ts), as file-posix does. A compressed cluster's offset
 * is a byte offset: past 2^53 - 4 MiB it has no exact number and is treated as corrupt.
 */
const MAX_COMPRESSED_OFFSET = Number.MAX_SAFE_INTEGER - 4 * 1024 * 1024;
/** qemu's bound on any host offset of an L2 entry (L2E_OFFSET_MASK). */
const MAX_HOST_OFFSET = 2 ** 56;

/** How many subclusters from `sc` on (within the cluster) have the kind of subcluster `sc`. */
function sameKindRun(entry: L2Entry, sc: number, subclusters: number): number {
  if (entry.kind !== 'extended') return subclusters - sc;
  const alloc = entry.alloc >>> 0;
  const zero = entry.zero >>> 0;
  let mask: number;
  switch (subclusterKind(entry, sc)) {
    case 'zero':
      mask = zero;
      break;
    case 'data':
      mask = alloc & ~zero;
      break;
    case 'unallocated':
      mask = ~alloc & ~zero;
      break;
    default:
      return 1;
  }
  // Count the ones of `mask` from bit `sc` upwards.
  const rest = ~(mask >>> sc) >>> 0;
  const ones = rest === 0 ? 32 : 31 - Math.clz32(rest & -rest);
  return Math.max(1, Math.min(ones, subclusters - sc));
}

/** Kind and host byte offset of the subcluster at `inCluster` bytes into a cluster. */
function classify(
  src: MappingSource,
  entry: L2Entry,
  inCluster: number,
): { kind: Kind; host?: number } {
  const geo = src.geo;
  const sc = Math.floor(inCluster / geo.subclusterSize);
  const k = subclusterKind(entry, sc);
  switch (k) {
    case 'invalid':
      return { kind: 'data', host: -1 };
    case 'data':
      return { kind: 'data', host: (entry as { hostOffset: number }).hostOffset + inCluster };
    case 'zero': {
      const host = entry.kind === 'zero' ? entry.hostOffset : entry.kind === 'extended' ? entry.hostOffset : undefined;
      return { kind: 'zero', host: host !== undefined && host !== 0 ? host + inCluster : undefined };
    }
    case 'unallocated': {
      // Extended L2 may keep a host cluster under unallocated subclusters (qemu's
      // UNALLOCATED_ALLOC): its offset is checked and bounds the run as a data cluster's does.
      const host = entry.kind === 'extended' ? entry.hostOffset : undefined;
      return { kind: 'unallocated', host: host !== undefined && host !== 0 ? host + inCluster : undefined };
    }
    default:
      return { kind: k };
  }
}

/**
 * The first run of `[offset, offset+length)` (length > 0, within the image), stopping at the
 * end of the L2 table that maps `offset` — unless that table is missing, when the unallocated
 * run goes on over every following missing table.
 */
export async function lookupRun(src: MappingSource, offset: number, length: number): Promise<MappedRun> {
  const geo = src.geo;
  const tableEnd = (Math.floor(offset / geo.l2Span) + 1) * geo.l2Span;
  const maxLen = Math.min(length, tableEnd - offset);
  const l2Offset = await l2OffsetFor(src, offset);
  if (l2Offset === 0) {
    // Whole L2 tables missing: one run over every following empty L1 entry.
    let end = tableEnd;
    while (end < offset + length) {
      const i = end / geo.l2Span;
      if (i < src.l1Size && decodeL1Entry(src.l1, i * 8).l2Offset !== 0) break;
      end += geo.l2Span;
      if (i >= src.l1Size) end = offset + length;
    }
    return { kind: 'unallocated', length: Math.min(length, end - offset) };
  }
  const table = await src.l2Table(l2Offset);
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  let index = Math.floor((offset % geo.l2Span) / geo.clusterSize);
  let inCluster = offset % geo.clusterSize;
  let entry = decodeL2Entry(view, index * geo.entrySize, geo);
  const first = classify(src, entry, inCluster);
  const bad = problem(src, first, entry, l2Offset, index);
  if (bad !== undefined) await src.corrupt(bad);
  if (first.kind === 'compressed') {
    const c = entry as Extract<L2Entry, { kind: 'compressed' }>;
    return {
      kind: 'compressed',
      length: Math.min(maxLen, geo.clusterSize - inCluster),
      entry: c,
      clusterOffset: offset - inCluster,
    };
  }
  // Extend over following subclusters / clusters of the same kind (data: contiguous on host).
  let len = 0;
  let pos = offset;
  let expectHost = first.host;
  const end = offset + maxLen;
  while (pos < end) {
    const c = classify(src, entry, inCluster);
    if (c.kind !== first.kind) break;
    // As count_contiguous_subclusters: a run keeps one type (a cluster with a host offset is
    // not of the type of one without) and, where there is a host offset, contiguous clusters.
    if (first.kind === 'data' || first.host !== undefined) {
      if (c.host !== expectHost) break;
    } else if (c.host !== undefined) break;
    const wrong = problem(src, c, entry, l2Offset, index);
    if (wrong !== undefined) await src.corrupt(wrong);
    // Step over every following subcluster of the same kind in this cluster at once.
    const sc = Math.floor(inCluster / geo.subclusterSize);
    const same = sameKindRun(entry, sc, geo.subclusters);
    const step = Math.min(end - pos, (sc + same) * geo.subclusterSize - inCluster);
    len += step;
    pos += step;
    if (expectHost !== undefined) expectHost += step;
    inCluster += step;
    if (inCluster === geo.clusterSize && pos < end) {
      index++;
      inCluster = 0;
      if (!geo.extendedL2) {
        // Whole clusters that plainly continue the run (the common case) are counted from the
        // raw words; the first one that does not is decoded and checked below.
        const zeroOk = first.kind !== 'zero' || src.version >= 3;
        const whole = zeroOk ? Math.floor((end - pos) / geo.clusterSize) : 0;
        const run = plainRunLength(view, index, whole, first.kind as 'data' | 'zero' | 'unallocated', expectHost, {
          clusterSize: geo.clusterSize,
          dataFile: geo.dataFile,
          maxHost: MAX_HOST_OFFSET,
        });
        const bytes = run * geo.clusterSize;
        len += bytes;
        pos += bytes;
        if (expectHost !== undefined) expectHost += bytes;
        index += run;
        if (pos >= end) break;
      }
      entry = decodeL2Entry(view, index * geo.entrySize, geo);
    }
  }
  if (first.kind === 'data') return { kind: 'data', length: len, hostOffset: first.host! };
  if (first.kind === 'zero') {
    return first.host !== undefined ? { kind: 'zero', length: len, hostOffset: first.host } : { kind: 'zero', length: len };
  }
  return first.host !== undefined ? { kind: 'unallocated', length: len, hostOffset: first.host } : { kind: 'unallocated', length: len };
}

/**
 * What is corrupt about the entry a run goes over (qemu's checks in qcow2_get_host_offset and
 * its callers), or undefined. Synchronous and allocation-free on the good path: it runs once
 * per decoded cluster.
 */
function problem(
  src: MappingSource,
  c: { kind: Kind; host?: number },
  entry: L2Entry,
  l2Offset: number,
  index: number,
): string | undefined {
  const where = (): string => `(L2 offset: ${hashHex(l2Offset)}, L2 index: ${hashHex(index)})`;
  // qemu's format string has two spaces here ("found " " (L2 offset").
  if (c.host === -1) return `Invalid cluster entry found  ${where()}`;
  const host = entry.kind === 'compressed' || entry.kind === 'data' || entry.kind === 'zero' ? entry.hostOffset : entry.kind === 'extended' ? entry.hostOffset : undefined;
  if (entry.kind === 'compressed' && host! > MAX_COMPRESSED_OFFSET) {
    return `Cluster offset 0x${host!.toString(16)} is beyond the largest supported offset ${where()}`;
  }
  if (src.version < 3 && entry.kind === 'zero') return `Zero cluster entry found in pre-v3 image ${where()}`;
  // qcow2_get_host_offset: a normal, zero-allocated or unallocated-allocated (extended L2)
  // cluster must start at a cluster boundary.
  if (entry.kind !== 'compressed' && host !== undefined && host !== 0 && host % src.geo.clusterSize !== 0) {
    return `Cluster allocation offset 0x${host.toString(16)} unaligned ${where()}`;
  }
  if (entry.kind === 'compressed' && src.geo.dataFile) {
    return `Compressed cluster entry found in image with external data file ${where()}`;
  }
  return undefined;
}
