/**
 * `convert()`: the whole of a common `qemu-img convert` in one library call — the sources
 * opened, the target created (qcow2 or raw) and opened the way qemu-img opens its target, the
 * copy made, and a target this call created removed again if the copy fails or is aborted.
 */
import fs from 'node:fs';
import { createCompressPool, createQcow2, type CompressPool, type Qcow2Preallocation } from '@tsimg/qcow2';
import { BDRV_SECTOR_SIZE, createFile, FileDevice, UsageError } from '@tsimg/raw';
import { convertCopy } from './convert.js';
import type { Image } from './image.js';
import { openImage } from './open.js';

const SECTOR = BDRV_SECTOR_SIZE;

/** The target's creation options and how the copy writes it. */
export interface ConvertTargetOptions {
  /** qcow2: 2 (compat=0.10) or 3 (compat=1.1, the default). */
  version?: 2 | 3;
  /** qcow2: the cluster size in bytes (default 65536). */
  clusterSize?: number | bigint;
  /** qcow2: refcount width in bits (default 16). */
  refcountBits?: number | bigint;
  /** qcow2: lazy_refcounts. */
  lazyRefcounts?: boolean;
  /** qcow2: extended_l2 (subclusters). */
  extendedL2?: boolean;
  /** qcow2: the compression type of compressed clusters (default zlib). */
  compressionType?: 'zlib' | 'zstd';
  /** Preallocation (qcow2: off, metadata, falloc, full; raw: off, falloc, full). */
  preallocation?: Qcow2Preallocation;
  /**
   * qcow2: the target's backing file (`-B`). Ranges the source leaves unallocated above its own
   * backing stay unallocated in the target. Needs `backingFormat`.
   */
  backingFile?: string;
  /** qcow2: the backing file's format (`-F`). */
  backingFormat?: string;
  /** `-c`: write data clusters compressed (qcow2 only; not with preallocation). */
  compress?: boolean;
  /**
   * `-S`: runs of at least this many zero bytes (a multiple of 512) are not written, so they
   * stay sparse; 0 writes everything. Default 4096, as qemu-img's.
   */
  sparseSize?: number;
  /** `-r`: write at most this many bytes per second (default: unlimited). */
  rateLimit?: number;
  /**
   * Flush the target to disk before returning. Default false: like qemu-img convert's default
   * cache mode (`unsafe`), the data is left to the host's page cache.
   */
  sync?: boolean;
}

/** What {@link convert} copies where. */
export interface ConvertOptions {
  /**
   * The source: a file name (opened read-only, with its backing chain, and closed again), an
   * open image (left open), or several of them, copied one after the other.
   */
  source: string | Image | readonly (string | Image)[];
  /** The format of sources given by name; probed when absent. */
  sourceFormat?: string;
  /** The target file name; an existing file is overwritten. */
  target: string;
  /** The target's format. */
  format: 'qcow2' | 'raw';
  options?: ConvertTargetOptions;
  /** Called with the fraction (0 to 1) of the data copied, as qemu-img computes its percent. */
  progress?: (fraction: number) => void;
  /**
   * Aborts the copy: the call then rejects with the signal's reason, and removes the target if
   * it created it (a file that existed before is left, overwritten in part).
   */
  signal?: AbortSignal;
}

/** qemu-img convert's refusals that need no file, in its words. */
function checkOptions(format: ConvertOptions['format'], o: ConvertTargetOptions, sources: number): void {
  if (format !== 'qcow2' && format !== 'raw') throw new UsageError(`Unknown file format '${String(format)}'`);
  if (o.backingFile !== undefined) {
    if (format !== 'qcow2') throw new UsageError(`Backing file not supported for file format '${format}'`);
    if (sources > 1) {
      throw new UsageError('Having a backing file for the target makes no sense when concatenating multiple input images');
    }
    if (o.backingFormat === undefined) throw new UsageError('Use of backing file requires explicit backing format');
  }
  if (o.compress) {
    if (format !== 'qcow2') throw new UsageError('Compression not supported for this file format');
    if (o.preallocation !== undefined && o.preallocation !== 'off') {
      throw new UsageError('Compression and preallocation not supported at the same time');
    }
  }
  const sparse = o.sparseSize ?? 4096;
  if (!Number.isInteger(sparse) || sparse < 0 || sparse % SECTOR !== 0) {
    throw new UsageError(`Invalid sparse size ${sparse}: a multiple of ${SECTOR} is needed`);
  }
}

