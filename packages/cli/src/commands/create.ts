/**
 * `tsimg create`: qemu-img 7.2's `create` for raw and qcow2 — its option parsing (qemu-img.c
 * img_create), the checks and "Formatting ..." line of bdrv_img_create (block.c), file creation
 * as in file-posix, qcow2's option conversion (qcow2_co_create_opts) — with qemu's messages,
 * each prefixed by the file name as qemu-img prints them.
 */
import { rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { dataFileLock, imageFileLock, openImage, topNodePermissions } from '@tsimg/image';
import { createQcow2, type Qcow2CreateOptions, type Qcow2Preallocation } from '@tsimg/qcow2';
import { createFile, FileDevice, TsimgError, UnsupportedError, UsageError } from '@tsimg/raw';
import { CliExit } from '../exit.js';
import { getoptLong, qemuGetoptMessage } from '../getopt.js';
import type { CliIO, CommandRunner } from '../main.js';
import { lockHint, lockWarnings } from '../lock-messages.js';
import {
  accumulateOptions,
  cvtnum,
  hasHelpOption,
  mergeOptDescs,
  optionHelpLines,
  QemuOpts,
  type OptDesc,
} from '../options.js';

const U64_MAX = (1n << 64n) - 1n;
const TRY_HELP = "\nTry 'tsimg --help' for more information";

/** file-posix's creation options (the protocol layer every format here sits on). */
export const FILE_OPTS: readonly OptDesc[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'nocow', type: 'bool', help: 'Turn off copy-on-write (valid only on btrfs)' },
  { name: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, falloc, full)' },
  { name: 'extent_size_hint', type: 'size', help: 'Extent size hint for the image file, 0 to disable' },
];

export const RAW_OPTS: readonly OptDesc[] = [{ name: 'size', type: 'size', help: 'Virtual disk size' }];

/** qcow2_create_opts in qemu 7.2's order (the order of the "Formatting" line). */
export const QCOW2_OPTS: readonly OptDesc[] = [
  { name: 'encryption', type: 'bool', help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)" },
  { name: 'encrypt.format', type: 'string', help: "Encrypt the image, format choices: 'aes', 'luks'" },
  { name: 'encrypt.key-secret', type: 'string', help: 'ID of secret providing qcow AES key or LUKS passphrase' },
  { name: 'encrypt.cipher-alg', type: 'string', help: 'Name of encryption cipher algorithm' },
  { name: 'encrypt.cipher-mode', type: 'string', help: 'Name of encryption cipher mode' },
  { name: 'encrypt.ivgen-alg', type: 'string', help: 'Name of IV generator algorithm' },
  { name: 'encrypt.ivgen-hash-alg', type: 'string', help: 'Name of IV generator hash algorithm' },
  { name: 'encrypt.hash-alg', type: 'string', help: 'Name of encryption hash algorithm' },
  { name: 'encrypt.iter-time', type: 'number', help: 'Time to spend in PBKDF in milliseconds' },
  { name: 'cluster_size', type: 'size', help: 'qcow2 cluster size', defaultValue: '65536' },
  { name: 'extended_l2', type: 'bool', help: 'Extended L2 tables', defaultValue: 'off' },
  { name: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, metadata, falloc, full)' },
  { name: 'compression_type', type: 'string', help: 'Compression method used for image cluster compression', defaultValue: 'zlib' },
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'compat', type: 'string', help: 'Compatibility level (v2 [0.10] or v3 [1.1])' },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: 'Image format of the base image' },
  { name: 'data_file', type: 'string', help: 'File name of an external data file' },
  { name: 'data_file_raw', type: 'bool', help: 'The external data file must stay valid as a raw image' },
  { name: 'lazy_refcounts', type: 'bool', help: 'Postpone refcount updates', defaultValue: 'off' },
  { name: 'refcount_bits', type: 'number', help: 'Width of a reference count entry in bits', defaultValue: '16' },
];

export const FORMAT_OPTS: Readonly<Record<string, readonly OptDesc[]>> = { raw: RAW_OPTS, qcow2: QCOW2_OPTS, file: FILE_OPTS };

