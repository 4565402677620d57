/**
 * `tsimg amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force]
 * -o options filename` — qemu-img 7.2's img_amend: the `-o` list is parsed against the
 * format's amend options (qcow2's: a subset of its creation options), the image is opened
 * read/write, and the format changes itself in place (Image.amend), with qemu's progress
 * percentages under -p.
 */
import { type AmendOptions, type Image, QCOW2_OPTS, QEMU_FORMATS } from '@tsimg/image';
import type { CliIO, CommandRunner } from '../command.js';
import { HELP_OPTION, IMAGE_OPTS_OPTION, OBJECT_OPTION, getoptExit, usageExit } from '../command-options.js';
import { CliExit } from '../exit.js';
import { getoptLong, type LongOption } from '../getopt.js';
import { openCommandImage, repairLog } from '../image-open.js';
import { splitImageOpts } from '../image-opts.js';
import { interruptsOf } from '../interrupt.js';
import { lockWarnings } from '../lock-messages.js';
import { accumulateOptions, hasHelpOption, mergeOptDescs, optionHelpLines, QemuOpts, type OptDesc } from '../options.js';
import { createProgress } from '../progress.js';
import { probedRawWarning } from '../raw-probe-warning.js';
import { addObject } from '../object-option.js';
import { parseImageOpts } from '../image-opts.js';

const LONG_OPTIONS: readonly LongOption[] = [
  HELP_OPTION,
  OBJECT_OPTION,
  IMAGE_OPTS_OPTION,
  { name: 'force', hasArg: false, key: 'force' },
];

const HELP =
  'usage: tsimg amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename\n\n' +
  "  '-o' takes the options to change (see '-o help'); '--force' allows changes that may lose data\n";

const CACHE_MODES: readonly string[] = ['none', 'off', 'writeback', 'writethrough', 'directsync', 'unsafe'];

/** The encrypt.* options of qcow2_amend_opts (LUKS keyslot management). */
const QCOW2_ENCRYPT_AMEND_OPTS: readonly OptDesc[] = [
  { name: 'encrypt.state', type: 'string', help: 'Select new state of affected keyslots (active/inactive)' },
  { name: 'encrypt.keyslot', type: 'number', help: 'Select a single keyslot to modify explicitly' },
  { name: 'encrypt.old-secret', type: 'string', help: 'Select all keyslots that match this password' },
  { name: 'encrypt.new-secret', type: 'string', help: 'New secret to set in the matching keyslots. Empty string to erase' },
  { name: 'encrypt.iter-time', type: 'number', help: 'Time to spend in PBKDF in milliseconds' },
];

/** The creation options qcow2 can also amend (QCOW_COMMON_OPTIONS), in their list order. */
const COMMON = ['size', 'compat', 'backing_file', 'backing_fmt', 'data_file', 'data_file_raw', 'lazy_refcounts', 'refcount_bits'];

/** qcow2_amend_opts, in qemu 7.2's order. */
const QCOW2_AMEND_OPTS: readonly OptDesc[] = [
  ...QCOW2_ENCRYPT_AMEND_OPTS,
  ...COMMON.map((name) => {
    const d = QCOW2_OPTS.find((o) => o.name === name)!;
    return { name: d.name, type: d.type, help: d.help };
  }),
];

/** The amend options of each format that has them, by format name. */
const AMEND_OPTS: Readonly<Record<string, readonly OptDesc[]>> = {
  qcow2: QCOW2_AMEND_OPTS,
  // luks's own list is qcow2's encrypt.* options without the prefix.
  luks: QCOW2_ENCRYPT_AMEND_OPTS.map((d) => ({ ...d, name: d.name.slice('encrypt.'.length) })),
};

/** What the command line asks for. */
interface AmendArgs {
  options: string;
  format?: string;
  cache: string;
  progress: boolean;
  quiet: boolean;
  imageOpts: boolean;
  /** `--object secret,...` data by id. */
  secrets: Map<string, Uint8Array>;
  force: boolean;
  filename?: string;
}

/** img_amend's argument handling, in its order. */
function parseArgs(argv: readonly string[], out: (text: string) => void): AmendArgs | undefined {
  const parsed = getoptLong(argv, ':ho:f:t:pq', LONG_OPTIONS);
  let options: string | undefined;
  const a: Omit<AmendArgs, 'options'> = { cache: 'writeback', progress: false, quiet: false, imageOpts: false, secrets: new Map(), force: false };
  for (const o of parsed.options) {
    switch (o.key) {
      case 'h':
        out(HELP);
        return undefined;
      case 'o':
        options = accumulateOptions(options, o.value!);
        break;
      case 'f':
        a.format = o.value;
        break;
      case 't':
        a.cache = o.value!;
        break;
      case 'p':
        a.progress = true;
        break;
      case 'q':
        a.quiet = true;
        break;
      case 'image-opts':
        a.imageOpts = true;
        break;
      case 'force':
        a.force = true;
        break;
      case 'object':
        addObject(o.value!, a.secrets);
        break;
      default:
        break;
    }
  }
  if (parsed.error) getoptExit(parsed.error);
  if (options === undefined) usageExit('Must specify options (-o)');
  if (a.quiet) a.progress = false;
  const filename = parsed.operands.length === 1 ? parsed.operands[0] : undefined;
  return { ...a, options, filename };
}

