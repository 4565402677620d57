/**
 * `tsimg resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q]
 * [--shrink] filename [+ | -]size` — qemu-img 7.2's img_resize: the size is taken off the end
 * of the command line before the options are parsed (so `-1G` is a size, not an option), the
 * image is opened for writing and resizing, and "Image resized." is printed unless -q.
 */
import { resizeImage, type Image, type TruncateOptions } from '@tsimg/image';
import { BDRV_MAX_LENGTH } from '@tsimg/raw';
import type { CliIO, CommandRunner } from '../command.js';
import { getoptExit, HELP_OPTION, IMAGE_OPTS_OPTION, OBJECT_OPTION, usageExit } from '../command-options.js';
import { CliExit } from '../exit.js';
import { interruptsOf } from '../interrupt.js';
import { getoptLong, type LongOption } from '../getopt.js';
import { openCommandImage, repairLog } from '../image-open.js';
import { lockWarnings } from '../lock-messages.js';
import { parseOptValue } from '../options.js';
import { probedRaw, probedRawWarning } from '../raw-probe-warning.js';
import { addObject } from '../object-option.js';

const LONG_OPTIONS: readonly LongOption[] = [
  HELP_OPTION,
  OBJECT_OPTION,
  IMAGE_OPTS_OPTION,
  { name: 'preallocation', hasArg: true, key: 'preallocation' },
  { name: 'shrink', hasArg: false, key: 'shrink' },
];

const HELP =
  'usage: tsimg resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size\n\n' +
  "  size takes an optional suffix k, M, G, T, P or E; '+' grows and '-' shrinks by it\n" +
  "  '--preallocation' takes off, metadata, falloc or full (growing only)\n" +
  "  '--shrink' is needed to make an image smaller\n";

type Preallocation = NonNullable<TruncateOptions['preallocation']>;
const PREALLOC_MODES: readonly string[] = ['off', 'metadata', 'falloc', 'full'];

/** What the command line asks for. */
interface ResizeArgs {
  filename: string;
  format?: string;
  imageOpts: boolean;
  /** `--object secret,...` data by id. */
  secrets: Map<string, Uint8Array>;
  quiet: boolean;
  shrink: boolean;
  preallocation: Preallocation;
  /** -1, 0 (absolute) or +1. */
  relative: number;
  /** The size as qemu_opt_get_size gives it (unsigned 64-bit). */
  amount: bigint;
}

/** img_resize's argument handling, in its order (the size is parsed before the image is opened). */
function parseArgs(argv: readonly string[], out: (text: string) => void): ResizeArgs | undefined {
  if (argv.length < 2) usageExit('Not enough arguments');
  let size = argv[argv.length - 1]!;
  const parsed = getoptLong(argv.slice(0, -1), ':f:hq', LONG_OPTIONS, 'resize');
  const a: Omit<ResizeArgs, 'filename' | 'relative' | 'amount'> = { imageOpts: false, secrets: new Map(), quiet: false, shrink: false, preallocation: 'off' };
  for (const o of parsed.options) {
    switch (o.key) {
      case 'h':
        out(HELP);
        return undefined;
      case 'f':
        a.format = o.value;
        break;
      case 'q':
        a.quiet = true;
        break;
      case 'image-opts':
        a.imageOpts = true;
        break;
      case 'preallocation':
        if (!PREALLOC_MODES.includes(o.value!)) throw new CliExit(1, `Invalid preallocation mode '${o.value}'`);
        a.preallocation = o.value as Preallocation;
        break;
      case 'shrink':
        a.shrink = true;
        break;
      case 'object':
        addObject(o.value!, a.secrets);
        break;
      default:
        break;
    }
  }
  if (parsed.error) getoptExit(parsed.error);
  if (parsed.operands.length !== 1) usageExit('Expecting image file name and size');
  let relative = 0;
  if (size.startsWith('+') || size.startsWith('-')) {
    relative = size[0] === '+' ? 1 : -1;
    size = size.slice(1);
  }
  const amount = parseOptValue({ name: 'size', type: 'size' }, size) as bigint;
  return { ...a, filename: parsed.operands[0]!, relative, amount };
}

/** img_resize's own refusals, then bdrv_check_request's limit with the exact value qemu prints. */
function checkTotal(args: ResizeArgs, current: bigint, total: bigint): void {
  if (total <= 0n) throw new CliExit(1, 'New image size must be positive');
  if (total <= current && args.preallocation !== 'off') throw new CliExit(1, 'Preallocation can only be used for growing images');
  if (total < current && !args.shrink) {
    throw new CliExit(
      1,
      'Use the --shrink option to perform a shrink operation.\n' +
        "tsimg: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
    );
  }
  if (total > BigInt(BDRV_MAX_LENGTH)) throw new CliExit(1, `offset(${total}) exceeds maximum(${BigInt(BDRV_MAX_LENGTH)})`);
}

export const run: CommandRunner = async (argv, io) => {
  const args = parseArgs(argv, io.stdout);
  if (args === undefined) return 0;
  // SIGINT/SIGTERM wait until the resize and its metadata are on disk (interrupt.ts).
  await interruptsOf(io).hold(() => resize(args, io));
  if (!args.quiet) io.stdout('Image resized.\n');
  return 0;
};

/** Opens the image (read/write, with qemu's resize permission) and resizes it. */
async function resize(args: ResizeArgs, io: CliIO): Promise<void> {
  const image: Image = await openCommandImage(args.filename, {
    format: args.format,
    imageOpts: args.imageOpts,
    secrets: args.secrets,
    readOnly: false,
    resize: true,
    // A dirty image is repaired on this read/write open, with qemu's lines on stderr.
    log: repairLog(io),
    onWarning: lockWarnings(io, true),
  });
  try {
    if (probedRaw(image, args)) io.stderr(probedRawWarning(image.filename));
    const current = BigInt(image.size());
    // int64_t arithmetic, wrapping as qemu's does
    const n = BigInt.asIntN(64, args.amount);
    const total = args.relative === 0 ? n : BigInt.asIntN(64, current + n * BigInt(args.relative));
    await resizeImage(image, Number(total), {
      preallocation: args.preallocation,
      // Run by the format once the image stands as qemu's open leaves it (qcow2: bitmaps in use).
      check: () => checkTotal(args, current, total),
      warn: (message) => io.stderr(`tsimg: warning: ${message}\n`),
    });
  } finally {
    await image.close();
  }
}
