/**
 * `tsimg measure`: the file size a new image needs, for a virtual size or for the contents of an
 * existing image, with qemu-img 7.2's checks, messages and output (qemu-img.c img_measure), over
 * `measure` of @tsimg/image.
 */
import { type CreatableFormat, type MeasureSource, QEMU_CREATABLE, QEMU_FORMATS } from '@tsimg/image';
import type { MeasureResult } from '@tsimg/qcow2';
import { addObject } from '../object-option.js';
import { CliExit } from '../exit.js';
import { parseSnapshotParam } from '../snapshot-param.js';
import { getoptLong, glibcGetoptMessage } from '../getopt.js';
import {
  FORCE_SHARE_OPTION,
  HELP_OPTION,
  IMAGE_OPTS_OPTION,
  isJsonOutput,
  notSupportedExit,
  OBJECT_OPTION,
  OUTPUT_OPTION,
} from '../command-options.js';
import { accumulateOptions, cvtnum, type QemuOpts } from '../options.js';
import { creatableFormat, creationOpts } from '../creation-options.js';
import { UsageError } from '@tsimg/raw';
import { corruptionLine, openCommandImage as openImage } from '../image-open.js';
import type { CommandRunner } from '../command.js';
import { lockWarnings } from '../lock-messages.js';

const LONG = [
  HELP_OPTION,
  IMAGE_OPTS_OPTION,
  OBJECT_OPTION,
  OUTPUT_OPTION,
  { name: 'size', hasArg: true, key: 'size' },
  FORCE_SHARE_OPTION,
];

const USAGE =
  'usage: tsimg measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] filename]\n';

/**
 * qemu_opts_do_parse of `-o` against the target format's creation options plus the file
 * protocol's, with qemu's two-line failure ("Invalid parameter 'x'" / "Invalid options for file
 * format 'fmt'").
 */
function parseTargetOptions(list: string | undefined, format: CreatableFormat): QemuOpts {
  const opts = creationOpts(format);
  if (list === undefined) return opts;
  try {
    opts.parse(list);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    throw new CliExit(1, `${err.message}\ntsimg: Invalid options for file format '${format.name}'`);
  }
  return opts;
}

function humanResult(r: MeasureResult): string {
  let s = `required size: ${r.required}\nfully allocated size: ${r.fullyAllocated}\n`;
  if (r.bitmaps !== undefined) s += `bitmaps size: ${r.bitmaps}\n`;
  return s;
}

function jsonResult(r: MeasureResult): string {
  // qemu's QDict prints "bitmaps" first (hash order), then required, then fully-allocated; the
  // QAPI fields are int64, so 2^63 prints negative there (the human lines are unsigned).
  const i64 = (v: bigint) => BigInt.asIntN(64, v);
  const lines: string[] = [];
  if (r.bitmaps !== undefined) lines.push(`    "bitmaps": ${i64(r.bitmaps)}`);
  lines.push(`    "required": ${i64(r.required)}`, `    "fully-allocated": ${i64(r.fullyAllocated)}`);
  return `{\n${lines.join(',\n')}\n}\n`;
}

/** The command line after option parsing. */
interface MeasureArgs {
  json: boolean;
  fmt?: string;
  outFmt: string;
  /** The `-o` lists, joined. */
  options?: string;
  snapshot?: string;
  size?: bigint;
  imageOpts: boolean;
  forceShare: boolean;
}

export const run: CommandRunner = async (argv, io) => {
  const parsed = getoptLong(argv, 'hf:O:o:l:U', LONG, 'measure');
  const secrets = new Map<string, Uint8Array>();
  // Options are handled in order, as qemu's getopt loop does, up to a getopt error if any.
  const handleOptions = (): MeasureArgs | number => {
    let json = false;
    let fmt: string | undefined;
    let outFmt = 'raw';
    let options: string | undefined;
    let snapshot: string | undefined;
    let size: bigint | undefined;
    let imageOpts = false;
    let forceShare = false;
    for (const { key, value } of parsed.options) {
      switch (key) {
        case 'h':
          io.stdout(USAGE);
          return 0;
        case 'f':
          fmt = value;
          break;
        case 'O':
          outFmt = value!;
          break;
        case 'o':
          options = accumulateOptions(options, value!);
          break;
        case 'l':
          snapshot = value;
          break;
        case 'U':
          forceShare = true;
          break;
        case 'output':
          json = isJsonOutput(value!);
          break;
        case 'size':
          size = cvtnum('image size', value!, 0n, (1n << 63n) - 1n, (m) => io.stderr(`tsimg: ${m}\n`));
          break;
        case 'image-opts':
          imageOpts = true;
          break;
        case 'object':
          addObject(value!, secrets);
          break;
        default:
          notSupportedExit(key);
      }
    }
    return { json, fmt, outFmt, options, snapshot, size, imageOpts, forceShare };
  };
  const opts = handleOptions();
  if (typeof opts === 'number') return opts;
  if (parsed.error) {
    // qemu-img 7.2's measure lets getopt print the error, then prints its help and exits 0.
    io.stderr(`${glibcGetoptMessage('measure', parsed.error)}\n`);
    io.stdout(USAGE);
    return 0;
  }
  if (parsed.operands.length > 1) throw new CliExit(1, 'At most one filename argument is allowed.');
  const filename = parsed.operands[0];
  if (filename === undefined && (opts.imageOpts || opts.fmt !== undefined || opts.snapshot !== undefined)) {
    throw new CliExit(1, '--image-opts, -f, and -l require a filename argument.');
  }
  if (filename !== undefined && opts.size !== undefined) {
    throw new CliExit(1, '--size N cannot be used together with a filename.');
  }
  if (filename === undefined && opts.size === undefined) {
    throw new CliExit(1, 'Either --size N or one filename must be specified.');
  }
  const snapshot =
    opts.snapshot === undefined ? undefined : opts.snapshot.startsWith('snapshot.') ? parseSnapshotParam(opts.snapshot) : opts.snapshot;
  const image =
    filename !== undefined
      ? await openImage(filename, { format: opts.fmt, readOnly: true, imageOpts: opts.imageOpts, snapshot, forceShare: opts.forceShare, secrets, onWarning: lockWarnings(io, false) })
      : undefined;
  try {
    const source = image;
    const outFmt = opts.outFmt;
    if (QEMU_FORMATS.has(outFmt) && !QEMU_CREATABLE.has(outFmt)) {
      throw new CliExit(1, `Format driver '${outFmt}' does not support image creation`);
    }
    if (!QEMU_CREATABLE.has(outFmt)) throw new CliExit(1, `Unknown file format '${outFmt}'`);
    const format = creatableFormat(outFmt);
    const measureFormat = format?.creation.measure;
    if (format === undefined || measureFormat === undefined) {
      throw new CliExit(1, `Block driver '${outFmt}' does not support size measurement`);
    }
    const parsed = parseTargetOptions(opts.options, format);
    const what: MeasureSource =
      source !== undefined ? { image: source, bitmaps: await source.listBitmaps?.() } : { size: opts.size! };
    let result: MeasureResult;
    try {
      result = await measureFormat(what, parsed, secrets);
    } catch (err) {
      const corrupt = corruptionLine(err);
      if (corrupt) io.stderr(corrupt);
      throw err;
    }
    io.stdout(opts.json ? jsonResult(result) : humanResult(result));
    return 0;
  } finally {
    await image?.close();
  }
};