/** The drivers of qemu-img 7.2 (`qemu-img --help`), and the values QAPI's BlockdevDriver takes. */
export const QEMU_DRIVERS = new Set(
  ('blkdebug blklogwrites blkverify bochs cloop compress copy-before-write copy-on-read dmg file ftp ftps ' +
    'gluster host_cdrom host_device http https iscsi iser luks nbd nfs null-aio null-co nvme parallels ' +
    'preallocate qcow qcow2 qed quorum raw rbd replication snapshot-access ssh throttle vdi vhdx vmdk vpc vvfat').split(' '),
);
const BLOCKDEV_DRIVERS = new Set([...QEMU_DRIVERS, 'blkreplay']);
/** qemu formats that can create images (tsimg creates raw, qcow2 and file). */
export const QEMU_CREATABLE = new Set(
  'file gluster host_cdrom host_device iscsi iser luks nbd nfs nvme parallels qcow qcow2 qed raw rbd ssh vdi vhdx vmdk vpc'.split(' '),
);

const USAGE =
  'usage: tsimg create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]\n';

/** qemu-img's print_block_option_help. */
export function printOptionHelp(io: CliIO, filename: string | undefined, fmt: string): number {
  const descs = FORMAT_OPTS[fmt];
  if (!descs) {
    io.stderr(
      QEMU_DRIVERS.has(fmt) && !QEMU_CREATABLE.has(fmt)
        ? `tsimg: Format driver '${fmt}' does not support image creation\n`
        : QEMU_DRIVERS.has(fmt)
          ? `tsimg: Format '${fmt}' is not supported by tsimg (raw and qcow2 are)\n`
          : `tsimg: Unknown file format '${fmt}'\n`,
    );
    return 1;
  }
  if (filename !== undefined) {
    protocolPath(filename);
    io.stdout(`Supported options:\n${optionHelpLines(mergeOptDescs(descs, FILE_OPTS))}`);
  } else {
    io.stdout(
      `Supported ${fmt} options:\n${optionHelpLines(descs)}\n` +
        'The protocol level may support further options.\n' +
        'Specify the target filename to include those options.\n',
    );
  }
  return 0;
}

/** bdrv_find_protocol: the host path of `filename` (only the file protocol is available). */
export function protocolPath(filename: string): string {
  const m = /^([^:/]*):/.exec(filename);
  if (!m) return filename;
  if (m[1] === 'file') return filename.slice(5);
  throw new UsageError(`Unknown protocol '${m[1]}'`);
}

/** bdrv_get_full_backing_filename_from_filename: relative names are relative to the image. */
function fullBackingName(filename: string, backing: string): string {
  if (backing.startsWith('/') || /^[^:/]*:/.test(backing)) return backing;
  const dir = dirname(filename);
  return dir === '.' && !filename.startsWith('./') ? backing : join(dir, backing);
}

/** Parses a bool option's string the way the QAPI visitor does after qemu_opts_to_qdict. */
function qapiBool(opts: QemuOpts, name: string): boolean | undefined {
  const e = opts.get(name);
  return e === undefined ? undefined : (e.value as boolean);
}

function enumError(param: string, value: string): never {
  throw new UsageError(`Parameter '${param}' does not accept value '${value}'`);
}

/** The encryption settings after qcow2_co_create_opts' legacy handling and the QAPI visit. */
function encryptionOf(opts: QemuOpts): { keySecret?: string } | undefined {
  const enc = opts.getString('encryption');
  let format = opts.getString('encrypt.format');
  let alias: string | undefined = enc;
  if (enc === 'on') alias = 'qcow';
  else if (enc === 'off') alias = undefined;
  if (format === 'aes') format = 'qcow';
  if (alias !== undefined && format !== undefined) {
    throw new UsageError("'encrypt.format' and its alias 'encryption' can't be used at the same time");
  }
  format ??= alias;
  const members = opts.descs.filter((d) => d.name.startsWith('encrypt.') && d.name !== 'encrypt.format');
  const present = members.filter((d) => opts.get(d.name) !== undefined);
  if (format === undefined) {
    if (present.length) throw new UsageError("Parameter 'encrypt.format' is missing");
    return undefined;
  }
  if (format !== 'qcow' && format !== 'luks') enumError('format', format);
  if (format === 'qcow') {
    const unexpected = present.find((d) => d.name !== 'encrypt.key-secret');
    if (unexpected) throw new UsageError(`Parameter '${unexpected.name}' is unexpected`);
  }
  return { keySecret: opts.getString('encrypt.key-secret') };
}

