/**
 * `tsimg bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
 * [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt]
 * filename bitmap` — qemu-img 7.2's img_bitmap: the operations applied in order to the
 * persistent bitmap `bitmap` of an image opened read/write without its backing chain; the
 * first failure ends the command ("Operation add on bitmap b failed: …", status 1), what came
 * before it is kept. The work is the image's (Image.bitmapAction); its close stores the bitmaps.
 */
import { NotFoundError, TsimgError, UnsupportedError, UsageError } from '@tsimg/raw';
import type { BitmapAction, Image, SourceBitmap } from '@tsimg/image';
import type { CliIO, CommandRunner } from '../command.js';
import { getoptLong, type LongOption } from '../getopt.js';
import { getoptExit, HELP_OPTION, IMAGE_OPTS_OPTION, OBJECT_OPTION } from '../command-options.js';
import { CliExit } from '../exit.js';
import { openCommandImage } from '../image-open.js';
import { lockWarnings } from '../lock-messages.js';
import { cvtnum } from '../options.js';
import { probedRawWarning } from '../raw-probe-warning.js';
import { addObject } from '../object-option.js';

const LONG_OPTIONS: readonly LongOption[] = [
  HELP_OPTION,
  OBJECT_OPTION,
  IMAGE_OPTS_OPTION,
  { name: 'add', hasArg: false, key: 'add' },
  { name: 'remove', hasArg: false, key: 'remove' },
  { name: 'clear', hasArg: false, key: 'clear' },
  { name: 'enable', hasArg: false, key: 'enable' },
  { name: 'disable', hasArg: false, key: 'disable' },
  { name: 'merge', hasArg: true, key: 'merge' },
  { name: 'granularity', hasArg: true, key: 'g' },
  { name: 'source-file', hasArg: true, key: 'b' },
  { name: 'source-format', hasArg: true, key: 'F' },
];

const HELP =
  'usage: tsimg bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... ' +
  '[-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap\n';

/** One operation as the command line lists it. */
type Op = { op: 'add' | 'remove' | 'clear' | 'enable' | 'disable' } | { op: 'merge'; source: string };

interface Args {
  ops: Op[];
  granularity?: number;
  format?: string;
  sourceFile?: string;
  sourceFormat?: string;
  imageOpts: boolean;
  /** `--object secret,...` data by id: the key secrets an encrypted image names. */
  secrets: Map<string, Uint8Array>;
  filename: string;
  bitmap: string;
}

/** img_bitmap's option loop and its checks, in qemu's order. */
function parseArgs(argv: string[]): Args | 'help' {
  const parsed = getoptLong(argv, ':b:f:F:g:h', LONG_OPTIONS);
  if (parsed.error) getoptExit(parsed.error);
  const ops: Op[] = [];
  let granularity = 0n;
  let format: string | undefined;
  let sourceFile: string | undefined;
  let sourceFormat: string | undefined;
  let imageOpts = false;
  const secrets = new Map<string, Uint8Array>();
  for (const o of parsed.options) {
    switch (o.key) {
      case 'h':
        return 'help';
      case 'b':
        sourceFile = o.value;
        break;
      case 'f':
        format = o.value;
        break;
      case 'F':
        sourceFormat = o.value;
        break;
      case 'g':
        granularity = cvtnum('granularity', o.value!);
        break;
      case 'add':
      case 'remove':
      case 'clear':
      case 'enable':
      case 'disable':
        ops.push({ op: o.key });
        break;
      case 'merge':
        ops.push({ op: 'merge', source: o.value! });
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'object':
        addObject(o.value!, secrets);
        break;
      default:
        break;
    }
  }
  const fail = (message: string): never => {
    throw new CliExit(1, message);
  };
  if (ops.length === 0) fail('Need at least one of --add, --remove, --clear, --enable, --disable, or --merge');
  if (granularity !== 0n && !ops.some((o) => o.op === 'add')) fail('granularity only supported with --add');
  if (sourceFormat !== undefined && sourceFile === undefined) fail('-F only supported with -b');
  if (sourceFile !== undefined && !ops.some((o) => o.op === 'merge')) fail('Merge bitmap source file only supported with --merge');
  if (parsed.operands.length !== 2) fail('Expecting filename and bitmap name');
  return {
    ops,
    // qmp_block_dirty_bitmap_add takes a uint32: 4G and its multiples wrap to 0 (and are refused).
    granularity: granularity === 0n ? undefined : Number(BigInt.asUintN(32, granularity)),
    format,
    sourceFile,
    sourceFormat,
    imageOpts,
    secrets,
    filename: parsed.operands[0]!,
    bitmap: parsed.operands[1]!,
  };
}

/** The image's action for one operation; merge reads the source bitmap from `source`. */
async function action(op: Op, args: Args, source: Image): Promise<BitmapAction> {
  const name = args.bitmap;
  if (op.op === 'add') return { op: 'add', name, granularity: args.granularity };
  if (op.op !== 'merge') return { op: op.op, name };
  const bits: SourceBitmap | undefined = await source.readBitmap?.(op.source);
  return { op: 'merge', name, source: bits, sourceName: op.source };
}

/** The message of a format without persistent bitmaps (bdrv_co_can_store_new_dirty_bitmap), or none found. */
function unsupported(op: BitmapAction): TsimgError {
  if (op.op === 'add') {
    if (op.name === '') return new UsageError('Bitmap name cannot be empty', { errno: 'EINVAL' });
    return new UnsupportedError("Can't store persistent bitmaps to #block100: Operation not supported", { errno: 'ENOTSUP' });
  }
  return new NotFoundError(`Dirty bitmap '${op.name}' not found`, { errno: 'ENOENT' });
}

/** Runs the operations in order; the first failure is reported as qemu-img reports it. */
async function runOps(img: Image, source: Image, args: Args, io: CliIO): Promise<number> {
  for (const op of args.ops) {
    try {
      const act = await action(op, args, source);
      if (img.bitmapAction === undefined) throw unsupported(act);
      await img.bitmapAction(act);
    } catch (err) {
      if (!(err instanceof TsimgError)) throw err;
      io.stderr(`tsimg: Operation ${op.op} on bitmap ${args.bitmap} failed: ${err.message}\n`);
      const hint = (err as { hint?: unknown }).hint;
      if (typeof hint === 'string') io.stderr(`${hint}\n`);
      return 1;
    }
  }
  return 0;
}

export const run: CommandRunner = async (argv, io) => {
  const args = parseArgs(argv);
  if (args === 'help') {
    io.stdout(HELP);
    return 0;
  }
  const img = await openCommandImage(args.filename, {
    format: args.format,
    readOnly: false,
    imageOpts: args.imageOpts,
    secrets: args.secrets,
    backing: false,
    onWarning: lockWarnings(io, true),
  });
  let source: Image | undefined;
  try {
    if (args.format === undefined && !args.imageOpts && img.format === 'raw') io.stderr(probedRawWarning(args.filename));
    if (args.sourceFile !== undefined) {
      source = await openCommandImage(args.sourceFile, {
        format: args.sourceFormat,
        readOnly: true,
        secrets: args.secrets,
        backing: false,
        onWarning: lockWarnings(io, false),
      });
    }
    return await runOps(img, source ?? img, args, io);
  } finally {
    await source?.close();
    await img.close();
  }
};
