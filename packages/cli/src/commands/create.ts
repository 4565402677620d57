/**
 * `tsimg create`: qemu-img 7.2's `create` — its option parsing (qemu-img.c img_create), the
 * checks and "Formatting ..." line of bdrv_img_create (block.c), then the format's own creation
 * (@tsimg/image's list of formats) — with qemu's messages, each prefixed by the file name as
 * qemu-img prints them.
 */
import { dirname, join } from 'node:path';
import { openImage, protocolPath, QEMU_CREATABLE, QEMU_FORMATS, tooLarge, uncreatableFormatMessage } from '@tsimg/image';
import { TsimgError, UnsupportedError, UsageError, errorWithCode } from '@tsimg/raw';
import { addObject } from '../object-option.js';
import { CliExit } from '../exit.js';
import { getoptLong, qemuGetoptMessage } from '../getopt.js';
import type { CliIO, CommandRunner } from '../command.js';
import { lockHint } from '../lock-messages.js';
import { TRY_HELP } from '../command-options.js';
import { creatableFormat, createImageFile, creationOpts, printOptionHelp } from '../creation-options.js';
import { accumulateOptions, cvtnum, hasHelpOption } from '../options.js';
import { InterruptedError, interruptsOf } from '../interrupt.js';

const U64_MAX = (1n << 64n) - 1n;

const USAGE =
  'usage: tsimg create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]\n';

/** bdrv_get_full_backing_filename_from_filename: relative names are relative to the image. */
function fullBackingName(filename: string, backing: string): string {
  if (backing.startsWith('/') || /^[^:/]*:/.test(backing)) return backing;
  const dir = dirname(filename);
  return dir === '.' && !filename.startsWith('./') ? backing : join(dir, backing);
}

/** Opens the backing image as bdrv_img_create does; returns its format and size. */
async function openBacking(fullName: string, fmt: string | undefined): Promise<{ format: string; size: number }> {
  if (fmt !== undefined && !QEMU_FORMATS.has(fmt)) throw new UsageError(`Unknown driver '${fmt}'`);
  // The formats whose size tsimg reads without I/O beyond metadata: qemu opens a luks backing
  // file with BDRV_O_NO_IO and no key, which tsimg's luks open cannot do.
  if (fmt !== undefined && fmt !== 'raw' && fmt !== 'qcow2' && fmt !== 'file') {
    throw new UnsupportedError(`tsimg cannot open '${fmt}' images`);
  }
  try {
    // bdrv_img_create: BDRV_O_NO_IO and force-share, so a backing file in use is no obstacle.
    const img = await openImage(fullName, { format: fmt === 'file' ? 'raw' : fmt, readOnly: true, noIo: true, forceShare: true, onWarning: () => undefined });
    try {
      return { format: fmt === 'file' ? 'file' : img.format, size: Math.ceil(img.size() / 512) * 512 };
    } finally {
      await img.close();
    }
  } catch (err) {
    // openImage words errors as `qemu-img info` does; bdrv_img_create shows bdrv_open's own text
    const prefix = `Could not open '${fullName}': `;
    if (err instanceof TsimgError && err.message.startsWith(prefix)) {
      throw errorWithCode(err.code, err.message.slice(prefix.length), { cause: err, errno: err.errno });
    }
    throw err;
  }
}

interface CreateRequest {
  filename: string;
  fmt: string;
  baseFilename?: string;
  baseFmt?: string;
  options?: string;
  imgSize: bigint;
  noBacking: boolean;
  quiet: boolean;
  /** `--object secret,...` data by id. */
  secrets: ReadonlyMap<string, Uint8Array>;
}

