/**
 * The copy loop of `convert`: walks the sources' block status, skips what the target need not
 * hold, finds zero runs inside data (`-S`), and writes the rest in guest order — the same
 * decisions, in the same order, as qemu-img 7.2's convert_do_copy with in-order writes, so that
 * a qcow2 target is allocated cluster for cluster like qemu's.
 *
 * Works on any {@link Image}: it only uses `blockStatus`, `read`, `write`, `writeZeroes` and,
 * for `-c`, an optional {@link CompressedTarget}.
 */
import { BDRV_SECTOR_SIZE, INT_MAX, IoError, TsimgError, dataRunLength, isZero, strerror, zeroRunLength, type BlockDevice } from '@tsimg/raw';
import { chainBlockStatus, type ChainImage } from './chain-status.js';
import { WriteThrottle, type ThrottleClock } from './throttle.js';

const SECTOR = BDRV_SECTOR_SIZE;
/** qemu-img's IO_BUF_SIZE: the largest chunk read and written at once. */
export const CONVERT_BUF_SIZE = 2 * 1024 * 1024;
/** BDRV_REQUEST_MAX_SECTORS: the longest block-status query qemu makes. */
const MAX_REQUEST_SECTORS = Math.floor(INT_MAX / SECTOR);
/**
 * The copy loop reads contiguous data chunks with one read of up to this many bytes, and keeps
 * up to READ_WINDOW of them in flight. Measured (1 GiB raw → qcow2): 8 MiB reads and a 32 MiB
 * window cost more CPU than 2 MiB reads and 8 MiB — the buffers no longer stay in the CPU cache
 * between the read, the zero scan and the write.
 */
const READ_GROUP_BYTES = 2 * 1024 * 1024;
const READ_WINDOW = 4;
/**
 * With -c, chunks are single clusters: they are read 1 MiB at a time, and at least 8 MiB
 * (128 clusters of 64 KiB) are read and compressed ahead of the writer. Measured (256 MiB,
 * zlib on two workers): 2.1 s instead of 3.2 s with four clusters ahead.
 */
const COMPRESSED_GROUP_BYTES = 1024 * 1024;
const COMPRESSED_WINDOW_BYTES = 8 * 1024 * 1024;
/** How many chunks (of any status) the copy loop plans ahead at most. */
const MAX_QUEUED_CHUNKS = 1024;

/** The strerror text qemu prints for a failed request (EIO when the cause names no errno). */
function reason(err: unknown): string {
  const errno = err instanceof TsimgError ? err.errno : (err as { code?: unknown } | null)?.code;
  return strerror(typeof errno === 'string' ? errno : 'EIO');
}

/**
 * A request of the copy loop failed; the message is the line qemu-img prints for it, the
 * original error is the `cause`.
 */
export class ConvertError extends IoError {
  constructor(op: 'read' | 'write' | 'status', offset: number, cause: unknown) {
    const text =
      op === 'status'
        ? `error while reading block status at offset ${offset}: ${reason(cause)}`
        : `error while ${op === 'read' ? 'reading' : 'writing'} at byte ${offset}: ${reason(cause)}`;
    super(text, { cause, errno: cause instanceof TsimgError ? cause.errno : undefined });
    this.name = 'ConvertError';
  }
}

