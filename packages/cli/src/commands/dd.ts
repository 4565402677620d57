/**
 * `tsimg dd`: copies (part of) an image into a newly created one, with qemu-img 7.2's operands,
 * size arithmetic and messages (qemu-img.c img_dd). qemu copies `bs` bytes at a time; the
 * result only depends on the bytes and their order, so this copies in large chunks, in order.
 * Ranges the source reports as zero are never read: a raw output skips them (a new file reads
 * as zeroes already), a qcow2 output gets them written as zeroes, because qemu's plain writes
 * allocate those clusters too and the output should be laid out the same.
 */
import { blockStatusAbove, createOnNbd, NbdClient, nbdLocation, openImage as openOutput, QEMU_CREATABLE, QEMU_FORMATS, type Image } from '@tsimg/image';
import { strerror, TsimgError, type BlockDevice } from '@tsimg/raw';
import { creatableFormat, createImageFile, creationOpts } from '../creation-options.js';
import { CliExit, errorMessage } from '../exit.js';
import { getoptLong } from '../getopt.js';
import {
  FORCE_SHARE_OPTION,
  getoptExit,
  HELP_OPTION,
  IMAGE_OPTS_OPTION,
  notSupportedExit,
  OBJECT_OPTION,
} from '../command-options.js';
import { cvtnum } from '../options.js';
import { openCommandImage as openImage } from '../image-open.js';
import { lockHint, lockWarnings } from '../lock-messages.js';
import type { CliIO, CommandRunner } from '../command.js';
import { interruptsOf } from '../interrupt.js';
import { addObject } from '../object-option.js';

const LONG = [HELP_OPTION, IMAGE_OPTS_OPTION, OBJECT_OPTION, FORCE_SHARE_OPTION];

const INT64_MAX = (1n << 63n) - 1n;
const COPY_CHUNK = 4 * 1024 * 1024;

/** The operands after `=`, as qemu-img dd parses them. */
interface DdArgs {
  bs: bigint;
  count?: bigint;
  skip?: bigint;
  input?: string;
  output?: string;
}

function parseOperands(operands: readonly string[]): DdArgs {
  const args: DdArgs = { bs: 512n };
  for (const op of operands) {
    const eq = op.indexOf('=');
    const key = eq < 0 ? op : op.slice(0, eq);
    const value = op.slice(eq + 1);
    if (eq < 0) throw new CliExit(1, `unrecognized operand ${op}`);
    switch (key) {
      case 'bs':
        args.bs = cvtnum('bs', value, 1n, 2147483647n);
        break;
      case 'count':
        args.count = cvtnum('count', value);
        break;
      case 'if':
        args.input = value;
        break;
      case 'of':
        args.output = value;
        break;
      case 'skip':
        args.skip = cvtnum('skip', value);
        break;
      default:
        throw new CliExit(1, `unrecognized operand ${key}`);
    }
  }
  return args;
}

/** The strerror text qemu prints for a failed read or write. */
function ioText(err: unknown): string {
  return err instanceof TsimgError && err.errno !== undefined ? strerror(err.errno) : errorMessage(err);
}

/**
 * Copies `[from, to)` of `src` to `dst` at `from - shift`. Zero ranges of the source are not
 * read; they are skipped, or written as zeroes when `writeZeroRanges`.
 */
async function copyRange(
  src: Parameters<typeof blockStatusAbove>[0],
  dst: BlockDevice,
  from: number,
  to: number,
  shift: number,
  writeZeroRanges: boolean,
  how: { bs: number; signal: AbortSignal },
): Promise<void> {
  const { bs, signal } = how;
  const write = async (pos: number, data: Uint8Array): Promise<void> => {
    // A deferred SIGINT/SIGTERM stops the copy here, between two whole writes.
    signal.throwIfAborted();
    try {
      await dst.write(pos - shift, data);
      return;
    } catch {
      // qemu writes one block of `bs` at a time: the chunk is written again that way, so a
      // full disk stops at the block qemu's stops at, with as much written.
    }
    for (let at = pos; at < pos + data.length; ) {
      const end = Math.min(pos + data.length, from + (Math.floor((at - from) / bs) + 1) * bs);
      try {
        await dst.write(at - shift, data.subarray(at - pos, end - pos));
      } catch (err) {
        throw new CliExit(1, `error while writing to output image file: ${ioText(err)}`);
      }
      at = end;
    }
  };
  const buf = new Uint8Array(Math.min(COPY_CHUNK, Math.max(to - from, 0)));
  const zeroes = writeZeroRanges ? new Uint8Array(buf.length) : undefined;
  let pos = from;
  while (pos < to) {
    let st;
    try {
      st = await blockStatusAbove(src, pos, to - pos);
    } catch {
      st = undefined; // qemu does not ask; a failing status query just means "read it"
    }
    const runEnd = st ? pos + st.length : to;
    if (st?.zero) {
      while (zeroes !== undefined && pos < runEnd) {
        const n = Math.min(zeroes.length, runEnd - pos);
        await write(pos, zeroes.subarray(0, n));
        pos += n;
      }
      pos = runEnd;
      continue;
    }
    while (pos < runEnd) {
      const n = Math.min(buf.length, runEnd - pos);
      const view = buf.subarray(0, n);
      try {
        await src.read(pos, view);
      } catch (err) {
        throw new CliExit(1, `error while reading from input image file: ${ioText(err)}`);
      }
      await write(pos, view);
      pos += n;
    }
  }
}