/** Creates the target file as qemu-img convert does (bdrv_create), `size` bytes of guest. */
async function createTarget(path: string, format: ConvertOptions['format'], o: ConvertTargetOptions, size: number): Promise<void> {
  if (format === 'raw') {
    await createFile(path, { size: BigInt(size), preallocation: o.preallocation });
    return;
  }
  await createFile(path);
  const file = await FileDevice.open(path);
  try {
    await createQcow2(file, {
      size: BigInt(size),
      version: o.version,
      clusterSize: o.clusterSize === undefined ? undefined : BigInt(o.clusterSize),
      refcountBits: o.refcountBits === undefined ? undefined : BigInt(o.refcountBits),
      lazyRefcounts: o.lazyRefcounts,
      extendedL2: o.extendedL2,
      compressionType: o.compressionType,
      preallocation: o.preallocation,
      backingFile: o.backingFile,
      backingFormat: o.backingFormat,
    });
  } finally {
    await file.close();
  }
}

async function exists(path: string): Promise<boolean> {
  return fs.promises.stat(path).then(
    () => true,
    () => false,
  );
}

/**
 * Converts `source` into a new image `target` of `format`, like `qemu-img convert -O format`:
 * the same decisions as qemu-img (so a qcow2 target comes out as qemu-img makes it), the target
 * created with the size of the sources (each rounded up to 512 bytes), then written and closed.
 *
 * @example
 * await convert({ source: 'disk.raw', target: 'disk.qcow2', format: 'qcow2', options: { compress: true } });
 */
export async function convert(job: ConvertOptions): Promise<void> {
  const o = job.options ?? {};
  const given = Array.isArray(job.source) ? (job.source as readonly (string | Image)[]) : [job.source as string | Image];
  if (given.length === 0) throw new UsageError('Must specify image file name');
  checkOptions(job.format, o, given.length);
  job.signal?.throwIfAborted();

  const owned: Image[] = [];
  let target: Image | undefined;
  let pool: CompressPool | undefined;
  let created = false;
  try {
    const sources: Image[] = [];
    for (const s of given) {
      if (typeof s !== 'string') {
        sources.push(s);
        continue;
      }
      const img = await openImage(s, { format: job.sourceFormat, readOnly: true });
      owned.push(img);
      sources.push(img);
    }
    const size = sources.reduce((n, img) => n + Math.ceil(img.size() / SECTOR) * SECTOR, 0);
    created = !(await exists(job.target));
    await createTarget(job.target, job.format, o, size);
    const sparseSize = o.sparseSize ?? 4096;
    target = await openImage(job.target, {
      format: job.format,
      readOnly: false,
      // qemu-img convert's default target cache mode is `unsafe`: no flush reaches the disk.
      noFlush: !o.sync,
      // -c writes one small compressed cluster at a time: synchronous writes skip a
      // thread-pool round trip each.
      io: o.compress ? 'sync' : undefined,
      // qemu-img opens its target with BDRV_O_UNMAP unless -S 0.
      unmap: sparseSize !== 0,
    });
    if (o.compress) {
      const type = o.compressionType ?? 'zlib';
      // zstd (zstd-napi) is cheaper on this thread than on workers; zlib needs every core.
      pool = createCompressPool(type, { threads: type === 'zstd' ? 0 : undefined });
    }
    await convertCopy(sources, target, {
      minSparse: sparseSize,
      compressed: o.compress ?? false,
      clusterSize: target.clusterSize ?? 0,
      // A new target reads as zeroes (qcow2_has_zero_init, file-posix).
      hasZeroInit: true,
      targetHasBacking: o.backingFile !== undefined,
      targetBackingSize: o.backingFile !== undefined ? target.backing?.size() : undefined,
      rateLimit: o.rateLimit,
      progress: job.progress && ((pct) => job.progress!(pct / 100)),
      compressor: pool,
      compressorThreads: pool?.threads,
      // A raw target's layout does not depend on write order (a qcow2 one's does); a rate
      // limit meters writes one at a time, as qemu's throttle sees them.
      parallelWrites: job.format === 'raw' && !o.rateLimit ? 4 : 1,
      signal: job.signal,
    });
    if (o.sync) await target.flush();
    const done = target;
    target = undefined;
    await done.close();
    job.progress?.(1);
  } catch (err) {
    if (target !== undefined) await target.close().catch(() => undefined);
    target = undefined;
    if (created) await fs.promises.rm(job.target, { force: true }).catch(() => undefined);
    throw err;
  } finally {
    await pool?.close();
    for (const img of owned) await img.close().catch(() => undefined);
  }
}
