/**
 * `tsimg convert`: qemu-img 7.2's img_convert — option checks in qemu's order and with its
 * messages, the target created as `bdrv_create` would (no "Formatting" line), then the generic
 * copy loop `convertCopy` of @tsimg/image, which makes the same allocation decisions as qemu's
 * in-order convert so a qcow2 target comes out byte for byte the same.
 */
import { convertCopy, DEFAULT_FORMATS, findFormat, type Image } from '@tsimg/image';
import { createCompressPool, type CompressPool, type Qcow2Image } from '@tsimg/qcow2';
import { BDRV_SECTOR_SIZE } from '@tsimg/raw';
import { CliExit } from '../exit.js';
import { getoptLong } from '../getopt.js';
import { CACHE_MODES, getoptExit, HELP_OPTION, IMAGE_SOURCE_OPTIONS } from '../command-options.js';
import type { CliIO, CommandRunner } from '../command.js';
import { lockWarnings } from '../lock-messages.js';
import { printOptionHelp } from '../creation-options.js';
import { checkTargetOptions, type ConvertTargetArgs, createdFiles, creationOptions, prepareTarget } from '../convert-target.js';
import { addObject } from '../object-option.js';
import { corruptionLine, type LockOptions, openCommandImage, repairLog } from '../image-open.js';
import { CreatedFile } from '../created-file.js';
import { interruptsOf } from '../interrupt.js';
import { accumulateOptions, cvtnum, hasHelpOption, type QemuOpts } from '../options.js';
import { createProgress, PROGRESS_OPTION, progressMode, type Progress } from '../progress.js';
import { checkStreamArgs, convertToStreamTarget, isStreamTarget, salvageWarnings, spoolStdinSources } from '../convert-stream.js';
import { parseSnapshotParam, type SnapshotParam } from '../snapshot-param.js';

const SECTOR = BDRV_SECTOR_SIZE;
/** qemu-img's MAX_BUF_SECTORS: the largest -S, in sectors. */
const MAX_BUF_SECTORS = 32768;
/** qemu-img's MAX_COROUTINES: the largest -m. */
const MAX_COROUTINES = 16;

const LONG = [
  HELP_OPTION,
  ...IMAGE_SOURCE_OPTIONS,
  { name: 'target-image-opts', hasArg: false, key: 'target-image-opts' },
  { name: 'salvage', hasArg: false, key: 'salvage' },
  { name: 'target-is-zero', hasArg: false, key: 'target-is-zero' },
  { name: 'bitmaps', hasArg: false, key: 'bitmaps' },
  { name: 'skip-broken-bitmaps', hasArg: false, key: 'skip-broken' },
  PROGRESS_OPTION,
];

const USAGE =
  'usage: tsimg convert [--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] ' +
  '[--bitmaps [--skip-broken-bitmaps]] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] ' +
  '[-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] ' +
  '[-r rate_limit] [-m num_coroutines] [-W] [--salvage] filename [filename2 [...]] output_filename\n';

/** Everything the command line says, after getopt. */
interface ConvertArgs extends ConvertTargetArgs {
  fmt?: string;
  snapshot?: SnapshotParam;
  snapshotName?: string;
  minSparse: number;
  explicitSparse: boolean;
  copyRange: boolean;
  progress: boolean;
  /** `--progress=json`: JSON progress lines on stderr. */
  jsonProgress: boolean;
  quiet: boolean;
  skipCreate: boolean;
  targetIsZero: boolean;
  imageOpts: boolean;
  salvage: boolean;
  /** -r: bytes per second the target may be written at (0: unlimited). */
  rateLimit: number;
  bitmaps: boolean;
  skipBroken: boolean;
  srcCache: string;
  files: string[];
}

