/**
 * L1 and L2 table entries: pure codecs between the on-disk 64-bit (or, with extended L2, 128-bit)
 * big-endian entries and tagged unions, so the mapping code never tests bits itself.
 *
 * Layout (docs/interop/qcow2.txt, "Cluster mapping"):
 * - L1 entry: bits 9..55 L2 table offset, bit 63 COPIED (refcount is exactly 1).
 * - standard L2 entry: bit 63 COPIED, bit 62 COMPRESSED; for an uncompressed cluster bits 9..55
 *   are the host offset and bit 0 is the v3 "reads as zero" flag; for a compressed cluster, with
 *   x = 62 - (cluster_bits - 8), bits 0..x-1 are the host byte offset and bits x..61 the number
 *   of additional 512-byte sectors.
 * - extended L2 entry: the standard entry (bit 0 reserved) followed by a 64-bit bitmap, bits
 *   0..31 "subcluster allocated", bits 32..63 "subcluster reads as zero".
 *
 * Entries are read as two 32-bit halves so no bigint is needed: every offset fits in 56 bits,
 * exact in a double.
 */

/** Number of subclusters per cluster with extended L2 entries. */
export const SUBCLUSTERS_PER_CLUSTER = 32;
/** Size of one compressed-data sector. */
export const COMPRESSED_SECTOR_SIZE = 512;

const TWO32 = 2 ** 32;
const COPIED_HI = 0x8000_0000;
const COMPRESSED_HI = 0x4000_0000;
const OFFSET_HI_MASK = 0x00ff_ffff; // bits 32..55
const OFFSET_LO_MASK = 0xffff_fe00; // bits 9..31
const RESERVED_HI_MASK = 0x3f00_0000; // L1 / uncompressed L2 bits 56..61
const RESERVED_L1_LO = 0x0000_01ff; // L1 bits 0..8
const RESERVED_L2_LO = 0x0000_01fe; // L2 bits 1..8

/** What a table entry needs to know about its image. */
export interface EntryContext {
  clusterBits: number;
  /** 128-bit L2 entries with subcluster bitmaps. */
  extendedL2: boolean;
  /** The image has an external data file: offset 0 with COPIED then means "data at 0". */
  dataFile: boolean;
}

/** A decoded L1 entry; `l2Offset` 0 means no L2 table. */
export interface L1Entry {
  l2Offset: number;
  copied: boolean;
  /** Bits the spec reserves were set (qemu refuses such tables on check). */
  reserved: boolean;
}

/** A decoded L2 entry. */
export type L2Entry =
  /** Standard entry 0: read from the backing file (or zero). */
  | { kind: 'unallocated' }
  /** v3 zero flag: reads as zero; `hostOffset` is 0 unless the cluster stays preallocated. */
  | { kind: 'zero'; hostOffset: number; copied: boolean }
  /** Guest data at `hostOffset` (a cluster-aligned offset in the image or the data file). */
  | { kind: 'data'; hostOffset: number; copied: boolean }
  /** Compressed data starting at byte `hostOffset`, spanning `sectors` 512-byte sectors. */
  | { kind: 'compressed'; hostOffset: number; sectors: number }
  /**
   * Extended L2, uncompressed: `hostOffset` undefined when no host cluster is attached; `alloc`
   * and `zero` are the two 32-bit subcluster bitmaps (bit i = subcluster i).
   */
  | { kind: 'extended'; hostOffset: number | undefined; copied: boolean; alloc: number; zero: number };

/** What one subcluster (or, for standard entries, the cluster) holds. */
export type SubclusterKind = 'data' | 'zero' | 'unallocated' | 'compressed' | 'invalid';

/** Bytes per L2 entry. */
export function l2EntrySize(extendedL2: boolean): number {
  return extendedL2 ? 16 : 8;
}

/** Bit position of the compressed sector count (x in the spec). */
export function compressedSizeShift(clusterBits: number): number {
  return 62 - (clusterBits - 8);
}

/** Decodes the L1 entry at byte `offset` of `view`. */
export function decodeL1Entry(view: DataView, offset: number): L1Entry {
  const hi = view.getUint32(offset);
  const lo = view.getUint32(offset + 4);
  return {
    l2Offset: (hi & OFFSET_HI_MASK) * TWO32 + ((lo & OFFSET_LO_MASK) >>> 0),
    copied: (hi & COPIED_HI) !== 0,
    reserved: (hi & (RESERVED_HI_MASK | COMPRESSED_HI)) !== 0 || (lo & RESERVED_L1_LO) !== 0,
  };
}

