/**
 * `convert`'s copy (qemu-img 7.2's convert_do_copy with in-order writes): the plan's first pass
 * for the progress, then the copy of every chunk, then the end of a compressed stream — the
 * same decisions, in the same order, as qemu, so that a qcow2 target is allocated cluster for
 * cluster like qemu's.
 *
 * Works on any {@link Image}: it only uses `blockStatus`, `read`, `write`, `writeZeroes` and,
 * for `-c`, an optional {@link CompressedTarget}. The steps live in convert-plan.ts (what to
 * copy), convert-read.ts (reading, salvage), convert-write.ts (writing), convert-compressed.ts
 * (-c) and convert-copy.ts (the pipeline between them).
 */
import { BDRV_SECTOR_SIZE, IoError, type BlockDevice } from '@tsimg/raw';
import type { ChainImage } from './block-status.js';
import { compressedWindow, type ClusterCompressor, type CompressedTarget } from './convert-compressed.js';
import { copyChunks } from './convert-copy.js';
import { request } from './convert-error.js';
import { convertParams, ConvertPlan } from './convert-plan.js';
import { ChunkWriter } from './convert-write.js';
import { WriteThrottle, type ThrottleClock } from './throttle.js';

const SECTOR = BDRV_SECTOR_SIZE;
/** qemu-img's IO_BUF_SIZE: the largest chunk read and written at once. */
export const CONVERT_BUF_SIZE = 2 * 1024 * 1024;
/**
 * The copy loop reads contiguous data chunks with one read of up to this many bytes, and keeps
 * up to READ_WINDOW of them in flight. Measured (1 GiB raw → qcow2): 8 MiB reads and a 32 MiB
 * window cost more CPU than 2 MiB reads and 8 MiB — the buffers no longer stay in the CPU cache
 * between the read, the zero scan and the write.
 */
const READ_GROUP_BYTES = 2 * 1024 * 1024;
const READ_WINDOW = 4;

export { ConvertError } from './convert-error.js';
export { allocatedRun, allocatedRunMin } from './convert-plan.js';
export type { ClusterCompressor, CompressedTarget } from './convert-compressed.js';

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
  /**
   * Stops the copy when aborted: checked before each block-status query of the first pass and
   * before each write, and once the reads and writes in flight have settled, the copy rejects
   * with the signal's reason. What was written stays written.
   */
  signal?: AbortSignal;
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
  const params = convertParams({ ...options, bufSize: CONVERT_BUF_SIZE });
  if (params.compressed && (params.clusterSectors <= 0 || !target.writeCompressed)) {
    throw new IoError('invalid cluster size');
  }
  // qemu-img sets the target's throttle group up before the copy starts.
  const throttle = options.rateLimit ? new WriteThrottle(options.rateLimit, options.clock) : undefined;
  const plan = new ConvertPlan(sources, params);
  const counted = (): boolean => plan.status === 'data' || (!params.minSparse && plan.status === 'zero');

  // First pass: how many sectors will be copied (qemu's allocated_sectors), for the progress.
  // Made always, as qemu does: a source whose block status fails then fails before anything
  // is written (and with --salvage, qemu prints the block-status warnings twice, once here).
  // It reads metadata only (cached L2 tables, SEEK_DATA on raw files): ~1 ms for the bench's
  // 1 GiB images.
  let allocatedSectors = 0;
  for (let sector = 0; sector < plan.totalSectors; ) {
    options.signal?.throwIfAborted();
    const n = await plan.next(sector, options.warn);
    if (counted()) allocatedSectors += n;
    sector += n;
  }
  plan.restart();

  let allocatedDone = 0;
  const window = params.compressed
    ? compressedWindow(params.clusterSectors, options.compressorThreads)
    : { groupBytes: READ_GROUP_BYTES, windowBytes: READ_WINDOW * READ_GROUP_BYTES };
  const writer = new ChunkWriter(target, params, throttle);
  await copyChunks(plan, writer, {
    ...window,
    parallelWrites: options.parallelWrites ?? 1,
    compressor: options.compressor,
    warn: options.warn,
    signal: options.signal,
    advance: (n) => {
      allocatedDone += n;
      options.progress?.((100 * allocatedDone) / allocatedSectors);
    },
  });
  if (params.compressed) await request('write', plan.totalSectors * SECTOR, () => writer.finishCompressed());
}
