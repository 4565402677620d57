/**
 * `tsimg commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base]
 * [-r rate_limit] [-d] [-p] filename` — qemu-img 7.2's img_commit: the top and the images
 * between are copied into the base (the top's backing file, or `-b`, any image below it), the
 * base grows to the top's size, and the top is emptied unless `-d` or `-b` says to leave it.
 * "Image committed." on success; qemu's messages and exit status 1 otherwise.
 */
import { commitImage, findBackingImage, type Image } from '@tsimg/image';
import { errorWithCode, strerror, TsimgError } from '@tsimg/raw';
import type { CliIO, CommandRunner } from '../command.js';
import {
  CACHE_MODES, expectOneFilename, getoptExit, HELP_OPTION, IMAGE_OPTS_OPTION, OBJECT_OPTION,
} from '../command-options.js';
import { CliExit } from '../exit.js';
import { interruptsOf } from '../interrupt.js';
import { getoptLong } from '../getopt.js';
import { openCommandImage } from '../image-open.js';
import { probedRaw, probedRawWarning } from '../raw-probe-warning.js';
import { lockWarnings } from '../lock-messages.js';
import { cvtnum } from '../options.js';
import { createProgress, PROGRESS_OPTION, progressMode } from '../progress.js';
import { addObject } from '../object-option.js';

const HELP =
  'usage: tsimg commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename\n\n' +
  "  '-b' names the image to commit into (default: the backing file); it implies '-d'\n" +
  "  '-d' leaves the top image as it is instead of emptying it\n";

interface CommitArgs {
  filename: string;
  format?: string;
  cache: string;
  base?: string;
  drop: boolean;
  progress: boolean;
  /** `--progress=json`. */
  jsonProgress: boolean;
  quiet: boolean;
  rateLimit: number;
  imageOpts: boolean;
  /** `--object secret,...` data by id. */
  secrets: Map<string, Uint8Array>;
}

function parseArgs(argv: string[], io: CliIO): CommitArgs | undefined {
  const parsed = getoptLong(argv, ':f:ht:b:dpqr:', [HELP_OPTION, OBJECT_OPTION, IMAGE_OPTS_OPTION, PROGRESS_OPTION], 'commit');
  if (parsed.error) getoptExit(parsed.error);
  const a: Omit<CommitArgs, 'filename'> = {
    cache: 'writeback', drop: false, progress: false, jsonProgress: false, quiet: false, rateLimit: 0, imageOpts: false, secrets: new Map(),
  };
  for (const o of parsed.options) {
    switch (o.key) {
      case 'h':
        io.stdout(HELP);
        return undefined;
      case 'f':
        a.format = o.value;
        break;
      case 't':
        a.cache = o.value!;
        break;
      case 'b':
        a.base = o.value;
        a.drop = true; // -b implies -d
        break;
      case 'd':
        a.drop = true;
        break;
      case 'p':
        a.progress = true;
        break;
      case 'progress':
        if (progressMode(o.value) === 'json') a.jsonProgress = true;
        else a.progress = true;
        break;
      case 'q':
        a.quiet = true;
        break;
      case 'r':
        a.rateLimit = Number(cvtnum('rate limit', o.value!));
        break;
      case 'image-opts':
        a.imageOpts = true;
        break;
      case 'object':
        addObject(o.value!, a.secrets);
        break;
      default:
        break;
    }
  }
  if (a.quiet) a.progress = false;
  return { ...a, filename: expectOneFilename(parsed.operands) };
}

/**
 * block_job_ratelimit_get_delay over 100 ms slices (BLOCK_JOB_SLICE_TIME): once a slice's
 * quota is used, the job sleeps until the bytes sent fit the rate.
 */
function jobRateLimit(bytesPerSecond: number): (bytes: number) => Promise<void> {
  const sliceMs = 100;
  const quota = (bytesPerSecond * sliceMs) / 1000;
  let sliceStart = performance.now();
  let dispatched = 0;
  return async (bytes) => {
    const now = performance.now();
    if (now - sliceStart >= sliceMs) {
      sliceStart += Math.floor((now - sliceStart) / sliceMs) * sliceMs;
      dispatched = 0;
    }
    dispatched += bytes;
    if (dispatched <= quota) return;
    const wait = sliceStart + (dispatched / quota) * sliceMs - now;
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, wait)));
  };
}