/** Encodes an L1 entry (reserved bits are written as zero). */
export function encodeL1Entry(entry: { l2Offset: number; copied: boolean }, view: DataView, offset: number): void {
  const hi = Math.floor(entry.l2Offset / TWO32);
  view.setUint32(offset, ((hi & OFFSET_HI_MASK) | (entry.copied && entry.l2Offset !== 0 ? COPIED_HI : 0)) >>> 0);
  view.setUint32(offset + 4, (entry.l2Offset % TWO32) >>> 0);
}

/** Decodes the L2 entry at byte `offset` of `view` (16 bytes with extended L2, else 8). */
export function decodeL2Entry(view: DataView, offset: number, ctx: EntryContext): L2Entry {
  const hi = view.getUint32(offset);
  const lo = view.getUint32(offset + 4);
  const copied = (hi & COPIED_HI) !== 0;
  if ((hi & COMPRESSED_HI) !== 0) {
    const shift = compressedSizeShift(ctx.clusterBits) - 32; // 17..29: both fields' split is in `hi`
    const hostOffset = (hi & ((1 << shift) - 1)) * TWO32 + lo;
    const sectors = ((hi >>> shift) & ((1 << (ctx.clusterBits - 8)) - 1)) + 1;
    return { kind: 'compressed', hostOffset, sectors };
  }
  const hostOffset = (hi & OFFSET_HI_MASK) * TWO32 + ((lo & OFFSET_LO_MASK) >>> 0);
  const attached = hostOffset !== 0 || (ctx.dataFile && copied);
  if (ctx.extendedL2) {
    return {
      kind: 'extended',
      hostOffset: attached ? hostOffset : undefined,
      copied,
      alloc: view.getUint32(offset + 12),
      zero: view.getUint32(offset + 8),
    };
  }
  if ((lo & 1) !== 0) return { kind: 'zero', hostOffset, copied };
  if (!attached) return { kind: 'unallocated' };
  return { kind: 'data', hostOffset, copied };
}

/** Encodes an L2 entry; with extended L2 the bitmap is written too (zero for non-extended kinds). */
export function encodeL2Entry(entry: L2Entry, view: DataView, offset: number, ctx: EntryContext): void {
  let hi = 0;
  let lo = 0;
  let alloc = 0;
  let zero = 0;
  switch (entry.kind) {
    case 'unallocated':
      break;
    case 'zero':
    case 'data':
      hi = Math.floor(entry.hostOffset / TWO32) & OFFSET_HI_MASK;
      lo = (entry.hostOffset % TWO32) & OFFSET_LO_MASK;
      if (entry.copied) hi |= COPIED_HI;
      if (entry.kind === 'zero') lo |= 1;
      break;
    case 'compressed': {
      const shift = compressedSizeShift(ctx.clusterBits) - 32;
      hi = COMPRESSED_HI | (((entry.sectors - 1) & ((1 << (ctx.clusterBits - 8)) - 1)) << shift);
      hi |= Math.floor(entry.hostOffset / TWO32) & ((1 << shift) - 1);
      lo = entry.hostOffset % TWO32;
      break;
    }
    case 'extended':
      if (entry.hostOffset !== undefined) {
        hi = Math.floor(entry.hostOffset / TWO32) & OFFSET_HI_MASK;
        lo = (entry.hostOffset % TWO32) & OFFSET_LO_MASK;
      }
      if (entry.copied) hi |= COPIED_HI;
      alloc = entry.alloc;
      zero = entry.zero;
      break;
  }
  view.setUint32(offset, hi >>> 0);
  view.setUint32(offset + 4, lo >>> 0);
  if (ctx.extendedL2) {
    view.setUint32(offset + 8, zero >>> 0);
    view.setUint32(offset + 12, alloc >>> 0);
  }
}

/** True when a standard L2 entry sets bits the spec reserves (uncompressed entries only). */
export function l2EntryHasReservedBits(view: DataView, offset: number, ctx: EntryContext): boolean {
  const hi = view.getUint32(offset);
  if ((hi & COMPRESSED_HI) !== 0) return false;
  const lo = view.getUint32(offset + 4);
  return (hi & RESERVED_HI_MASK) !== 0 || (lo & (ctx.extendedL2 ? RESERVED_L2_LO | 1 : RESERVED_L2_LO)) !== 0;
}

/**
 * What subcluster `index` of the cluster holds (for standard entries `index` is ignored: the
 * cluster is one subcluster). Mirrors qemu's qcow2_get_subcluster_type, including 'invalid'
 * for contradictory bitmaps.
 */