/** bdrv_img_create. Errors come back as UsageError/TsimgError with qemu's text (no prefix). */
async function imgCreate(r: CreateRequest, io: CliIO): Promise<void> {
  const format = creatableFormat(r.fmt);
  if (!format) {
    const message = uncreatableFormatMessage(r.fmt);
    // qemu's own refusals are usage errors; a format only tsimg lacks is unsupported
    throw QEMU_CREATABLE.has(r.fmt) ? new UnsupportedError(message) : new UsageError(message);
  }
  protocolPath(r.filename);
  const opts = creationOpts(format);
  if (r.options !== undefined) opts.parse(r.options);
  if (!opts.get('size')) opts.setNumber('size', r.imgSize);
  else if (r.imgSize !== U64_MAX) throw new UsageError('The image size must be specified only once');
  if (r.baseFilename !== undefined) {
    if (!opts.desc('backing_file')) throw new UsageError(`Backing file not supported for file format '${r.fmt}'`);
    opts.set('backing_file', r.baseFilename);
  }
  if (r.baseFmt !== undefined) {
    if (!opts.desc('backing_fmt')) throw new UsageError(`Backing file format not supported for file format '${r.fmt}'`);
    opts.set('backing_fmt', r.baseFmt);
  }
  const backingFile = opts.getString('backing_file');
  if (backingFile !== undefined) {
    if (backingFile === r.filename) {
      throw new UsageError('Error: Trying to create an image with the same filename as the backing file');
    }
    if (backingFile === '') throw new UsageError('Expected backing file name, got empty string');
  }
  const backingFmt = opts.getString('backing_fmt');
  let size = opts.getNumber('size', r.imgSize);
  if (backingFile !== undefined && !r.noBacking) {
    let opened: { format: string; size: number };
    try {
      opened = await openBacking(fullBackingName(r.filename, backingFile), backingFmt);
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      throw new CliExit(1, `${r.filename}: ${msg}${lockHint(err)}\nCould not open backing image.`);
    }
    if (backingFmt === undefined) {
      // qemu prints the hint without a final newline
      io.stderr(`tsimg: ${r.filename}: Backing file specified without backing format\nDetected format of ${opened.format}.`);
      throw new CliExit(1);
    }
    if (size === U64_MAX) {
      size = BigInt(opened.size);
      opts.setNumber('size', size);
    }
  } else if (backingFile !== undefined && backingFmt === undefined) {
    throw new UsageError('Backing file specified without backing format');
  }
  if (size === U64_MAX) throw new UsageError('Image creation needs a size parameter');

  if (!r.quiet) io.stdout(`Formatting '${r.filename}', fmt=${r.fmt} ${opts.print()}\n`);

  try {
    await createImageFile(format, r.filename, opts, r.secrets, io);
  } catch (err) {
    throw tooLarge(r.fmt, err, opts.getNumber('cluster_size', 0n) !== 0n);
  }
}

/** `tsimg create [-q] [-f fmt] [-b backing [-F fmt]] [-u] [-o options] filename [size]`. */
export const run: CommandRunner = async (argv, io) => {
  const parsed = getoptLong(argv, ':F:b:f:ho:qu', [
    { name: 'help', hasArg: false, key: 'h' },
    { name: 'object', hasArg: true, key: 'object' },
  ], 'create');
  let fmt = 'raw';
  let baseFmt: string | undefined;
  let baseFilename: string | undefined;
  let options: string | undefined;
  let quiet = false;
  let noBacking = false;
  const secrets = new Map<string, Uint8Array>();
  for (const { key, value } of parsed.options) {
    switch (key) {
      case 'h':
        io.stdout(USAGE);
        return 0;
      case 'F':
        baseFmt = value;
        break;
      case 'b':
        baseFilename = value;
        break;
      case 'f':
        fmt = value!;
        break;
      case 'o':
        options = accumulateOptions(options, value!);
        break;
      case 'q':
        quiet = true;
        break;
      case 'u':
        noBacking = true;
        break;
      case 'object':
        addObject(value!, secrets);
        break;
    }
  }
  if (parsed.error) throw new CliExit(1, qemuGetoptMessage(parsed.error) + TRY_HELP);
  const [filename, sizeArg, ...extra] = parsed.operands;
  if (options !== undefined && hasHelpOption(options)) {
    try {
      return printOptionHelp(io, filename, fmt);
    } catch (err) {
      throw new CliExit(1, err instanceof Error ? err.message : String(err));
    }
  }
  if (filename === undefined) throw new CliExit(1, `Expecting image file name${TRY_HELP}`);
  let imgSize = U64_MAX;
  if (sizeArg !== undefined) {
    imgSize = cvtnum('image size', sizeArg, 0n, (1n << 63n) - 1n, (w) => io.stderr(`tsimg: ${w}\n`));
  }
  if (extra.length) throw new CliExit(1, `Unexpected argument: ${extra[0]}${TRY_HELP}`);
  try {
    // The image is written whole (a create is short): SIGINT/SIGTERM wait for it (interrupt.ts).
    await interruptsOf(io).hold(() => imgCreate({ filename, fmt, baseFilename, baseFmt, options, imgSize, noBacking, quiet, secrets }, io));
  } catch (err) {
    if (err instanceof CliExit || err instanceof InterruptedError) throw err;
    const msg = err instanceof Error ? err.message : String(err);
    throw new CliExit(1, `${filename}: ${msg}${lockHint(err)}`);
  }
  return 0;
};
