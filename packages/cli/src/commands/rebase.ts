/**
 * `tsimg rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache]
 * [-p] [-u] [-c] -b backing_file [-F backing_fmt] filename` — qemu-img 7.2's img_rebase: in safe
 * mode the image gets what its old backing chain shows and the new one would not (so its
 * content stays the same), then its header names the new backing file; `-b ""` flattens it;
 * `-u` changes only the header. `-c` (from qemu 8.2) writes those clusters compressed.
 * qemu's messages; exit status 1 on any failure.
 */
import { changeBackingFile, findBackingImage, fullBackingFilename, openImage, rebaseImage, type Image, QEMU_FORMATS } from '@tsimg/image';
import { strerror, TsimgError } from '@tsimg/raw';
import type { CliIO, CommandRunner } from '../command.js';
import {
  CACHE_MODES, expectOneFilename, FORCE_SHARE_OPTION, getoptExit, HELP_OPTION, IMAGE_OPTS_OPTION, OBJECT_OPTION, usageExit,
} from '../command-options.js';
import { CliExit } from '../exit.js';
import { interruptsOf } from '../interrupt.js';
import { getoptLong } from '../getopt.js';
import { openCommandImage } from '../image-open.js';
import { probedRaw, probedRawWarning } from '../raw-probe-warning.js';
import { lockWarnings } from '../lock-messages.js';
import { createProgress, PROGRESS_OPTION, progressMode, type Progress } from '../progress.js';
import { addObject } from '../object-option.js';

const HELP =
  'usage: tsimg rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] [-c] -b backing_file [-F backing_fmt] filename\n\n' +
  "  '-u' only changes the backing file name in the header (unsafe mode)\n" +
  "  '-b \"\"' removes the backing file: the image then holds everything (flattened)\n" +
  "  '-c' writes the clusters that change compressed\n";

interface RebaseArgs {
  filename: string;
  format?: string;
  backingFormat?: string;
  backing?: string;
  unsafe: boolean;
  progress: boolean;
  /** `--progress=json`. */
  jsonProgress: boolean;
  quiet: boolean;
  compress: boolean;
  cache: string;
  srcCache: string;
  imageOpts: boolean;
  /** `--object secret,...` data by id. */
  secrets: Map<string, Uint8Array>;
  forceShare: boolean;
}

function parseArgs(argv: string[], io: CliIO): RebaseArgs | undefined {
  const long = [HELP_OPTION, OBJECT_OPTION, IMAGE_OPTS_OPTION, FORCE_SHARE_OPTION, { name: 'compress', hasArg: false, key: 'c' }, PROGRESS_OPTION];
  const parsed = getoptLong(argv, ':hf:F:b:upt:T:qUc', long, 'rebase');
  if (parsed.error) getoptExit(parsed.error);
  const a: Omit<RebaseArgs, 'filename'> = {
    unsafe: false, progress: false, jsonProgress: false, quiet: false, compress: false, cache: 'writeback', srcCache: 'writeback', imageOpts: false, secrets: new Map(),
    forceShare: false,
  };
  for (const o of parsed.options) {
    switch (o.key) {
      case 'h':
        io.stdout(HELP);
        return undefined;
      case 'f':
        a.format = o.value;
        break;
      case 'F':
        a.backingFormat = o.value;
        break;
      case 'b':
        a.backing = o.value;
        break;
      case 'u':
        a.unsafe = true;
        break;
      case 'p':
        a.progress = true;
        break;
      case 'progress':
        if (progressMode(o.value) === 'json') a.jsonProgress = true;
        else a.progress = true;
        break;
      case 't':
        a.cache = o.value!;
        break;
      case 'T':
        a.srcCache = o.value!;
        break;
      case 'q':
        a.quiet = true;
        break;
      case 'c':
        a.compress = true;
        break;
      case 'image-opts':
        a.imageOpts = true;
        break;
      case 'U':
        a.forceShare = true;
        break;
      case 'object':
        addObject(o.value!, a.secrets);
        break;
      default:
        break;
    }
  }
  if (a.quiet) a.progress = false;
  const filename = expectOneFilename(parsed.operands);
  if (!a.unsafe && a.backing === undefined) usageExit('Must specify backing file (-b) or use unsafe mode (-u)');
  return { ...a, filename };
}