function parseArgs(argv: string[], io: CliIO): ConvertArgs | number {
  const parsed = getoptLong(argv, ':hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:', LONG, 'convert');
  const a: ConvertArgs = {
    outFmt: 'raw',
    minSparse: 8 * SECTOR,
    explicitSparse: false,
    compressed: false,
    copyRange: false,
    progress: false,
    jsonProgress: false,
    quiet: false,
    skipCreate: false,
    targetIsZero: false,
    imageOpts: false,
    targetImageOpts: false,
    salvage: false,
    rateLimit: 0,
    bitmaps: false,
    skipBroken: false,
    forceShare: false,
    cache: 'unsafe',
    srcCache: 'writeback',
    files: parsed.operands,
    secrets: new Map(),
  };
  let outFmt: string | undefined;
  for (const { key, value } of parsed.options) {
    switch (key) {
      case 'h':
        io.stdout(USAGE);
        return 0;
      case 'f':
        a.fmt = value;
        break;
      case 'O':
        outFmt = value;
        break;
      case 'B':
        a.outBase = value;
        break;
      case 'C':
        a.copyRange = true;
        break;
      case 'c':
        a.compressed = true;
        break;
      case 'F':
        a.backingFmt = value;
        break;
      case 'o':
        a.options = accumulateOptions(a.options, value!);
        break;
      case 'l':
        if (value!.startsWith('snapshot.')) a.snapshot = parseSnapshotParam(value!);
        else a.snapshotName = value;
        break;
      case 'S':
        a.minSparse = sparseSize(value!);
        a.explicitSparse = true;
        break;
      case 'p':
        a.progress = true;
        break;
      case 'progress':
        if (progressMode(value) === 'json') a.jsonProgress = true;
        else a.progress = true;
        break;
      case 't':
        a.cache = value!;
        break;
      case 'T':
        a.srcCache = value!;
        break;
      case 'q':
        a.quiet = true;
        break;
      case 'n':
        a.skipCreate = true;
        break;
      case 'm':
        checkCoroutines(value!);
        break; // tsimg keeps its own number of requests in flight; writes stay in order either way
      case 'W':
        break; // out-of-order writes are not needed for speed here and would change the layout
      case 'U':
        a.forceShare = true;
        break;
      case 'r':
        a.rateLimit = Number(cvtnum('rate limit', value!));
        break;
      case 'object':
        addObject(value!, a.secrets);
        break;
      case 'image-opts':
        a.imageOpts = true;
        break;
      case 'salvage':
        a.salvage = true;
        break;
      case 'target-image-opts':
        a.targetImageOpts = true;
        break;
      case 'target-is-zero':
        a.targetIsZero = true;
        break;
      case 'bitmaps':
        a.bitmaps = true;
        break;
      case 'skip-broken':
        a.skipBroken = true;
        break;
    }
  }
  if (parsed.error) getoptExit(parsed.error);
  if (outFmt !== undefined) a.outFmt = outFmt;
  else if (a.targetImageOpts) a.outFmt = '';
  return a;
}

/** `-S`: the sparse-detection size in bytes, a multiple of 512 up to qemu's MAX_BUF_SECTORS. */
function sparseSize(value: string): number {
  const bytes = cvtnum('buffer size for sparse output', value);
  if (bytes % BigInt(SECTOR) !== 0n || bytes / BigInt(SECTOR) > BigInt(MAX_BUF_SECTORS)) {
    throw new CliExit(
      1,
      'Invalid buffer size for sparse output specified. Valid sizes are multiples of ' +
        `${SECTOR} up to ${MAX_BUF_SECTORS * SECTOR}. Select 0 to disable sparse detection ` +
        '(fully allocates output).',
    );
  }
  return Number(bytes);
}

/** `-m`: qemu's range check of the number of coroutines (tsimg then ignores the number). */
function checkCoroutines(value: string): void {
  const n = /^\s*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.test(value) ? Number(value) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > MAX_COROUTINES) {
    throw new CliExit(1, `Invalid number of coroutines. Allowed number of coroutines is between 1 and ${MAX_COROUTINES}`);
  }
}