/** What {@link writeOutput} needs: the parsed command and the opened input. */
interface DdJob {
  args: DdArgs;
  src: Image;
  input: string;
  output: string;
  outFmt: string;
  onWarning: (message: string) => void;
  /** `--object secret,...` data by id. */
  secrets: Map<string, Uint8Array>;
  io: CliIO;
  signal: AbortSignal;
}

/** Creates the output as img_dd does and copies the input's range into it. */
async function writeOutput(job: DdJob): Promise<void> {
  const { args, src, input, output, outFmt, onWarning, io, signal } = job;
  if (QEMU_FORMATS.has(outFmt) && !QEMU_CREATABLE.has(outFmt)) throw new CliExit(1, `Format driver '${outFmt}' does not support image creation`);
  if (!QEMU_CREATABLE.has(outFmt)) throw new CliExit(1, 'Unknown file format');
  // The curl protocols read only: bdrv_find_protocol finds them, and they have no create_opts.
  const proto = /^([^:/]*):/.exec(output)?.[1];
  if (proto === 'http' || proto === 'https') throw new CliExit(1, `Protocol driver '${proto}' does not support image creation`);
  const format = creatableFormat(outFmt);
  if (format === undefined) throw new CliExit(1, `${output}: error while creating output image: tsimg cannot create '${outFmt}' images`);

  const bs = args.bs;
  let size = BigInt(src.size());
  // qemu's arithmetic, including that `count` counts from the start, skipped blocks included.
  if (args.count !== undefined && args.count <= INT64_MAX / bs && args.count * bs < size) size = args.count * bs;
  const skipTooFar = args.skip !== undefined && (args.skip > INT64_MAX / bs || size < bs * args.skip);
  const outSize = skipTooFar ? 0n : size - bs * (args.skip ?? 0n);
  // Both drivers round the size up to whole sectors.
  const createSize = ((outSize + 511n) / 512n) * 512n;

  const createError = (err: unknown): CliExit =>
    new CliExit(1, `${output}: error while creating output image: ${errorMessage(err)}${lockHint(err)}`);
  let dst: Image | BlockDevice;
  const nbd = nbdLocation(output);
  if (nbd !== undefined) {
    // An NBD export cannot be created (bdrv_co_create_opts_simple): it is used as it is, its
    // first sector zeroed — so zero runs of the input are written too, as qemu's dd writes
    // every block, and the export ends up holding what qemu-img dd leaves there.
    // Only a raw output is written onto an export (dd copies into the export device itself).
    if (outFmt !== 'raw') throw new CliExit(1, `${output}: error while creating output image: tsimg cannot create a ${outFmt} image on an NBD export`);
    try {
      await createOnNbd(nbd, Number(createSize));
      dst = await NbdClient.connect(nbd, { readOnly: false });
    } catch (err) {
      throw createError(err);
    }
  } else {
    // img_dd: bdrv_create with the size alone, through the format's own creation.
    const opts = creationOpts(format);
    opts.setNumber('size', createSize);
    try {
      await createImageFile(format, output, opts, job.secrets, io);
    } catch (err) {
      throw createError(err);
    }
    // The file protocol's image is a raw one.
    dst = await openOutput(output, { format: outFmt === 'file' ? 'raw' : outFmt, readOnly: false, onWarning });
  }
  try {
    let inPos: bigint;
    if (skipTooFar) {
      io.stderr(`tsimg: ${input}: cannot skip to specified offset\n`);
      inPos = size;
    } else {
      inPos = (args.skip ?? 0n) * bs;
    }
    // A new raw file reads as zeroes already; any other format (and an export used as it is)
    // is written every block, as qemu's dd writes them.
    const writeZeroRanges = nbd !== undefined || (dst as Image).format !== 'raw';
    if (inPos < size) await copyRange(src, dst, Number(inPos), Number(size), Number(inPos), writeZeroRanges, { bs: Number(bs), signal });
    await dst.flush();
  } finally {
    await dst.close();
  }
}

export const run: CommandRunner = async (argv, io) => {
  const parsed = getoptLong(argv, ':hf:O:U', LONG, 'dd');
  if (parsed.error) getoptExit(parsed.error);
  let fmt: string | undefined;
  let outFmt = 'raw';
  let imageOpts = false;
  const secrets = new Map<string, Uint8Array>();
  let forceShare = false;
  for (const { key, value } of parsed.options) {
    switch (key) {
      case 'h':
        io.stdout('usage: tsimg dd [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output\n');
        return 0;
      case 'f':
        fmt = value;
        break;
      case 'O':
        outFmt = value!;
        break;
      case 'U':
        forceShare = true;
        break;
      case 'object':
        addObject(value!, secrets);
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      default:
        notSupportedExit(key);
    }
  }
  const args = parseOperands(parsed.operands);
  if (args.input === undefined || args.output === undefined) {
    throw new CliExit(1, 'Must specify both input and output files');
  }
  const input = args.input;
  const output = args.output;

  const src = await openImage(input, { format: fmt, readOnly: true, imageOpts, forceShare, secrets, onWarning: lockWarnings(io, false) });
  const onWarning = lockWarnings(io, true);
  // The output is written from here on: a SIGINT/SIGTERM stops the copy at the next write, and
  // the output is flushed and closed before the command ends (interrupt.ts).
  try {
    await interruptsOf(io).hold((signal) => writeOutput({ args, src, input, output, outFmt, onWarning, secrets, io, signal }));
  } finally {
    await src.close();
  }
  return 0;
};