/** qemu_strtoi64(str, NULL, 0) for the QAPI int refcount-bits. */
function qapiInt(param: string, str: string): bigint {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(str);
  if (!m) throw new UsageError(`Parameter '${param}' expects integer`);
  const d = m[2]!;
  const abs = /^0[xX]/.test(d) ? BigInt(d) : d.length > 1 && d[0] === '0' ? BigInt(`0o${d.slice(1)}`) : BigInt(d);
  const v = m[1] === '-' ? -abs : abs;
  if (v > (1n << 63n) - 1n || v < -(1n << 63n)) throw new UsageError(`Parameter '${param}' expects integer`);
  return v;
}

/** Runs a step that may fail with qemu's EFBIG rewording. */
export function tooLarge(fmt: string, err: unknown, clusterSizeHint: boolean): unknown {
  if (err instanceof TsimgError && err.errno === 'EFBIG') {
    const hint = clusterSizeHint ? ' (try using a larger cluster size)' : '';
    return new TsimgError('limit', `The image size is too large for file format '${fmt}'${hint}`, { errno: 'EFBIG' });
  }
  return err;
}

/** qcow2_co_create_opts: creates the files, converts the options, creates the image. */
export async function createQcow2Image(filename: string, opts: QemuOpts, objects: boolean, io: CliIO): Promise<void> {
  const path = protocolPath(filename);
  await createFile(path);
  const cleanup: string[] = [path];
  const dataName = opts.getString('data_file');
  const devices: FileDevice[] = [];
  try {
    if (dataName !== undefined) {
      const dataPath = protocolPath(dataName);
      if (await sameFile(path, dataPath)) {
        // qemu holds the image open, so creating it again as the data file fails on its lock;
        // the image is deleted, and deleting it a second time warns
        cleanup.splice(0);
        await rm(path, { force: true });
        io.stderr(`tsimg: ${dataPath} is not a regular file: No such file or directory\n`);
        throw new UsageError(`Failed to get shared "resize" lock\nIs another process using the image [${dataPath}]?`);
      }
      await createFile(dataPath);
      cleanup.push(dataPath);
    }
    // the QAPI visit of BlockdevCreateOptionsQcow2, in its member order
    const size = BigInt.asUintN(64, ((opts.get('size')!.value as bigint) + 511n) / 512n * 512n);
    const compat = opts.getString('compat');
    let version: 2 | 3 | undefined;
    if (compat !== undefined) {
      if (compat === '0.10' || compat === 'v2') version = 2;
      else if (compat === '1.1' || compat === 'v3') version = 3;
      else enumError('version', compat);
    }
    const backingFmt = opts.getString('backing_fmt');
    if (backingFmt !== undefined && !BLOCKDEV_DRIVERS.has(backingFmt)) enumError('backing-fmt', backingFmt);
    const encrypt = encryptionOf(opts);
    const prealloc = opts.getString('preallocation');
    if (prealloc !== undefined && !['off', 'metadata', 'falloc', 'full'].includes(prealloc)) enumError('preallocation', prealloc);
    const refcountBits = opts.get('refcount_bits');
    const compression = opts.getString('compression_type');
    if (compression !== undefined && compression !== 'zlib' && compression !== 'zstd') enumError('compression-type', compression);
    const options: Qcow2CreateOptions = {
      size,
      version,
      clusterSize: opts.get('cluster_size')?.value as bigint | undefined,
      refcountBits: refcountBits === undefined ? undefined : qapiInt('refcount-bits', refcountBits.str),
      lazyRefcounts: qapiBool(opts, 'lazy_refcounts'),
      extendedL2: qapiBool(opts, 'extended_l2'),
      compressionType: compression as 'zlib' | 'zstd' | undefined,
      preallocation: prealloc as Qcow2Preallocation | undefined,
      backingFile: opts.getString('backing_file'),
      backingFormat: backingFmt,
      // qemu records the data file's node name, which has lost any "file:" prefix
      dataFile: dataName === undefined ? undefined : protocolPath(dataName),
      dataFileRaw: qapiBool(opts, 'data_file_raw'),
    };
    if (encrypt) {
      // qemu validates everything else first (qcow2_co_create), then sets up encryption
      const { resolveQcow2CreateOptions } = await import('@tsimg/qcow2');
      resolveQcow2CreateOptions(options);
      if (encrypt.keySecret === undefined) throw new UsageError("Parameter 'encrypt.key-secret' is required for cipher");
      if (!objects) throw new UsageError(`No secret with id '${encrypt.keySecret}'`);
      throw new UnsupportedError('Encrypted qcow2 images are not supported by tsimg');
    }
    // Held while formatting as qemu's qcow2 node holds its file open read-write.
    const onWarning = lockWarnings(io, true);
    const file = await FileDevice.open(path, { lock: imageFileLock(topNodePermissions({ write: true }), 'qcow2'), onWarning });
    devices.push(file);
    let data: FileDevice | undefined;
    if (dataName !== undefined) {
      data = await FileDevice.open(protocolPath(dataName), { lock: dataFileLock(topNodePermissions({ write: true })), onWarning });
      devices.push(data);
    }
    await createQcow2(file, options, data);
    for (const d of devices.splice(0)) await d.close();
  } catch (err) {
    for (const d of devices) await d.close().catch(() => undefined);
    for (const p of cleanup) await rm(p, { force: true }).catch(() => undefined);
    throw err;
  }
}