/** qemu-img's checks that need no file, in its order. */
function checkArgs(a: ConvertArgs): void {
  if (a.skipBroken && !a.bitmaps) throw new CliExit(1, 'Use of --skip-broken-bitmaps requires --bitmaps');
  if (a.compressed && a.copyRange) throw new CliExit(1, 'Cannot enable copy offloading when -c is used');
  if (a.explicitSparse && a.copyRange) throw new CliExit(1, 'Cannot enable copy offloading when -S is used');
  if (a.copyRange && a.salvage) throw new CliExit(1, 'Cannot use copy offloading in salvaging mode');
  if (a.targetImageOpts && !a.skipCreate) throw new CliExit(1, '--target-image-opts requires use of -n flag');
  if (a.skipCreate && a.options !== undefined) throw new CliExit(1, '-o has no effect when skipping image creation');
  if (a.targetIsZero && !a.skipCreate) throw new CliExit(1, '--target-is-zero requires use of -n flag');
}

export const run: CommandRunner = async (argv, io) => {
  const args = parseArgs(argv, io);
  if (typeof args === 'number') return args;
  checkArgs(args);
  const sources = args.files.slice(0, -1);
  const outFilename = args.files.length >= 2 ? args.files[args.files.length - 1] : undefined;

  if (args.options !== undefined && hasHelpOption(args.options)) {
    if (!args.outFmt) throw new CliExit(1, 'Option help requires a format be specified');
    try {
      return printOptionHelp(io, outFilename, args.outFmt);
    } catch (err) {
      throw new CliExit(1, err instanceof Error ? err.message : String(err));
    }
  }
  if (sources.length < 1) throw new CliExit(1, 'Must specify image file name');
  if (!CACHE_MODES.has(args.srcCache)) throw new CliExit(1, `Invalid source cache option: ${args.srcCache}`);

  // img_convert initialises progress with a 1% step (compare and rebase use 2%). An image
  // written to stdout leaves stdout to the image: the -p text goes to stderr then.
  const progressIo = outFilename === '-' ? { ...io, stdout: io.stderr } : io;
  const progress = createProgress(progressIo, args.progress && !args.quiet, 1.0, { json: args.jsonProgress });
  progress.print(0, 100);
  const opened: Image[] = [];
  let stdin: Awaited<ReturnType<typeof spoolStdinSources>> = { names: sources, cleanup: async () => undefined };
  let target: Image | undefined;
  let pool: CompressPool | undefined;
  // Beyond qemu-img: a target this convert creates (with its external data file) is removed
  // again unless the copy finishes.
  let created: CreatedFile[] = [];
  try {
    // qemu-img convert opens its sources with BDRV_O_NO_SHARE: nobody may write them meanwhile.
    stdin = await spoolStdinSources(sources);
    await openSources(args, stdin.names, opened, { noShare: true, forceShare: args.forceShare, onWarning: lockWarnings(io, false) });
    const totalBytes = opened.reduce((n, img) => n + Math.ceil(img.size() / SECTOR) * SECTOR, 0);
    progress.setTotal(totalBytes);
    const out = outFilename!;
    const toStream = await isStreamTarget(out);
    if (toStream) checkStreamArgs(args);

    const opts = args.skipCreate ? undefined : creationOptions(args, out, totalBytes);
    const outBaseParam = opts?.getString('backing_file');
    const outBase = outBaseParam ?? args.outBase;
    const targetHasBacking = outBase !== undefined;
    if (args.targetIsZero && targetHasBacking) {
      const message = 'Cannot use --target-is-zero when the destination image has a backing file';
      // qemu jumps out with its `ret` still 0 when -n skipped creation (only -n lets
      // --target-is-zero through): the error is printed, the target left alone, and the
      // status is 0, with the final progress line of a success.
      if (!args.skipCreate) throw new CliExit(1, message);
      io.stderr(`tsimg: ${message}\n`);
      progress.print(100, 0);
      return 0;
    }
    checkTargetOptions(args, opts, sources.length, outBase, outBaseParam);
    if (args.bitmaps) {
      if (sources.length > 1) throw new CliExit(1, 'Copying bitmaps only possible with single source');
      await checkBitmaps(opened[0]!, args.skipBroken);
    }

    if (toStream) {
      await interruptsOf(io).hold((signal) => convertToStreamTarget(args, opened, out, opts!, { progress, io, signal }));
      progress.print(100, 0);
      return 0;
    }
    if (opts) created = await createdFiles(out, opts);
    // From here on the target is written: a SIGINT/SIGTERM stops the copy at the next write and
    // lets what is in flight finish before the command ends (interrupt.ts).
    await interruptsOf(io).hold(async (signal) => {
      await prepareTarget(args, opened, out, opts, io);
      for (const f of created) await f.created();
      target = await openTarget(args, out, opts, io);
      await checkTarget(args, target, totalBytes);
      if (args.compressed) {
        const type = target.compressionType ?? 'zlib';
        // zstd (zstd-napi) is cheaper on this thread than on workers; zlib needs every core.
        pool = createCompressPool(type, { threads: type === 'zstd' ? 0 : undefined });
      }
      await copy(args, opened, target, { targetHasBacking, pool, progress, io, signal });
      if (args.bitmaps) await copyBitmaps(opened[0]!, target, args.skipBroken, io);
      await target.close();
      target = undefined;
    });
    created = [];
    progress.print(100, 0);
    return 0;
  } finally {
    // Killed by a signal, qemu-img ends its progress line with nothing.
    if (interruptsOf(io).received === undefined) progress.end();
    await pool?.close();
    // Unlinked while its locks are still held, so nobody opens the partial file meanwhile.
    for (const f of created) await f.remove();
    if (target) await target.close().catch(() => undefined);
    for (const img of opened) await img.close().catch(() => undefined);
    await stdin.cleanup();
  }
};