/** Runs one request, turning its failure into a {@link ConvertError}. */
async function request<T>(op: 'read' | 'write' | 'status', offset: number, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    throw err instanceof ConvertError ? err : new ConvertError(op, offset, err);
  }
}

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
  /**
   * `--salvage`: read errors become zeroes with a warning instead of failing; a block-status
   * error is retried on a quarter of the range down to one sector, which is then warned about
   * and copied as data (so its read decides: data, or zeroes with a warning).
   */
  salvage?: boolean;
  /**
   * Called with a warning line (salvage) in the order qemu-img prints them — the status
   * warnings of the first pass, then each chunk's status and read warnings as the writer
   * reaches it — with the errors behind it: the one it reports and those retried away just
   * before (a caller may print what they carry, e.g. qcow2's corruption line, before it).
   */
  warn?: (message: string, causes: readonly unknown[]) => void;
  /** Progress in percent, as qemu computes it. */
  progress?: (percent: number) => void;
  /** Compresses ahead of the writer (a worker pool); default compresses in the target. */
  compressor?: ClusterCompressor;
  /** How many clusters the compressor works on at once (sets how far ahead reads go). */
  compressorThreads?: number;
  /**
   * `-r`: the target's write rate limit in bytes per second (0 or undefined: none). Every
   * write request waits in qemu's leaky bucket first ({@link WriteThrottle}).
   */
  rateLimit?: number;
  /** The clock and timer of the rate limit (tests inject a fake one); default the real one. */
  clock?: ThrottleClock;
  /**
   * How many writes may be in flight at once (default 1: one after the other). Only for targets
   * whose layout does not depend on the order writes complete in — a raw file — where the next
   * write then waits in the kernel instead of for this thread (1 GiB qcow2→raw: 0.227 → 0.200 s,
   * medians of 9). A qcow2 target allocates clusters in write order: qemu's byte-identical
   * layout needs one write at a time there.
   */
  parallelWrites?: number;
}