export function subclusterKind(entry: L2Entry, index: number): SubclusterKind {
  switch (entry.kind) {
    case 'unallocated':
      return 'unallocated';
    case 'zero':
      return 'zero';
    case 'data':
      return 'data';
    case 'compressed':
      return 'compressed';
    case 'extended': {
      const bit = 2 ** index;
      if (entry.hostOffset === undefined) {
        if (entry.alloc !== 0) return 'invalid';
        return (entry.zero & bit) !== 0 ? 'zero' : 'unallocated';
      }
      if ((entry.alloc & entry.zero) !== 0) return 'invalid';
      if ((entry.zero & bit) !== 0) return 'zero';
      return (entry.alloc & bit) !== 0 ? 'data' : 'unallocated';
    }
  }
}

/** Host offset of the cluster an entry maps (not for compressed); undefined when none. */
export function entryHostCluster(entry: L2Entry): number | undefined {
  switch (entry.kind) {
    case 'data':
      return entry.hostOffset;
    case 'zero':
      return entry.hostOffset !== 0 ? entry.hostOffset : undefined;
    case 'extended':
      return entry.hostOffset;
    default:
      return undefined;
  }
}

/** True when the entry's cluster can be written in place (qemu's !cluster_needs_new_alloc). */
export function entryWritableInPlace(entry: L2Entry): boolean {
  switch (entry.kind) {
    case 'data':
      return entry.copied;
    case 'zero':
      return entry.copied && entry.hostOffset !== 0;
    case 'extended':
      return entry.copied && entry.hostOffset !== undefined;
    default:
      return false;
  }
}

/**
 * Byte range of a compressed cluster's data as qemu reads it: from `hostOffset`, `sectors`
 * sectors counted from the sector containing it.
 */
export function compressedRange(entry: { hostOffset: number; sectors: number }): { offset: number; length: number } {
  return {
    offset: entry.hostOffset,
    length: entry.sectors * COMPRESSED_SECTOR_SIZE - (entry.hostOffset % COMPRESSED_SECTOR_SIZE),
  };
}

/** The descriptor qemu writes for `length` compressed bytes at `hostOffset` (qcow2_alloc_compressed_cluster_offset). */
export function compressedEntry(hostOffset: number, length: number): { kind: 'compressed'; hostOffset: number; sectors: number } {
  const last = Math.floor((hostOffset + length - 1) / COMPRESSED_SECTOR_SIZE);
  const first = Math.floor(hostOffset / COMPRESSED_SECTOR_SIZE);
  return { kind: 'compressed', hostOffset, sectors: last - first + 1 };
}

/**
 * How many plain (not extended) L2 entries from `index` on, at most `count`, continue a run of
 * `kind` whose next cluster is expected at host offset `host` (undefined: a run without host
 * clusters), reading the raw words instead of decoding each entry into an object — mapping a
 * sparse or fully allocated table is then a tight loop over 8192 words. It answers only for
 * entries that decode to that kind with exactly that host offset (data clusters contiguous,
 * at most `maxHost`); anything else, compressed or odd entries included, ends the count and is
 * left to the caller's full decode and checks.
 */
export function plainRunLength(
  view: DataView,
  index: number,
  count: number,
  kind: 'data' | 'zero' | 'unallocated',
  host: number | undefined,
  ctx: { clusterSize: number; dataFile: boolean; maxHost: number },
): number {
  let next = host;
  let i = 0;
  for (; i < count; i++) {
    const at = (index + i) * 8;
    const hi = view.getUint32(at);
    const lo = view.getUint32(at + 4);
    if ((hi & COMPRESSED_HI) !== 0) break;
    const offset = (hi & OFFSET_HI_MASK) * TWO32 + ((lo & OFFSET_LO_MASK) >>> 0);
    const zeroFlag = (lo & 1) !== 0;
    if (kind === 'unallocated') {
      if (zeroFlag || offset !== 0 || (ctx.dataFile && (hi & COPIED_HI) !== 0)) break;
      continue;
    }
    if (zeroFlag !== (kind === 'zero')) break;
    if (offset !== (next ?? 0) || offset > ctx.maxHost) break;
    // A data entry needs a host cluster: offset 0 is one only in an external data file.
    if (kind === 'data' && (next === undefined || (offset === 0 && !(ctx.dataFile && (hi & COPIED_HI) !== 0)))) break;
    if (next !== undefined) next += ctx.clusterSize;
  }
  return i;
}
