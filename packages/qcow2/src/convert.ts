/**
 * The copy loop of `convert`: walks the sources' block status, skips what the target need not
 * hold, finds zero runs inside data (`-S`), and writes the rest in guest order — the same
 * decisions, in the same order, as qemu-img 7.2's convert_do_copy with in-order writes, so that
 * a qcow2 target is allocated cluster for cluster like qemu's.
 *
 * Works on any {@link Image}: it only uses `blockStatus`, `read`, `write`, `writeZeroes` and,
 * for `-c`, an optional {@link CompressedTarget}.
 */
import { IoError, dataRunLength, isZero, zeroRunLength, type BlockDevice } from '@tsimg/raw';
import { chainBlockStatus, type ChainImage } from './chain-status.js';

const SECTOR = 512;
/** qemu-img's IO_BUF_SIZE: the largest chunk read and written at once. */
export const CONVERT_BUF_SIZE = 2 * 1024 * 1024;
/** BDRV_REQUEST_MAX_SECTORS: the longest block-status query qemu makes. */
const MAX_REQUEST_SECTORS = Math.floor(0x7fffffff / SECTOR);

/** A target that can store whole clusters compressed (qcow2). */
export interface CompressedTarget {
  /**
   * Writes one cluster at a cluster-aligned `offset` compressed (or the image's tail, shorter
   * than a cluster). `compressed` is the precompressed form when the caller compressed it
   * already (e.g. on a worker pool), `null` when it does not shrink; undefined lets the target
   * compress it itself.
   */
  writeCompressed(offset: number, cluster: Uint8Array, compressed?: Uint8Array | null): Promise<void>;
  /** Ends a compressed stream (qemu pads the file to a sector boundary). */
  finishCompressed(): Promise<void>;
}

/** Compresses clusters ahead of the writer; results must not depend on timing. */
export interface ClusterCompressor {
  compress(cluster: Uint8Array): Promise<Uint8Array | undefined>;
}

/** How to copy (the flags of `qemu-img convert` after the target exists). */
export interface ConvertCopyOptions {
  /** `-S` in bytes (a multiple of 512); 0 writes everything. Default 4096. */
  minSparse?: number;
  /** `-c`: write data clusters compressed (needs a {@link CompressedTarget}). */
  compressed?: boolean;
  /** Target cluster size (0 when the target has none, e.g. raw). */
  clusterSize?: number;
  /** The target reads as zeroes already (new image, or --target-is-zero). */
  hasZeroInit?: boolean;
  /** `-B`: the target has a backing file; unallocated source ranges stay unallocated. */
  targetHasBacking?: boolean;
  /** Size of the target's backing image, when known (qemu splits at its end). */
  targetBackingSize?: number;
  /** `--salvage`: read errors become zeroes with a warning instead of failing. */
  salvage?: boolean;
  /** Called with a warning line (salvage). */
  warn?: (message: string) => void;
  /** Progress in percent, as qemu computes it. */
  progress?: (percent: number) => void;
  /** Compresses ahead of the writer (a worker pool); default compresses in the target. */
  compressor?: ClusterCompressor;
}

type Status = 'data' | 'zero' | 'backing';

/**
 * qemu's is_allocated_sectors: the length (in sectors) of the leading run of `buf` that is all
 * zero or all data, with the run's end moved to an `alignment` boundary the way qemu does it.
 */
