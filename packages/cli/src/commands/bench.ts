/**
 * `tsimg bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n]
 * [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache]
 * [-w] [-U] filename` — qemu-img 7.2's img_bench: its option checks and messages, its two or
 * three lines of output, the request loop of @tsimg/image's `bench`, exit status 1 on failure.
 */
import { bench, type BenchOptions } from '@tsimg/image';
import { INT_MAX, TsimgError } from '@tsimg/raw';
import type { CommandRunner } from '../command.js';
import {
  CACHE_MODES,
  expectOneFilename,
  FORMAT_OPTION,
  getoptExit,
  HELP_OPTION,
  IMAGE_SOURCE_OPTIONS,
  notSupportedExit,
} from '../command-options.js';
import { CliExit } from '../exit.js';
import { interruptsOf } from '../interrupt.js';
import { getoptLong } from '../getopt.js';
import { openCommandImage } from '../image-open.js';
import { probedRaw, probedRawWarning } from '../raw-probe-warning.js';
import { lockWarnings } from '../lock-messages.js';
import { cvtnum, strtou64Auto } from '../options.js';
import { createProgress, PROGRESS_OPTION, progressMode } from '../progress.js';

const LONG = [
  HELP_OPTION,
  FORMAT_OPTION,
  ...IMAGE_SOURCE_OPTIONS,
  { name: 'flush-interval', hasArg: true, key: 'flush-interval' },
  { name: 'pattern', hasArg: true, key: 'pattern' },
  { name: 'no-drain', hasArg: false, key: 'no-drain' },
  PROGRESS_OPTION,
];

const AIO_MODES = ['native', 'threads', 'io_uring'];

const USAGE =
  'usage: tsimg bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] ' +
  '[-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename\n';

/** qemu_strtoul(text, NULL, 0) bounded by `max`, else CliExit with `message`. */
function ulong(text: string, max: number, message: string): number {
  const v = strtou64Auto(text);
  if (typeof v !== 'bigint' || v > BigInt(max)) throw new CliExit(1, message);
  return Number(v);
}

interface BenchArgs extends BenchOptions {
  filename: string;
  format?: string;
  imageOpts: boolean;
  forceShare: boolean;
  cache: string;
  nativeAio: boolean;
  /** `--progress=json` (bench has no `-p` text in qemu-img). */
  jsonProgress: boolean;
}

function parseArgs(argv: string[]): BenchArgs | undefined {
  const parsed = getoptLong(argv, ':hc:d:f:ni:o:qs:S:t:wU', LONG, 'bench');
  if (parsed.error) getoptExit(parsed.error);
  const a: Omit<BenchArgs, 'filename' | 'step'> & { step: number } = {
    count: 75000, depth: 64, offset: 0, bufferSize: 4096, step: 0, write: false, pattern: 0,
    flushInterval: 0, drainOnFlush: true, imageOpts: false, forceShare: false, cache: 'writeback', nativeAio: false, jsonProgress: false,
  };
  for (const { key, value } of parsed.options) {
    const v = value!;
    switch (key) {
      case 'h':
        return undefined;
      case 'c':
        a.count = ulong(v, INT_MAX, 'Invalid request count specified');
        break;
      case 'd':
        a.depth = ulong(v, INT_MAX, 'Invalid queue depth specified');
        break;
      case 'f':
        a.format = v;
        break;
      case 'n':
        a.nativeAio = true;
        break;
      case 'i':
        if (!AIO_MODES.includes(v)) throw new CliExit(1, `Invalid aio option: ${v}`);
        a.nativeAio = v === 'native';
        break;
      case 'o':
        a.offset = Number(cvtnum('offset', v));
        break;
      case 'q':
        break; // qemu's bench prints its lines even when quiet
      case 's':
        a.bufferSize = Number(cvtnum('buffer size', v, 0n, BigInt(INT_MAX)));
        break;
      case 'S':
        a.step = Number(cvtnum('step_size', v, 0n, BigInt(INT_MAX)));
        break;
      case 't':
        if (!CACHE_MODES.has(v)) throw new CliExit(1, 'Invalid cache mode');
        a.cache = v;
        break;
      case 'w':
        a.write = true;
        break;
      case 'progress':
        if (progressMode(value) === 'json') a.jsonProgress = true;
        else throw new CliExit(1, 'bench reports progress as JSON only (--progress=json)');
        break;
      case 'U':
        a.forceShare = true;
        break;
      case 'pattern':
        a.pattern = ulong(v, 0xff, 'Invalid pattern byte specified');
        break;
      case 'flush-interval':
        a.flushInterval = ulong(v, INT_MAX, 'Invalid flush interval specified');
        break;
      case 'no-drain':
        a.drainOnFlush = false;
        break;
      case 'image-opts':
        a.imageOpts = true;
        break;
      default:
        notSupportedExit(key);
    }
  }
  const filename = expectOneFilename(parsed.operands);
  if (!a.write && a.flushInterval) throw new CliExit(1, '--flush-interval is only available in write tests');
  if (a.flushInterval && a.flushInterval < a.depth) throw new CliExit(1, "Flush interval can't be smaller than depth");
  // qemu issues no request at all with depth 0 and waits for ever; tsimg refuses instead.
  if (a.depth === 0 && a.count > 0) throw new CliExit(1, 'Invalid queue depth specified');
  return { ...a, filename, step: a.step || a.bufferSize };
}

export const run: CommandRunner = async (argv, io) => {
  const args = parseArgs(argv);
  if (args === undefined) {
    io.stdout(USAGE);
    return 0;
  }
  const direct = args.cache === 'none' || args.cache === 'off' || args.cache === 'directsync';
  if (args.nativeAio && !direct) {
    throw new CliExit(1, `Could not open '${args.filename}': aio=native was specified, but it requires cache.direct=on, which was not specified.`);
  }
  const image = await openCommandImage(args.filename, {
    format: args.format,
    imageOpts: args.imageOpts,
    readOnly: !args.write,
    forceShare: args.forceShare,
    noFlush: args.cache === 'unsafe',
    onWarning: lockWarnings(io, args.write),
  });
  try {
    if (args.write && probedRaw(image, args)) io.stderr(probedRawWarning(image.filename));
    io.stdout(
      `Sending ${args.count} ${args.write ? 'write' : 'read'} requests, ${args.bufferSize} bytes each, ${args.depth} in parallel ` +
        `(starting at offset ${args.offset}, step size ${args.step})\n`,
    );
    if (args.flushInterval) io.stdout(`Sending flush every ${args.flushInterval} requests\n`);
    const started = performance.now();
    const progress = createProgress(io, false, 1.0, { json: args.jsonProgress });
    progress.setTotal(args.count * args.bufferSize);
    if (args.jsonProgress) args.onRequest = (done) => progress.print(Math.fround(Math.fround(done / args.count) * 100), 0);
    try {
      // A write run holds SIGINT/SIGTERM until its requests are done (interrupt.ts).
      await (args.write ? interruptsOf(io).hold(() => bench(image, args)) : bench(image, args));
    } catch (err) {
      throw new CliExit(1, err instanceof TsimgError ? err.message : String(err));
    } finally {
      progress.end();
    }
    io.stdout(`Run completed in ${((performance.now() - started) / 1000).toFixed(3)} seconds.\n`);
  } finally {
    await image.close();
  }
  return 0;
};
