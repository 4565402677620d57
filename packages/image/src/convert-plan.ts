/**
 * What `convert` copies, decided as qemu-img 7.2 decides it: the chunks and their statuses
 * (convert_iteration_sectors, over the sources' block status), and the split of a data chunk
 * into data and zero runs for `-S` (is_allocated_sectors / is_allocated_sectors_min).
 */
import { BDRV_SECTOR_SIZE, INT_MAX, dataRunLength, isZero, zeroRunLength } from '@tsimg/raw';
import { blockStatusAbove, type ChainImage } from './block-status.js';
import { ConvertError, reason, type Warn } from './convert-error.js';
import { SourceParts } from './convert-read.js';

const SECTOR = BDRV_SECTOR_SIZE;
/** BDRV_REQUEST_MAX_SECTORS: the longest block-status query qemu makes. */
const MAX_REQUEST_SECTORS = Math.floor(INT_MAX / SECTOR);

/** What a chunk is to the target: data to write, zeroes, or left to the target's backing. */
export type Status = 'data' | 'zero' | 'backing';

/** A run of a data chunk: `run` sectors, all data or all zero (is_allocated_sectors). */
export interface Piece {
  run: number;
  data: boolean;
}

/**
 * qemu's is_allocated_sectors: the length (in sectors) of the leading run of `buf` that is all
 * zero or all data, with the run's end moved to an `alignment` boundary the way qemu does it.
 */
export function allocatedRun(buf: Uint8Array, n: number, sectorNum: number, alignment: number): Piece {
  if (n <= 0) return { run: 0, data: false };
  // The leading run of all-zero or all-data sectors, found by native compares.
  const view = buf.subarray(0, n * SECTOR);
  let isZeroRun = isZero(view.subarray(0, SECTOR));
  let i = (isZeroRun ? zeroRunLength(view, SECTOR) : dataRunLength(view, SECTOR)) / SECTOR;
  if (i === n) return { run: i, data: !isZeroRun };
  const tail = (sectorNum + i) & (alignment - 1);
  if (tail) {
    // The sector after i holds data and will rewrite this tail by read-modify-write anyway.
    if (isZeroRun && i <= tail) isZeroRun = false;
    if (!isZeroRun) i = Math.min(i + alignment - tail, n);
    else i -= tail;
  }
  return { run: i, data: !isZeroRun };
}

/**
 * qemu's is_allocated_sectors_min: like {@link allocatedRun}, but a data run swallows zero runs
 * shorter than `min` sectors that data follows, so tiny holes do not split writes.
 */
export function allocatedRunMin(buf: Uint8Array, n: number, min: number, sectorNum: number, alignment: number): Piece {
  if (n < min) min = n;
  const first = allocatedRun(buf, n, sectorNum, alignment);
  if (!first.data) return first;
  let used = first.run;
  let checked = used;
  let off = used;
  while (off < n) {
    const next = allocatedRun(buf.subarray(off * SECTOR), n - off, sectorNum + off, alignment);
    off += next.run;
    checked += next.run;
    if (next.data) used = checked;
    else if (next.run >= min) break;
  }
  return { run: used, data: true };
}

/**
 * A data chunk's split as convert_co_write would make it, piece by piece. It depends on the
 * bytes only, so the copy loop makes it as soon as the chunk is read: the scan then runs while
 * earlier writes are in flight instead of between them.
 */
export function splitRuns(sector: number, sectors: number, buf: Uint8Array, minSparse: number, alignment: number): Piece[] {
  const pieces: Piece[] = [];
  while (sectors > 0) {
    const run = allocatedRunMin(buf, sectors, minSparse, sector, alignment);
    pieces.push(run);
    sector += run.run;
    sectors -= run.run;
    buf = buf.subarray(run.run * SECTOR);
  }
  return pieces;
}

/** Largest power of two not above `n` (n ≥ 1). */
function pow2floor(n: number): number {
  return 2 ** Math.floor(Math.log2(n));
}

/** The copy's settings in sectors, as qemu's ImgConvertState holds them. */
export interface ConvertParams {
  /** `-S` in sectors; 0 writes everything. */
  minSparse: number;
  compressed: boolean;
  /** The target's cluster size in sectors (0: none). */
  clusterSectors: number;
  targetHasBacking: boolean;
  /** The target reads as zeroes: zero chunks need no write. */
  hasZeroInit: boolean;
  /** The target's backing image size in sectors, -1 when unknown or absent. */
  targetBackingSectors: number;
  /** The longest data chunk (one cluster with -c). */
  bufSectors: number;
  /** Where zero runs inside data may start and end (is_allocated_sectors' alignment). */
  alignment: number;
  salvage: boolean;
}

/** The settings of qemu's img_convert / convert_do_copy, from the copy's options in bytes. */
export function convertParams(o: {
  minSparse?: number;
  compressed?: boolean;
  clusterSize?: number;
  hasZeroInit?: boolean;
  targetHasBacking?: boolean;
  targetBackingSize?: number;
  salvage?: boolean;
  bufSize: number;
}): ConvertParams {
  const minSparse = (o.minSparse ?? 4096) / SECTOR;
  const compressed = o.compressed ?? false;
  const clusterSectors = (o.clusterSize ?? 0) / SECTOR;
  const targetHasBacking = o.targetHasBacking ?? false;
  return {
    minSparse,
    compressed,
    clusterSectors,
    targetHasBacking,
    hasZeroInit: !targetHasBacking && minSparse > 0 && (o.hasZeroInit ?? false),
    targetBackingSectors:
      targetHasBacking && o.targetBackingSize !== undefined ? Math.ceil(o.targetBackingSize / SECTOR) : -1,
    bufSectors: compressed ? clusterSectors : o.bufSize / SECTOR,
    alignment: Math.max(pow2floor(Math.max(minSparse, 1)), 1),
    salvage: o.salvage ?? false,
  };
}