/** Whether two paths name the same existing file. */
async function sameFile(a: string, b: string): Promise<boolean> {
  try {
    const [sa, sb] = await Promise.all([stat(a), stat(b)]);
    return sa.dev === sb.dev && sa.ino === sb.ino;
  } catch {
    return false;
  }
}

/** Opens the backing image as bdrv_img_create does; returns its format and size. */
async function openBacking(fullName: string, fmt: string | undefined): Promise<{ format: string; size: number }> {
  if (fmt !== undefined && !QEMU_DRIVERS.has(fmt)) throw new UsageError(`Unknown driver '${fmt}'`);
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
      throw new TsimgError(err.code, err.message.slice(prefix.length), { cause: err, errno: err.errno });
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
  objects: boolean;
}

/** bdrv_img_create. Errors come back as UsageError/TsimgError with qemu's text (no prefix). */
async function imgCreate(r: CreateRequest, io: CliIO): Promise<void> {
  const descs = FORMAT_OPTS[r.fmt];
  if (!descs) {
    if (!QEMU_DRIVERS.has(r.fmt)) throw new UsageError(`Unknown file format '${r.fmt}'`);
    if (!QEMU_CREATABLE.has(r.fmt)) throw new UsageError(`Format driver '${r.fmt}' does not support image creation`);
    throw new UnsupportedError(`Format '${r.fmt}' is not supported by tsimg (raw and qcow2 are)`);
  }
  protocolPath(r.filename);
  const opts = new QemuOpts(mergeOptDescs(descs, FILE_OPTS));
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
    if (r.fmt === 'qcow2') {
      await createQcow2Image(r.filename, opts, r.objects, io);
    } else {
      await createFile(protocolPath(r.filename), { size: opts.getNumber('size', 0n), preallocation: opts.getString('preallocation') });
    }
  } catch (err) {
    throw tooLarge(r.fmt, err, opts.getNumber('cluster_size', 0n) !== 0n);
  }
}

/** `tsimg create [-q] [-f fmt] [-b backing [-F fmt]] [-u] [-o options] filename [size]`. */
export const run: CommandRunner = async (argv, io) => {
  const parsed = getoptLong(argv, ':F:b:f:ho:qu', [
    { name: 'help', hasArg: false, key: 'h' },
    { name: 'object', hasArg: true, key: 'object' },
  ]);
  let fmt = 'raw';
  let baseFmt: string | undefined;
  let baseFilename: string | undefined;
  let options: string | undefined;
  let quiet = false;
  let noBacking = false;
  let objects = false;
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
        objects = true;
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
    await imgCreate({ filename, fmt, baseFilename, baseFmt, options, imgSize, noBacking, quiet, objects }, io);
  } catch (err) {
    if (err instanceof CliExit) throw err;
    const msg = err instanceof Error ? err.message : String(err);
    throw new CliExit(1, `${filename}: ${msg}${lockHint(err)}`);
  }
  return 0;
};