type Status = 'data' | 'zero' | 'backing';
/** A salvage warning held back until the writer reaches its chunk. */
type Warning = [message: string, causes: readonly unknown[]];
type Warn = (message: string, causes: readonly unknown[]) => void;

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
  // qemu-img sets the target's throttle group up before the copy starts.
  const throttle = options.rateLimit ? new WriteThrottle(options.rateLimit, options.clock) : undefined;

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
  const iterate = async (sector: number, warn: Warn | undefined): Promise<number> => {
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
      let kind: 'data' | 'zero' | 'unallocated';
      let count: number;
      if (offset >= src.size()) {
        // The sector-rounded tail of a source whose size is not a multiple of 512.
        kind = 'data';
        count = srcSectors[index]! * SECTOR - offset;
      } else {
        const retried: unknown[] = [];
        for (;;) {
          const want = Math.min(n * SECTOR, src.size() - offset);
          try {
            const st = await chainBlockStatus(src, offset, want, targetHasBacking ? src.backing : undefined);
            kind = st.kind;
            count = st.length;
            // A status ending at the source's unaligned end covers the rest of its last sector.
            if (offset + count >= src.size()) count = srcSectors[index]! * SECTOR - offset;
            break;
          } catch (err) {
            if (!options.salvage) throw err instanceof ConvertError ? err : new ConvertError('status', offset, err);
            retried.push(err);
            if (n > 1) {
              // qemu retries on a quarter of the range, down to a single sector.
              n = Math.ceil(n / 4);
              continue;
            }
            // One sector whose status cannot be had: copy it as data, its read decides.
            warn?.(`error while reading block status at offset ${offset}: ${reason(err)}`, retried);
            kind = 'data';
            count = SECTOR;
            break;
          }
        }
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

  // First pass: how many sectors will be copied (qemu's allocated_sectors), for the progress.
  // Made always, as qemu does: a source whose block status fails then fails before anything
  // is written (and with --salvage, qemu prints the block-status warnings twice, once here).
  // It reads metadata only (cached L2 tables, SEEK_DATA on raw files): ~1 ms for the bench's
  // 1 GiB images.
  let allocatedSectors = 0;
  for (let sector = 0; sector < totalSectors; ) {
    const n = await iterate(sector, options.warn);
    if (status === 'data' || (!minSparse && status === 'zero')) allocatedSectors += n;
    sector += n;
  }
  nextStatus = 0;
  let allocatedDone = 0;
  const advance = (n: number): void => {
    allocatedDone += n;
    options.progress?.((100 * allocatedDone) / allocatedSectors);
  };

  // With `salvage` (a warning sink), unreadable sectors become zeroes; without, errors throw.
  const read = async (sector: number, sectors: number, buf: Uint8Array, salvage?: Warn): Promise<void> => {
    let done = 0;
    while (done < sectors) {
      const { index, start } = part(sector + done);
      const n = Math.min(sectors - done, srcSectors[index]! - (sector + done - start));
      const into = buf.subarray(done * SECTOR, (done + n) * SECTOR);
      await readSalvaging(sources[index]!, (sector + done - start) * SECTOR, into, salvage);
      done += n;
    }
  };

  /** A piece of a data chunk as convert_co_write splits it (is_allocated_sectors_min). */
  type Piece = { run: number; data: boolean };
  // The split depends on the bytes only, so it is done as soon as a chunk is read: the scan
  // then runs while earlier writes are in flight instead of between them.
  const split = (sector: number, sectors: number, buf: Uint8Array): Piece[] => {
    const pieces: Piece[] = [];
    while (sectors > 0) {
      const run = allocatedRunMin(buf, sectors, minSparse, sector, alignment);
      pieces.push(run);
      sector += run.run;
      sectors -= run.run;
      buf = buf.subarray(run.run * SECTOR);
    }
    return pieces;
  };

  // convert_co_write. `pieces` is the chunk's split when done already (uncompressed, -S > 0);
  // `zeroed` says whether a compressed cluster is all zero when that was checked already.
  const write = async (
    sector: number,
    sectors: number,
    buf: Uint8Array,
    st: Status,
    pre?: Uint8Array | null,
    pieces?: readonly Piece[],
    zeroed?: boolean,
  ): Promise<void> => {
    let piece = 0;
    while (sectors > 0) {
      let n = sectors;
      let zero = false;
      if (st === 'data') {
        if (compressed) {
          // qemu writes compressed whatever -S says; -S 0 only stops it skipping zero clusters.
          if (!minSparse || !(zeroed ?? isZero(buf.subarray(0, n * SECTOR)))) {
            await throttle?.admit(n * SECTOR);
            await target.writeCompressed!(sector * SECTOR, buf.subarray(0, n * SECTOR), pre);
          } else zero = true;
        } else if (!minSparse) {
          await throttle?.admit(n * SECTOR);
          await target.write(sector * SECTOR, buf.subarray(0, n * SECTOR));
        } else {
          const run = pieces?.[piece++] ?? allocatedRunMin(buf, n, minSparse, sector, alignment);
          n = run.run;
          if (run.data) {
            await throttle?.admit(n * SECTOR);
            await target.write(sector * SECTOR, buf.subarray(0, n * SECTOR));
          } else zero = true;
        }
      } else if (st === 'zero') {
        zero = true;
      }
      if (zero && !hasZeroInit) {
        // A zero write is a write request to the throttle, counted at its full length.
        await throttle?.admit(n * SECTOR);
        await target.writeZeroes(sector * SECTOR, n * SECTOR, { mayUnmap: true });
      }
      sector += n;
      sectors -= n;
      buf = buf.subarray(n * SECTOR);
    }
  };

  // Second pass: copy in guest order. The chunks, their statuses and the writes are exactly
  // those of the loop above (qemu's order); what runs ahead of the writer is the I/O:
  // - planning runs ahead until `windowBytes` of data chunks are queued, and refills only when
  //   half of that was written, so that reads come in batches;
  // - contiguous data chunks of a batch are read with one source read of up to `groupBytes`
  //   (each read costs a thread-pool round trip; with -c, 16 clusters share one);
  // - as soon as a chunk is read, its zero scan (-S) runs, or with -c its cluster goes to the
  //   compressor, while the writer is still busy with earlier chunks;
  // - the writer takes chunks strictly in order: in-order writes allocate a qcow2 target
  //   exactly as qemu's do.
  // Memory stays bounded by the window (8 MiB of buffers, a little more with -c and clusters
  // above 128 KiB), whatever the image size.
  const groupBytes = compressed ? Math.max(COMPRESSED_GROUP_BYTES, clusterSectors * SECTOR) : READ_GROUP_BYTES;
  const windowBytes = compressed
    ? Math.max(COMPRESSED_WINDOW_BYTES, 8 * (options.compressorThreads ?? 1) * clusterSectors * SECTOR)
    : READ_WINDOW * READ_GROUP_BYTES;
  const spare: Uint8Array[] = [];
  interface Group {
    buf: Uint8Array;
    sector: number;
    n: number;
    chunks: Chunk[];
    /** Chunks not yet written: the buffer is reused when none is left. */
    refs: number;
  }
  interface Chunk {
    sector: number;
    n: number;
    st: Status;
    buf?: Uint8Array;
    group?: Group;
    /** With -c and a compressor: the cluster compressed ahead (null: stored uncompressed). */
    pre?: Uint8Array | null;
    /** With -c: whether the cluster is all zero (checked when it was read). */
    zeroed?: boolean;
    /** Uncompressed with -S: the chunk's split into data and zero runs. */
    pieces?: Piece[];
    /** Salvage warnings (block status, then reads), printed when the writer gets here. */
    warnings: Warning[];
    ready: Promise<void>;
  }
  const queue: Chunk[] = [];
  let planSector = 0;
  let queuedBytes = 0;
  let open: Group | undefined;

  const padToCluster = (buf: Uint8Array): Uint8Array => {
    if (buf.length >= clusterSectors * SECTOR) return buf;
    const full = new Uint8Array(clusterSectors * SECTOR);
    full.set(buf);
    return full;
  };

  const prepare = async (chunk: Chunk): Promise<void> => {
    const buf = chunk.buf!;
    if (compressed) {
      chunk.zeroed = isZero(buf);
      if (options.compressor && (!chunk.zeroed || !minSparse)) {
        // The image's last cluster may be short: qemu compresses it zero-padded to a whole
        // cluster (a shorter stream would not decompress to a full cluster when read back).
        chunk.pre = (await options.compressor.compress(padToCluster(buf))) ?? null;
      }
    } else if (minSparse) {
      chunk.pieces = split(chunk.sector, chunk.n, buf);
    }
  };

  // Starts the group's read. If it fails, each chunk is read again on its own (salvaging, with
  // --salvage), so the error or the warnings go with the chunk qemu's loop would name.
  const issue = (g: Group): void => {
    // With --salvage each chunk reads on its own: an error the group read met and then lost
    // would be missing from the warnings of the chunk it belongs to.
    const whole =
      g.chunks.length > 1 && !options.salvage
        ? read(g.sector, g.n, g.buf.subarray(0, g.n * SECTOR)).then(() => true, () => false)
        : undefined;
    for (const chunk of g.chunks) {
      const salvage: Warn | undefined = options.salvage ? (m, causes) => chunk.warnings.push([m, causes]) : undefined;
      const own = (): Promise<void> =>
        request('read', chunk.sector * SECTOR, () => read(chunk.sector, chunk.n, chunk.buf!, salvage));
      const loaded = whole === undefined ? own() : whole.then((ok) => (ok ? undefined : own()));
      chunk.ready = loaded.then(() => prepare(chunk));
      // Never an unhandled rejection: the error surfaces when the writer awaits the chunk.
      chunk.ready.catch(() => undefined);
    }
  };

  const fill = async (): Promise<void> => {
    while (queuedBytes < windowBytes && queue.length < MAX_QUEUED_CHUNKS && planSector < totalSectors) {
      const sector = planSector;
      const warnings: Warning[] = [];
      let n = await iterate(sector, (m, causes) => warnings.push([m, causes]));
      const st = status;
      if (!minSparse && st === 'zero') n = Math.min(n, bufSectors); // -S 0: zeroes as data
      planSector += n;
      if (st === 'data' || (!minSparse && st === 'zero')) advance(n);
      const chunk: Chunk = { sector, n, st, warnings, ready: Promise.resolve() };
      if (st === 'data') {
        if (open !== undefined && (open.sector + open.n !== sector || (open.n + n) * SECTOR > groupBytes)) {
          issue(open);
          open = undefined;
        }
        open ??= { buf: spare.pop() ?? new Uint8Array(groupBytes), sector, n: 0, chunks: [], refs: 0 };
        chunk.buf = open.buf.subarray(open.n * SECTOR, (open.n + n) * SECTOR);
        chunk.group = open;
        open.n += n;
        open.chunks.push(chunk);
        open.refs++;
        queuedBytes += n * SECTOR;
      }
      queue.push(chunk);
    }
    if (open !== undefined) issue(open);
    open = undefined;
  };

  // Writes start in guest order. With parallelWrites > 1 the next ones start before the earlier
  // ones end and are awaited oldest first, so the first failure in guest order is the one
  // reported; when the window is full of writes in flight, the oldest is waited for.
  const maxWrites = Math.max(1, options.parallelWrites ?? 1);
  const writing: Promise<void>[] = [];
  for (;;) {
    if (queue.length === 0 || (queuedBytes <= windowBytes / 2 && queue.length <= MAX_QUEUED_CHUNKS / 2)) await fill();
    if (queue.length === 0 && writing.length > 0) {
      await writing.shift();
      continue;
    }
    const chunk = queue.shift();
    if (!chunk) break;
    try {
      await chunk.ready;
    } finally {
      for (const [m, causes] of chunk.warnings) options.warn?.(m, causes);
    }
    const at = chunk.sector * SECTOR;
    let done: Promise<void>;
    if (chunk.buf) {
      done = request('write', at, () => write(chunk.sector, chunk.n, chunk.buf!, 'data', chunk.pre, chunk.pieces, chunk.zeroed)).then(() => {
        queuedBytes -= chunk.n * SECTOR;
        const g = chunk.group!;
        if (--g.refs === 0) spare.push(g.buf);
      });
    } else if (!minSparse && chunk.st === 'zero') {
      done = request('write', at, () => write(chunk.sector, chunk.n, zeroChunk(chunk.n), 'data'));
    } else {
      done = request('write', at, () => write(chunk.sector, chunk.n, new Uint8Array(0), chunk.st));
    }
    if (maxWrites === 1) {
      await done;
      continue;
    }
    done.catch(() => undefined); // surfaces when awaited, in order
    writing.push(done);
    if (writing.length >= maxWrites) await writing.shift();
  }
  for (const w of writing) await w;
  if (compressed) {
    // qemu ends the stream with an empty compressed write, which the throttle also sees.
    await throttle?.admit(0);
    await request('write', totalSectors * SECTOR, () => target.finishCompressed!());
  }
}

let zeroes = new Uint8Array(0);
/** A shared all-zero buffer of `n` sectors (never written to). */
function zeroChunk(n: number): Uint8Array {
  if (zeroes.length < n * SECTOR) zeroes = new Uint8Array(n * SECTOR);
  return zeroes.subarray(0, n * SECTOR);
}

async function readSalvaging(src: BlockDevice, offset: number, into: Uint8Array, salvage: Warn | undefined): Promise<void> {
  // A source whose size is not sector-aligned reads as zeroes up to the sector boundary.
  const inside = Math.max(0, Math.min(into.length, src.size() - offset));
  if (inside < into.length) into.fill(0, inside);
  if (inside === 0) return;
  const part = into.subarray(0, inside);
  try {
    await src.read(offset, part);
  } catch (err) {
    if (!salvage) throw err;
    // Retry sector by sector; unreadable sectors become zeroes with a warning, like qemu.
    let retried: unknown[] = [err];
    for (let pos = 0; pos < inside; pos += SECTOR) {
      const sec = part.subarray(pos, Math.min(inside, pos + SECTOR));
      try {
        await src.read(offset + pos, sec);
      } catch (e) {
        retried.push(e);
        salvage(`error while reading offset ${offset + pos}: ${reason(e)}`, retried);
        retried = [];
        sec.fill(0);
      }
    }
  }
}