export function allocatedRun(
  buf: Uint8Array,
  n: number,
  sectorNum: number,
  alignment: number,
): { run: number; data: boolean } {
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
export function allocatedRunMin(
  buf: Uint8Array,
  n: number,
  min: number,
  sectorNum: number,
  alignment: number,
): { run: number; data: boolean } {
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

/** Largest power of two not above `n` (n ≥ 1). */
function pow2floor(n: number): number {
  return 2 ** Math.floor(Math.log2(n));
}

/**
 * Copies the concatenation of `sources` into `target` (which must be at least as large).
 * Resolves when every write is done; does not flush or close the target.
 */
export async function convertCopy(
  sources: readonly ChainImage[],
  target: BlockDevice & Partial<CompressedTarget>,
  options: ConvertCopyOptions = {},
): Promise<void> {
  const minSparse = (options.minSparse ?? 4096) / SECTOR;
  const compressed = options.compressed ?? false;
  const clusterSectors = (options.clusterSize ?? 0) / SECTOR;
  const targetHasBacking = options.targetHasBacking ?? false;
  const hasZeroInit = !targetHasBacking && minSparse > 0 && (options.hasZeroInit ?? false);
  const targetBackingSectors =
    targetHasBacking && options.targetBackingSize !== undefined ? Math.ceil(options.targetBackingSize / SECTOR) : -1;
  const bufSectors = compressed ? clusterSectors : CONVERT_BUF_SIZE / SECTOR;
  const alignment = Math.max(pow2floor(Math.max(minSparse, 1)), 1);
  if (compressed && (clusterSectors <= 0 || !target.writeCompressed)) {
    throw new IoError('invalid cluster size');
  }

  const srcSectors = sources.map((s) => Math.ceil(s.size() / SECTOR));
  const srcAlignment = sources.map((s) => Math.max(1, (s.clusterSize ?? 0) / SECTOR));
  const totalSectors = srcSectors.reduce((a, b) => a + b, 0);

  const part = (sector: number): { index: number; start: number } => {
    let index = 0;
    let start = 0;
    while (sector - start >= srcSectors[index]!) start += srcSectors[index++]!;
    return { index, start };
  };

  // convert_iteration_sectors, with its carried state.
  let status: Status = 'data';
  let nextStatus = 0;
  const iterate = async (sector: number): Promise<number> => {
    const { index, start } = part(sector);
    let n = Math.min(totalSectors - sector, MAX_REQUEST_SECTORS);
    let postBackingZero = false;
    if (targetBackingSectors >= 0) {
      if (sector >= targetBackingSectors) postBackingZero = true;
      else if (sector + n > targetBackingSectors) n = targetBackingSectors - sector;
    }
    if (nextStatus <= sector) {
      const src = sources[index]!;
      const offset = (sector - start) * SECTOR;
      const want = Math.min(n * SECTOR, src.size() - offset);
      let kind: 'data' | 'zero' | 'unallocated';
      let count: number;
      if (want <= 0) {
        // The sector-rounded tail of a source whose size is not a multiple of 512.
        kind = 'data';
        count = n * SECTOR;
      } else {
        const st = await chainBlockStatus(src, offset, want, targetHasBacking ? src.backing : undefined);
        kind = st.kind;
        count = st.length;
        // A status ending at the source's unaligned end covers the rest of its last sector.
        if (offset + count >= src.size()) count = n * SECTOR;
      }
      n = Math.ceil(count / SECTOR);
      const tail = (sector - start + n) % srcAlignment[index]!;
      if (n > tail) n -= tail;
      if (kind === 'zero') status = postBackingZero ? 'backing' : 'zero';
      else if (kind === 'data') status = 'data';
      else status = targetHasBacking ? 'backing' : 'data';
      nextStatus = sector + n;
    }
    n = Math.min(n, nextStatus - sector);
    if (status === 'data') n = Math.min(n, bufSectors);
    if (compressed) {
      if (n < clusterSectors) {
        n = Math.min(clusterSectors, totalSectors - sector);
        status = 'data';
      } else {
        n -= n % clusterSectors;
      }
    }
    return n;
  };

  // First pass, only for progress: how many sectors will be copied (qemu's allocated_sectors).
  let allocatedSectors = 0;
  if (options.progress) {
    for (let sector = 0; sector < totalSectors; ) {
      const n = await iterate(sector);
      if (status === 'data' || (!minSparse && status === 'zero')) allocatedSectors += n;
      sector += n;
    }
    nextStatus = 0;
  }
  let allocatedDone = 0;
  const advance = (n: number): void => {
    allocatedDone += n;
    options.progress?.((100 * allocatedDone) / allocatedSectors);
  };

  const read = async (sector: number, sectors: number, buf: Uint8Array): Promise<void> => {
    let done = 0;
    while (done < sectors) {
      const { index, start } = part(sector + done);
      const n = Math.min(sectors - done, srcSectors[index]! - (sector + done - start));
      const into = buf.subarray(done * SECTOR, (done + n) * SECTOR);
      await readSalvaging(sources[index]!, (sector + done - start) * SECTOR, into, options);
      done += n;
    }
  };

  const writeCompressed = async (sector: number, cluster: Uint8Array): Promise<void> => {
    const pre = options.compressor ? ((await options.compressor.compress(cluster)) ?? null) : undefined;
    await target.writeCompressed!(sector * SECTOR, cluster, pre);
  };

  // convert_co_write
  const write = async (sector: number, sectors: number, buf: Uint8Array, st: Status): Promise<void> => {
    while (sectors > 0) {
      let n = sectors;
      let zero = false;
      if (st === 'data') {
        if (!minSparse) {
          await target.write(sector * SECTOR, buf.subarray(0, n * SECTOR));
        } else if (compressed) {
          if (!isZero(buf.subarray(0, n * SECTOR))) await writeCompressed(sector, buf.subarray(0, n * SECTOR));
          else zero = true;
        } else {
          const run = allocatedRunMin(buf, n, minSparse, sector, alignment);
          n = run.run;
          if (run.data) await target.write(sector * SECTOR, buf.subarray(0, n * SECTOR));
          else zero = true;
        }
      } else if (st === 'zero') {
        zero = true;
      }
      if (zero && !hasZeroInit) await target.writeZeroes(sector * SECTOR, n * SECTOR, { mayUnmap: true });
      sector += n;
      sectors -= n;
      buf = buf.subarray(n * SECTOR);
    }
  };

  // Second pass: copy, in guest order. While one data chunk is written, the next one is read
  // into the other buffer (qemu keeps several requests in flight; writes stay in order so a
  // qcow2 target is allocated exactly as qemu allocates it).
  const buffers = [new Uint8Array(bufSectors * SECTOR), new Uint8Array(bufSectors * SECTOR)];
  let which = 0;
  let ahead: { sector: number; sectors: number; buf: Uint8Array; done: Promise<void> } | undefined;
  const readAhead = (sector: number, sectors: number) => {
    which ^= 1;
    const buf = buffers[which]!.subarray(0, sectors * SECTOR);
    ahead = { sector, sectors, buf, done: read(sector, sectors, buf) };
    // Never an unhandled rejection: the error surfaces when the chunk is awaited.
    ahead.done.catch(() => undefined);
  };

  // The next chunk is planned before the current one is written (to start its read); the plan
  // is kept so each chunk's status is computed exactly once, as in qemu.
  let planned: { sector: number; n: number; st: Status } | undefined;
  const plan = async (sector: number): Promise<{ n: number; st: Status }> => {
    if (planned?.sector === sector) return planned;
    const n = await iterate(sector);
    planned = { sector, n, st: status };
    return planned;
  };

  for (let sector = 0; sector < totalSectors; ) {
    const p = await plan(sector);
    let n = p.n;
    const st = p.st;
    if (!minSparse && st === 'zero') {
      // -S 0: zero ranges are written as data, a buffer at a time.
      n = Math.min(n, bufSectors);
      advance(n);
      await write(sector, n, buffers[0]!.subarray(0, n * SECTOR).fill(0), 'data');
      ahead = undefined;
    } else if (st === 'data') {
      advance(n);
      if (!ahead || ahead.sector !== sector || ahead.sectors !== n) readAhead(sector, n);
      const cur = ahead!;
      await cur.done;
      ahead = undefined;
      // Plan the next chunk now, so its read overlaps this write.
      const next = sector + n;
      if (next < totalSectors) {
        const q = await plan(next);
        if (q.st === 'data') readAhead(next, q.n);
      }
      await write(sector, n, cur.buf, 'data');
    } else {
      await write(sector, n, buffers[0]!, st);
    }
    sector += n;
  }
  if (compressed) await target.finishCompressed!();
}

async function readSalvaging(src: BlockDevice, offset: number, into: Uint8Array, options: ConvertCopyOptions): Promise<void> {
  // A source whose size is not sector-aligned reads as zeroes up to the sector boundary.
  const inside = Math.max(0, Math.min(into.length, src.size() - offset));
  if (inside < into.length) into.fill(0, inside);
  if (inside === 0) return;
  const part = into.subarray(0, inside);
  try {
    await src.read(offset, part);
  } catch (err) {
    if (!options.salvage) throw err;
    // Retry sector by sector; unreadable sectors become zeroes with a warning, like qemu.
    for (let pos = 0; pos < inside; pos += SECTOR) {
      const sec = part.subarray(pos, Math.min(inside, pos + SECTOR));
      try {
        await src.read(offset + pos, sec);
      } catch (e) {
        options.warn?.(`error while reading offset ${offset + pos}: ${(e as Error).message}`);
        sec.fill(0);
      }
    }
  }
}