function open(a: CommitArgs, io: CliIO, writableBacking: { depth: number; resize: boolean } | undefined): Promise<Image> {
  return openCommandImage(a.filename, {
    // The first open only finds the base (qemu opens once and reopens the base): it must not
    // store the top's bitmaps a second time.
    holdBitmaps: writableBacking !== undefined,
    format: a.format,
    readOnly: false,
    imageOpts: a.imageOpts,
    secrets: a.secrets,
    unmap: true, // img_commit: BDRV_O_RDWR | BDRV_O_UNMAP
    noFlush: a.cache === 'unsafe',
    writableBacking,
    onWarning: lockWarnings(io, true),
  });
}

/**
 * The base image and the top it is opened under, as img_commit finds them: the chain is opened
 * as img_open opens it (backing files read-only), the base looked up, and the chain opened again
 * with the base read/write — qemu's bdrv_reopen_set_read_only, whose errors name no image.
 */
async function findBase(a: CommitArgs, io: CliIO, first: Image): Promise<{ top: Image; base: Image }> {
  let depth = 1;
  let resize = false;
  try {
    let base = first.backing;
    if (a.base === undefined) {
      if (base === undefined) throw new CliExit(1, 'Image does not have a backing file');
    } else {
      const found = await findBackingImage(first, a.base);
      if (found === undefined) throw new CliExit(1, `Did not find '${a.base}' in the backing chain of '${a.filename}'`);
      ({ depth, image: base } = found);
    }
    resize = base.size() < first.size();
  } finally {
    await first.close();
  }
  let top: Image;
  try {
    top = await open(a, io, { depth, resize });
  } catch (err) {
    if (!(err instanceof TsimgError)) throw err;
    let msg = err.message;
    const prefix = `Could not open '${a.filename}': `;
    if (msg.startsWith(prefix)) msg = msg.slice(prefix.length);
    while (msg.startsWith('Could not open backing file: ')) msg = msg.slice('Could not open backing file: '.length);
    throw errorWithCode(err.code, msg, { cause: err, errno: err.errno });
  }
  let base: Image | undefined = top;
  for (let d = 0; d < depth && base !== undefined; d++) base = base.backing;
  if (base === undefined) {
    await top.close();
    throw new CliExit(1, `Did not find '${a.base}' in the backing chain of '${a.filename}'`);
  }
  return { top, base };
}

export const run: CommandRunner = async (argv, io) => {
  const a = parseArgs(argv, io);
  if (a === undefined) return 0;
  if (!CACHE_MODES.has(a.cache)) throw new CliExit(1, `Invalid cache option: ${a.cache}`);
  const first = await open(a, io, undefined);
  if (probedRaw(first, a)) io.stderr(probedRawWarning(first.filename));
  const progress = createProgress(io, a.progress, 1.0, { json: a.jsonProgress });
  progress.print(0, 100);
  let opened: { top: Image; base: Image } | undefined;
  try {
    opened = await findBase(a, io, first);
    const { top, base } = opened;
    try {
      // SIGINT/SIGTERM wait until the chain is consistent again (interrupt.ts).
      await interruptsOf(io).hold(() =>
        commitImage(top, base, {
          drop: a.drop,
          onProgress: (current, total) => {
            progress.setTotal(total);
            progress.print(Math.fround(Math.fround(current / total) * 100), 0);
          },
          throttle: a.rateLimit > 0 ? jobRateLimit(a.rateLimit) : undefined,
        }),
      );
    } catch (err) {
      if (err instanceof TsimgError && !err.message.startsWith('Failed to empty')) {
        throw new CliExit(1, `Block job failed: ${err.errno !== undefined ? strerror(err.errno) : err.message}`);
      }
      throw err;
    }
    progress.print(100, 0);
  } finally {
    progress.end();
    await opened?.top.close();
  }
  if (!a.quiet) io.stdout('Image committed.\n');
  return 0;
};
