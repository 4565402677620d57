/**
 * `tsimg measure`: the file size a new image needs, for a virtual size or for the contents of an
 * existing image, with qemu-img 7.2's checks, messages and output (qemu-img.c img_measure), over
 * `measure` of @tsimg/image.
 */
import { measure, type MeasureSource } from '@tsimg/image';
import { luksPayloadBytes, type MeasureResult, type Qcow2MeasureOptions, secretAsUtf8 } from '@tsimg/qcow2';
import { luksCreateOptions } from '../image-create.js';
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
import { accumulateOptions, cvtnum, mergeOptDescs, QemuOpts } from '../options.js';
import { FILE_OPTS, LUKS_OPTS, QCOW2_OPTS, RAW_OPTS } from '../creation-options.js';
import { UsageError } from '@tsimg/raw';
import { corruptionLine, openCommandImage as openImage } from '../image-open.js';
import { QEMU_CREATABLE, QEMU_FORMATS } from '../qemu-formats.js';
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
function parseTargetOptions(list: string | undefined, format: 'qcow2' | 'raw' | 'luks'): QemuOpts {
  const opts = new QemuOpts(mergeOptDescs(format === 'qcow2' ? QCOW2_OPTS : format === 'luks' ? LUKS_OPTS : RAW_OPTS, FILE_OPTS));
  if (list === undefined) return opts;
  try {
    opts.parse(list);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    throw new CliExit(1, `${err.message}\ntsimg: Invalid options for file format '${format}'`);
  }
  return opts;
}

function qcow2Options(opts: QemuOpts): Qcow2MeasureOptions {
  const num = (k: string): number | undefined => {
    const v = opts.get(k)?.value;
    // Out-of-range values fail the same checks as qemu's (a huge number is never a power of two
    // in range), so a lossy conversion is harmless here.
    return typeof v === 'bigint' ? Number(v) : undefined;
  };
  const bool = opts.get('extended_l2')?.value;
  const size = opts.get('size')?.value;
  return {
    sizeOption: typeof size === 'bigint' ? size : undefined,
    clusterSize: num('cluster_size'),
    refcountBits: num('refcount_bits'),
    extendedL2: typeof bool === 'boolean' ? bool : undefined,
    compat: opts.getString('compat'),
    preallocation: opts.getString('preallocation'),
    hasBackingFile: opts.get('backing_file') !== undefined,
    encryptFormat: opts.getString('encrypt.format'),
  };
}

/**
 * qcrypto_block_calculate_payload_offset for the target's LUKS options under `prefix`: the
 * options' QAPI visit, the key secret (required, and looked up), then the header area's size.
 */
function luksHeaderBytes(opts: QemuOpts, prefix: string, secrets: ReadonlyMap<string, Uint8Array>): number {
  const luks = luksCreateOptions(opts, prefix);
  const id = opts.getString(`${prefix}key-secret`);
  if (id === undefined) throw new UsageError(`Parameter '${prefix}key-secret' is required for cipher`);
  secretAsUtf8(secrets, id).fill(0);
  return luksPayloadBytes(luks);
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
    let qopts: Qcow2MeasureOptions = {};
    if (outFmt === 'qcow2' || outFmt === 'raw') {
      const parsed = parseTargetOptions(opts.options, outFmt);
      if (outFmt === 'qcow2') qopts = { ...qcow2Options(parsed), luksHeaderBytes: () => luksHeaderBytes(parsed, 'encrypt.', secrets) };
    }
    if (outFmt === 'luks') {
      // block_crypto_measure: the header area plus the whole size, allocated or not.
      const parsed = parseTargetOptions(opts.options, outFmt);
      const header = luksHeaderBytes(parsed, '', secrets);
      const size = source !== undefined ? source.size() : Number(opts.size ?? (parsed.get('size')?.value as bigint | undefined) ?? 0n);
      const total = BigInt(header + size);
      io.stdout(opts.json ? jsonResult({ required: total, fullyAllocated: total }) : humanResult({ required: total, fullyAllocated: total }));
      return 0;
    }
    if (outFmt !== 'qcow2' && outFmt !== 'raw') {
      throw new CliExit(1, `Block driver '${outFmt}' does not support size measurement`);
    }
    const what: MeasureSource =
      source !== undefined ? { image: source, bitmaps: await source.listBitmaps?.() } : { size: opts.size! };
    let result: MeasureResult;
    try {
      result = await measure(outFmt, what, qopts);
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