/** print_amend_option_help. */
function printAmendHelp(io: CliIO, format: string): number {
  const descs = AMEND_OPTS[format];
  if (descs === undefined) {
    throw new CliExit(1, QEMU_FORMATS.has(format) ? `Format driver '${format}' does not support option amendment` : `Unknown file format '${format}'`);
  }
  io.stdout(`Amend options for '${format}':\n${optionHelpLines(descs)}`);
  return 0;
}

/** The `-o` list parsed against the amend options, with qemu's hint for creation-only ones. */
function parseAmendOptions(descs: readonly OptDesc[], list: string): QemuOpts {
  const opts = new QemuOpts(descs);
  try {
    opts.parse(list);
  } catch (err) {
    let hint = '';
    try {
      new QemuOpts(mergeOptDescs(descs, QCOW2_OPTS)).parse(list);
      hint = '\nThis option is only supported for image creation';
    } catch {
      // not a creation option either: qemu's message alone
    }
    throw new CliExit(1, `${(err as Error).message}${hint}`);
  }
  return opts;
}

/** The parsed options as the image layer takes them (only what was given). */
function amendOptions(opts: QemuOpts, force: boolean, status: AmendOptions['status'], crypto: CryptoContext): AmendOptions {
  const o: AmendOptions = { force, status };
  if (opts.get('compat') !== undefined) o.compat = opts.getString('compat');
  if (opts.get('size') !== undefined) o.size = Number(opts.getNumber('size', 0n));
  if (opts.get('backing_file') !== undefined) o.backingFile = opts.getString('backing_file');
  if (opts.get('backing_fmt') !== undefined) o.backingFormat = opts.getString('backing_fmt');
  if (opts.get('data_file') !== undefined) o.dataFile = opts.getString('data_file');
  if (opts.get('data_file_raw') !== undefined) o.dataFileRaw = opts.getBool('data_file_raw', false);
  if (opts.get('lazy_refcounts') !== undefined) o.lazyRefcounts = opts.getBool('lazy_refcounts', false);
  if (opts.get('refcount_bits') !== undefined) o.refcountBits = Number(BigInt.asIntN(64, opts.getNumber('refcount_bits', 16n)));
  const p = crypto.prefix;
  if (opts.entries.some((e) => e.name.startsWith(p))) {
    const num = (name: string) => (opts.get(p + name) === undefined ? undefined : Number(BigInt.asIntN(64, opts.getNumber(p + name, 0n))));
    o.encrypt = {
      state: opts.getString(p + 'state'),
      keyslot: num('keyslot'),
      iterTime: num('iter-time'),
      newSecret: opts.getString(p + 'new-secret'),
      oldSecret: opts.getString(p + 'old-secret'),
      secret: crypto.keySecret,
      secrets: crypto.secrets,
    };
  }
  return o;
}

/** What the key slot options need besides themselves. */
interface CryptoContext {
  /** `encrypt.` for qcow2; luks names its options bare. */
  prefix: string;
  keySecret?: string;
  secrets: ReadonlyMap<string, Uint8Array>;
}

export const run: CommandRunner = async (argv, io) => {
  const args = parseArgs(argv, io.stdout);
  if (args === undefined) return 0;
  const progress = createProgress(io, args.progress, 1.0);
  try {
    if (args.format !== undefined && hasHelpOption(args.options)) return printAmendHelp(io, args.format);
    if (args.filename === undefined) throw new CliExit(1, 'Expecting one image file name');
    if (!CACHE_MODES.includes(args.cache)) throw new CliExit(1, `Invalid cache option: ${args.cache}`);
    const image: Image = await openCommandImage(args.filename, {
      format: args.format,
      imageOpts: args.imageOpts,
    secrets: args.secrets,
      readOnly: false,
      noFlush: args.cache === 'unsafe',
      log: repairLog(io),
      onWarning: lockWarnings(io, true),
    });
    try {
      const probed = args.imageOpts ? !splitImageOpts(args.filename).has('driver') : args.format === undefined;
      if (probed && image.format === 'raw') io.stderr(probedRawWarning(image.filename));
      if (hasHelpOption(args.options)) return printAmendHelp(io, image.format);
      const descs = AMEND_OPTS[image.format];
      if (image.amend === undefined || descs === undefined) {
        throw new CliExit(1, `Format driver '${image.format}' does not support option amendment`);
      }
      const opts = parseAmendOptions(descs, args.options);
      const status = (offset: number, total: number): void => {
        // amend_status_cb: 100.f * offset / total_work_size, in single precision
        progress.print(Math.fround(Math.fround(100 * Math.fround(offset)) / Math.fround(total)), 0);
      };
      progress.print(0, 0);
      const amend = image.amend.bind(image);
      const crypto: CryptoContext = {
        // qemu's option names: luks's own, qcow2's under `encrypt.` (the AMEND_OPTS tables).
        prefix: image.format === 'luks' ? '' : 'encrypt.',
        keySecret: args.imageOpts ? parseImageOpts(args.filename).keySecret : undefined,
        secrets: args.secrets,
      };
      await interruptsOf(io).hold(() => amend(amendOptions(opts, args.force, status, crypto)));
      progress.print(100, 0);
    } finally {
      await image.close();
    }
    return 0;
  } finally {
    progress.end();
  }
};