/**
 * Opens every source into `opened` (so the caller closes whatever was opened, even on failure),
 * then, with `-l`, reopens the first on the snapshot asked for.
 */
async function openSources(args: ConvertArgs, sources: readonly string[], opened: Image[], locks: LockOptions): Promise<void> {
  for (const name of sources) {
    opened.push(await openCommandImage(name, { format: args.fmt, readOnly: true, imageOpts: args.imageOpts, secrets: args.secrets, ...locks }));
  }
  if (args.snapshot === undefined && args.snapshotName === undefined) return;
  if (args.snapshotName !== undefined && sources.length > 1) {
    throw new CliExit(1, 'No support for concatenating multiple snapshot');
  }
  // qemu loads the snapshot into the opened image; reopening on it gives the same view.
  const first = opened[0]!;
  // bdrv_snapshot_load_tmp needs a format with internal snapshots.
  if (first.listSnapshots === undefined) {
    throw new CliExit(
      1,
      `Failed to load snapshot: Block format '${first.format}' used by device '' does not support temporarily loading internal snapshots`,
    );
  }
  await first.close();
  opened[0] = await openCommandImage(sources[0]!, {
    format: args.imageOpts ? undefined : first.format,
    readOnly: true,
    imageOpts: args.imageOpts,
    snapshot: args.snapshot ?? args.snapshotName,
    secrets: args.secrets,
    ...locks,
  });
}

/** Opens the target read/write with the cache, I/O and unmap modes qemu-img convert uses. */
function openTarget(args: ConvertArgs, out: string, opts: QemuOpts | undefined, io: CliIO): Promise<Image> {
  const onWarning = lockWarnings(io, true);
  return openCommandImage(out, {
    secrets: args.secrets,
    // img_add_key_secrets: the creation options' key secret opens the new target.
    keySecret: opts?.getString('encrypt.key-secret') ?? opts?.getString('key-secret'),
    format: args.outFmt || undefined,
    readOnly: false,
    imageOpts: args.targetImageOpts,
    // qemu-img convert's default target cache mode is `unsafe`: no flush reaches the disk.
    noFlush: args.cache === 'unsafe',
    // -c writes one small compressed cluster at a time: synchronous writes skip a thread-pool
    // round trip each (the reads of the sources stay asynchronous).
    io: args.compressed ? 'sync' : undefined,
    // qemu-img opens its target with BDRV_O_UNMAP unless -S 0: clusters that zero writes
    // free are then punched out of the file as well.
    unmap: args.minSparse !== 0,
    // qemu repairs a dirty (lazy refcounts) target opened read/write, and says what it fixed.
    log: repairLog(io),
    onWarning,
  });
}