/** The new backing image of a safe rebase: one of the image's own chain, or opened read-only. */
async function openNewBacking(a: RebaseArgs, top: Image, name: string): Promise<{ image: Image; inChain: boolean }> {
  const full = fullBackingFilename(top.filename, name);
  if (full === undefined) throw new CliExit(1, `Could not resolve backing filename: Cannot use relative backing file names for '${top.filename}'`);
  const found = await findBackingImage(top, full);
  if (found !== undefined) return { image: found.image, inChain: true };
  try {
    return { image: await openImage(full, { format: a.backingFormat, readOnly: true, forceShare: a.forceShare }), inChain: false };
  } catch (err) {
    if (!(err instanceof TsimgError)) throw err;
    // blk_new_open's own error, without the "Could not open" img_open adds elsewhere.
    const prefix = `Could not open '${full}': `;
    const reason = err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
    const e = new CliExit(1, `Could not open new backing file '${name}': ${reason}`);
    throw Object.assign(e, { cause: err });
  }
}

/** bdrv_change_backing_file's failures, as img_rebase words them. */
function changeFailure(err: unknown, given: string | undefined, format: string | undefined): CliExit {
  const errno = err instanceof TsimgError ? err.errno : undefined;
  const name = given === '' ? undefined : given;
  const shown = given ?? '(null)';
  if (errno === 'ENOSPC') return new CliExit(1, `Could not change the backing file to '${shown}': No space left in the file header`);
  if (errno === 'EINVAL' && name !== undefined && format === undefined) {
    return new CliExit(1, `Could not change the backing file to '${shown}': backing format must be specified`);
  }
  return new CliExit(1, `Could not change the backing file to '${shown}': ${strerror(errno ?? 'EIO')}`);
}

async function rebase(a: RebaseArgs, io: CliIO, progress: Progress): Promise<void> {
  if (!CACHE_MODES.has(a.cache)) throw new CliExit(1, `Invalid cache option: ${a.cache}`);
  if (!CACHE_MODES.has(a.srcCache)) throw new CliExit(1, `Invalid source cache option: ${a.srcCache}`);
  // Unsafe mode ignores the old backing file: it may be the one that moved.
  const top = await openCommandImage(a.filename, {
    format: a.format,
    readOnly: false,
    imageOpts: a.imageOpts,
    secrets: a.secrets,
    backing: !a.unsafe,
    noFlush: a.cache === 'unsafe',
    onWarning: lockWarnings(io, true),
  });
  if (probedRaw(top, a)) io.stderr(probedRawWarning(top.filename));
  progress.setTotal(top.size());
  let opened: Image | undefined;
  try {
    if (a.compress && top.writeCompressed === undefined) throw new CliExit(1, 'Compression not supported for this file format');
    if (a.backingFormat !== undefined && !QEMU_FORMATS.has(a.backingFormat)) throw new CliExit(1, `Invalid format name: '${a.backingFormat}'`);
    const name = a.backing === '' ? undefined : a.backing;
    if (!a.unsafe) {
      let newBacking: Image | undefined;
      let inChain = false;
      if (name !== undefined) {
        ({ image: newBacking, inChain } = await openNewBacking(a, top, name));
        if (!inChain) opened = newBacking;
      }
      await rebaseImage(top, {
        newBacking,
        inChain,
        compress: a.compress,
        onPiece: (pieces) => progress.print(Math.fround(100 / pieces), 100),
      });
    }
    const format = name === undefined ? undefined : a.backingFormat;
    try {
      await changeBackingFile(top, name, format);
    } catch (err) {
      throw changeFailure(err, a.backing, format);
    }
    progress.print(100, 0);
  } finally {
    await opened?.close().catch(() => undefined);
    await top.close();
  }
}

export const run: CommandRunner = async (argv, io) => {
  const a = parseArgs(argv, io);
  if (a === undefined) return 0;
  const progress = createProgress(io, a.progress, 2.0, { json: a.jsonProgress });
  progress.print(0, 100);
  try {
    // SIGINT/SIGTERM wait until the image and its header are consistent (interrupt.ts).
    await interruptsOf(io).hold(() => rebase(a, io, progress));
  } finally {
    progress.end();
  }
  return 0;
};