/** The kind of a source range, as convert_iteration_sectors reads the status flags. */
type SourceKind = 'data' | 'zero' | 'unallocated';

/**
 * The chunks of a copy in guest order: qemu's convert_iteration_sectors with the state it
 * carries between calls (the status and where the next block-status query is due).
 */
export class ConvertPlan {
  readonly parts: SourceParts;
  /** The status of the chunk {@link next} returned last. */
  status: Status = 'data';
  #nextStatus = 0;
  readonly #alignment: readonly number[];

  constructor(
    readonly sources: readonly ChainImage[],
    readonly params: ConvertParams,
  ) {
    this.parts = new SourceParts(sources);
    this.#alignment = sources.map((s) => Math.max(1, (s.clusterSize ?? 0) / SECTOR));
  }

  get totalSectors(): number {
    return this.parts.total;
  }

  /** Starts over at sector 0 (qemu resets sector_next_status between its two passes). */
  restart(): void {
    this.#nextStatus = 0;
  }

  /**
   * The length in sectors of the chunk at `sector`; its status is then {@link status}. A
   * salvaged block-status error is reported through `warn`.
   */
  async next(sector: number, warn: Warn | undefined): Promise<number> {
    const p = this.params;
    const total = this.parts.total;
    const { index, start } = this.parts.part(sector);
    let n = Math.min(total - sector, MAX_REQUEST_SECTORS);
    let postBackingZero = false;
    if (p.targetBackingSectors >= 0) {
      if (sector >= p.targetBackingSectors) postBackingZero = true;
      else if (sector + n > p.targetBackingSectors) n = p.targetBackingSectors - sector;
    }
    if (this.#nextStatus <= sector) {
      const { kind, count } = await this.#query(index, (sector - start) * SECTOR, n, warn);
      n = Math.ceil(count / SECTOR);
      const tail = (sector - start + n) % this.#alignment[index]!;
      if (n > tail) n -= tail;
      if (kind === 'zero') this.status = postBackingZero ? 'backing' : 'zero';
      else if (kind === 'data') this.status = 'data';
      else this.status = p.targetHasBacking ? 'backing' : 'data';
      this.#nextStatus = sector + n;
    }
    n = Math.min(n, this.#nextStatus - sector);
    if (this.status === 'data') n = Math.min(n, p.bufSectors);
    if (p.compressed) {
      // Compressed clusters are written whole: a shorter run counts as data for its cluster.
      if (n < p.clusterSectors) {
        n = Math.min(p.clusterSectors, total - sector);
        this.status = 'data';
      } else {
        n -= n % p.clusterSectors;
      }
    }
    return n;
  }

  /**
   * The status of source `index` at byte `offset` for at most `n` sectors, and how many bytes
   * it covers (to the end of the source's last sector when it reaches the source's end). With
   * --salvage, a failing query is retried on a quarter of the range down to one sector, which
   * is then warned about and taken as data (its read decides).
   */
  async #query(index: number, offset: number, n: number, warn: Warn | undefined): Promise<{ kind: SourceKind; count: number }> {
    const src = this.sources[index]!;
    const sourceEnd = this.parts.sectors[index]! * SECTOR;
    // The sector-rounded tail of a source whose size is not a multiple of 512.
    if (offset >= src.size()) return { kind: 'data', count: sourceEnd - offset };
    const retried: unknown[] = [];
    for (;;) {
      const want = Math.min(n * SECTOR, src.size() - offset);
      try {
        const st = await sourceStatus(src, offset, want, this.params.targetHasBacking);
        // A status ending at the source's unaligned end covers the rest of its last sector.
        return { kind: st.kind, count: offset + st.length >= src.size() ? sourceEnd - offset : st.length };
      } catch (err) {
        if (!this.params.salvage) throw err instanceof ConvertError ? err : new ConvertError('status', offset, err);
        retried.push(err);
        if (n > 1) {
          n = Math.ceil(n / 4);
          continue;
        }
        warn?.(`error while reading block status at offset ${offset}: ${reason(err)}`, retried);
        return { kind: 'data', count: SECTOR };
      }
    }
  }
}

/**
 * A source range's status for convert: bdrv_block_status_above down to the source's backing
 * image when the target has one (so that range stays the target backing's), else through the
 * whole chain — as qemu-img's convert_iteration_sectors asks it, with want_zero: data
 * clusters of a metadata-preallocated source over holes of its file are zero, and a range the
 * source leaves unallocated past the end of its own backing image is zero (qemu then writes
 * zeroes there unless the range also lies past the end of the target's backing).
 */
async function sourceStatus(
  src: ChainImage,
  offset: number,
  length: number,
  targetHasBacking: boolean,
): Promise<{ kind: SourceKind; length: number }> {
  const base = targetHasBacking ? src.backing : undefined;
  const st = await blockStatusAbove(src, offset, length, { base });
  // qemu tests ZERO before DATA.
  return { kind: st.zero ? 'zero' : st.data ? 'data' : 'unallocated', length: st.length };
}