/** What the opened target must be able to take: bitmaps, compression, the sources' size. */
async function checkTarget(args: ConvertArgs, target: Image, totalBytes: number): Promise<void> {
  // bdrv_supports_persistent_dirty_bitmap: qcow2 v3 only
  if (args.bitmaps && (await target.listBitmaps?.()) === undefined) {
    throw new CliExit(1, `Format driver '${target.format}' does not support bitmaps`);
  }
  if (args.compressed && !findFormat(DEFAULT_FORMATS, target.format)?.writesCompressed) {
    throw new CliExit(1, 'Compression not supported for this file format');
  }
  if (args.skipCreate && target.size() < totalBytes) throw new CliExit(1, 'output file is smaller than input file');
}

/** The copy itself (convertCopy of @tsimg/image), with qemu's warnings and corruption lines. */
async function copy(
  args: ConvertArgs,
  opened: readonly Image[],
  target: Image,
  how: { targetHasBacking: boolean; pool: CompressPool | undefined; progress: Progress; io: CliIO; signal: AbortSignal },
): Promise<void> {
  const { targetHasBacking, pool, progress, io, signal } = how;
  try {
    await convertCopy(opened, target, {
      minSparse: args.minSparse,
      compressed: args.compressed,
      clusterSize: target.clusterSize ?? 0,
      // A new target reads as zeroes (qcow2_has_zero_init, file-posix); with -n only if told.
      hasZeroInit: args.skipCreate ? args.targetIsZero : (target.hasZeroInit?.() ?? true),
      targetHasBacking,
      targetBackingSize: targetHasBacking && !args.skipCreate ? target.backing?.size() : undefined,
      salvage: args.salvage,
      rateLimit: args.rateLimit,
      warn: salvageWarnings(io, args.quiet),
      progress: (pct) => progress.print(pct, 0),
      compressor: pool,
      compressorThreads: pool?.threads,
      // A raw target's layout does not depend on write order (a qcow2 one's does, and so may
      // any other format's: only raw is known safe); -r meters writes one at a time, as qemu's
      // throttle sees them.
      parallelWrites: target.format === 'raw' && !args.rateLimit ? 4 : 1,
      signal,
    });
  } catch (err) {
    // qemu's qcow2 driver prints its corruption line before qemu-img's own message.
    const line = corruptionLine(err);
    if (line) io.stderr(line);
    throw err;
  }
}

/** convert_check_bitmaps: refuses inconsistent bitmaps unless --skip-broken-bitmaps. */
async function checkBitmaps(source: Image, skipBroken: boolean): Promise<void> {
  const bitmaps = await bitmapStates(source);
  for (const b of bitmaps) {
    if (b.inconsistent && !skipBroken) {
      throw new CliExit(
        1,
        `Cannot copy inconsistent bitmap '${b.name}'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it`,
      );
    }
  }
}

/** The source's persistent bitmaps, each with whether it is inconsistent (in use). */
async function bitmapStates(source: Image): Promise<{ name: string; inconsistent: boolean }[]> {
  const bitmaps = await source.listBitmaps?.();
  if (bitmaps === undefined) throw new CliExit(1, 'Source lacks bitmap support');
  return bitmaps;
}

/**
 * convert_copy_bitmaps: every consistent persistent bitmap of the source, into the target;
 * with --skip-broken-bitmaps each inconsistent one is named in a warning (even under -q).
 */
async function copyBitmaps(source: Image, target: Image, skipBroken: boolean, io: CliIO): Promise<void> {
  if (skipBroken) {
    for (const b of await bitmapStates(source)) {
      if (b.inconsistent) io.stderr(`tsimg: warning: Skipping inconsistent bitmap '${b.name}'\n`);
    }
  }
  const { copyPersistentBitmaps } = await import('@tsimg/qcow2');
  await copyPersistentBitmaps(source as Qcow2Image, target as Qcow2Image);
}

