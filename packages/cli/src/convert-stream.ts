/**
 * `tsimg convert` beyond qemu-img: a target that cannot seek (`-`, a pipe or FIFO, a character
 * device such as /dev/stdout on a pipe) is written in one forward pass (convertToStream of
 * @tsimg/image) where qemu-img fails with "Could not resize file"; and a source read from a
 * pipe (`-` or /dev/stdin) is first spooled, sparse, into a temporary file, since every format
 * (and convert's progress) needs the source's size before the first byte.
 */
import { createWriteStream } from 'node:fs';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Writable } from 'node:stream';
import { convertToStream, imageWritable, qcow2CreateOptionsOf, StreamSink, type Image } from '@tsimg/image';
import { createCompressPool, type CompressPool } from '@tsimg/qcow2';
import { FileDevice } from '@tsimg/raw';
import { CliExit, errorMessage } from './exit.js';
import type { CliIO } from './command.js';
import { corruptionLine } from './image-open.js';
import type { QemuOpts } from './options.js';
import type { Progress } from './progress.js';

/** The names that mean standard input / standard output. */
const STDIN_NAMES = new Set(['-', '/dev/stdin']);

/** Whether `name` is a target convert must write forward only (see the module comment). */
export async function isStreamTarget(name: string): Promise<boolean> {
  if (name === '-') return true;
  const st = await stat(name).catch(() => undefined);
  return st !== undefined && (st.isFIFO() || st.isCharacterDevice() || st.isSocket());
}

/** What the command line asked for that a stream target cannot do, in one line. */
export function checkStreamArgs(a: { skipCreate: boolean; bitmaps: boolean; outFmt: string; targetImageOpts: boolean }): void {
  if (a.skipCreate || a.targetImageOpts) throw new CliExit(1, 'A stream target cannot be opened as an existing image (-n)');
  if (a.bitmaps) throw new CliExit(1, 'Copying bitmaps to a stream target is not supported');
  // convertToStream (@tsimg/image) lays out raw and qcow2 only: qcow2's metadata goes first,
  // planned from the sources' block status, which no ImageFormat member describes.
  if (a.outFmt !== 'raw' && a.outFmt !== 'qcow2') throw new CliExit(1, `Writing '${a.outFmt}' to a stream is not supported`);
}

/** Opens the stream target: standard output for `-`, else the named pipe or device. */
async function openStream(name: string): Promise<{ out: Writable; done: () => Promise<void> }> {
  if (name === '-') return { out: process.stdout, done: async () => undefined };
  const out = createWriteStream(name, { flags: 'w' });
  await new Promise<void>((resolve, reject) => {
    out.once('open', () => resolve());
    out.once('error', (err) => reject(new CliExit(1, `Could not open '${name}': ${errorMessage(err)}`)));
  });
  return {
    out,
    done: () => new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve()))),
  };
}

/**
 * convert's warning lines (--salvage): qemu's qcow2 driver prints its corruption line when it
 * meets the corruption (once per image, even with -q); the errors salvage swallowed carry it.
 */
export function salvageWarnings(io: CliIO, quiet: boolean): (message: string, causes: readonly unknown[]) => void {
  return (m, causes) => {
    for (const cause of causes) {
      const line = corruptionLine(cause);
      if (line) io.stderr(line);
    }
    if (!quiet) io.stderr(`tsimg: warning: ${m}\n`);
  };
}

/** Writes `opened` to the stream target `name` as `args.outFmt`; see the module comment. */
export async function convertToStreamTarget(
  args: { outFmt: string; compressed: boolean; minSparse: number; rateLimit: number; salvage: boolean; quiet: boolean },
  opened: readonly Image[],
  name: string,
  opts: QemuOpts,
  how: { progress: Progress; io: CliIO; signal: AbortSignal },
): Promise<void> {
  const format = args.outFmt as 'raw' | 'qcow2';
  let qcow2;
  if (format === 'qcow2') {
    const { options, encrypt } = qcow2CreateOptionsOf(opts);
    if (encrypt) throw new CliExit(1, 'Encryption is not supported when writing a stream');
    const { size: _size, ...rest } = options;
    qcow2 = rest;
  }
  const prealloc = opts.getString('preallocation');
  if (format === 'raw' && prealloc !== undefined && prealloc !== 'off') {
    throw new CliExit(1, 'Preallocation is not supported when writing a stream');
  }
  const total = opts.get('size')!.value as bigint;
  let pool: CompressPool | undefined;
  const { out, done } = await openStream(name);
  try {
    if (args.compressed) {
      const type = qcow2?.compressionType ?? 'zlib';
      pool = createCompressPool(type, { threads: type === 'zstd' ? 0 : undefined });
    }
    const sink = new StreamSink(out, Number(total));
    await convertToStream(opened, sink, {
      format,
      qcow2,
      minSparse: args.minSparse,
      rateLimit: args.rateLimit,
      salvage: args.salvage,
      warn: salvageWarnings(how.io, args.quiet),
      compressor: pool,
      progress: (pct) => how.progress.print(pct, 0),
      signal: how.signal,
    });
    await done();
  } catch (err) {
    const line = corruptionLine(err);
    if (line) how.io.stderr(line);
    throw err;
  } finally {
    await pool?.close();
  }
}

/**
 * Spools standard input into a temporary sparse file when a source names it and it is not a
 * regular file (a redirect from a file is opened as it is). Returns the names to open instead
 * and a cleanup to call at the end.
 */
export async function spoolStdinSources(sources: readonly string[]): Promise<{ names: string[]; cleanup: () => Promise<void> }> {
  const names = [...sources];
  const idx = names.findIndex((n) => STDIN_NAMES.has(n));
  if (idx < 0) return { names, cleanup: async () => undefined };
  if (names.filter((n) => STDIN_NAMES.has(n)).length > 1) throw new CliExit(1, 'Standard input can be read only once');
  const fh = await open('/dev/stdin', 'r').catch(() => undefined);
  const isFile = fh ? (await fh.stat()).isFile() : false;
  await fh?.close();
  if (isFile) {
    names[idx] = '/dev/stdin';
    return { names, cleanup: async () => undefined };
  }
  const dir = await mkdtemp(join(tmpdir(), 'tsimg-stdin-'));
  const cleanup = (): Promise<void> => rm(dir, { recursive: true, force: true });
  try {
    const path = join(dir, 'stdin.raw');
    const dev = await FileDevice.open(path, { create: true, noFlush: true });
    try {
      await pipeline(process.stdin, imageWritable(dev, { skipZeroes: true, extend: true }));
    } finally {
      await dev.close();
    }
    names[idx] = path;
    return { names, cleanup };
  } catch (err) {
    await cleanup();
    throw new CliExit(1, `Could not read standard input: ${errorMessage(err)}`);
  }
}
