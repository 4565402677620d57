/**
 * Creating a qcow2 image from its creation options, as qcow2_co_create_opts does: the option
 * table (qcow2_create_opts), the legacy encryption options and the QAPI visit of
 * BlockdevCreateOptionsQcow2, then the files and the image — on a host file, or formatted in
 * place on an NBD export.
 */
import {
  createQcow2, type LuksCreateOptions, type MeasureResult, type Qcow2CreateOptions, type Qcow2MeasureOptions, type Qcow2Preallocation,
  resolveQcow2CreateOptions, type Secrets, secretAsUtf8,
} from '@tsimg/qcow2';
import { createFile, FileDevice, UnsupportedError, UsageError } from '@tsimg/raw';
import type { CreateContext } from './image.js';
import { protocolPath } from './image-create.js';
import { LUKS_CIPHER_OPTS, luksCreateOptions, luksHeaderBytes } from './luks-create.js';
import { measureQcow2Source, type MeasureSource } from './measure.js';
import type { NbdAddress } from './nbd/address.js';
import { NbdClient } from './nbd/client.js';
import { createOnNbd } from './nbd/create-target.js';
import { dataFileLock, imageFileLock, topNodePermissions } from './permissions.js';
import { checkPreallocation, enumError, qapiBool, qapiInt } from './qapi-visit.js';
import { BLOCKDEV_DRIVERS } from './qemu-drivers.js';
import type { OptDesc, QemuOpts } from './qemu-opts.js';

/** qcow2_create_opts in qemu 7.2's order (the order of the "Formatting" line). */
export const QCOW2_OPTS: readonly OptDesc[] = [
  { name: 'encryption', type: 'bool', help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)" },
  { name: 'encrypt.format', type: 'string', help: "Encrypt the image, format choices: 'aes', 'luks'" },
  { name: 'encrypt.key-secret', type: 'string', help: 'ID of secret providing qcow AES key or LUKS passphrase' },
  ...LUKS_CIPHER_OPTS.map((d) => ({ ...d, name: `encrypt.${d.name}` })),
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

/** The encryption a qcow2's creation options ask for, after the QAPI visit. */
export interface Qcow2CreateEncryption {
  format: 'qcow' | 'luks';
  keySecret?: string;
  luks?: LuksCreateOptions;
}

/** The encryption settings after qcow2_co_create_opts' legacy handling and the QAPI visit. */
function encryptionOf(opts: QemuOpts): Qcow2CreateEncryption | undefined {
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
  const keySecret = opts.getString('encrypt.key-secret');
  return format === 'luks' ? { format, keySecret, luks: luksCreateOptions(opts, 'encrypt.') } : { format, keySecret };
}

/**
 * The qcow2 creation options `-o` (and the size) give, checked in the order of qemu's QAPI visit
 * of BlockdevCreateOptionsQcow2; `encrypt` when encryption was asked for.
 */
export function qcow2CreateOptionsOf(opts: QemuOpts): { options: Qcow2CreateOptions; encrypt: Qcow2CreateEncryption | undefined } {
  const dataName = opts.getString('data_file');
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
  checkPreallocation(prealloc);
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
  return { options, encrypt };
}

/** qcow2_co_create_opts at host path `path`: creates the files, converts the options, creates the image. */
export async function createQcow2Image(path: string, opts: QemuOpts, ctx: CreateContext): Promise<void> {
  await createFile(path);
  const cleanup: string[] = [path];
  const dataName = opts.getString('data_file');
  const devices: FileDevice[] = [];
  try {
    if (dataName !== undefined) {
      const dataPath = protocolPath(dataName);
      if (await FileDevice.sameFile(path, dataPath)) {
        // qemu holds the image open, so creating it again as the data file fails on its lock;
        // the image is deleted, and deleting it a second time warns
        cleanup.splice(0);
        await FileDevice.remove(path);
        ctx.report?.(`${dataPath} is not a regular file: No such file or directory`);
        throw new UsageError(`Failed to get shared "resize" lock\nIs another process using the image [${dataPath}]?`);
      }
      await createFile(dataPath);
      cleanup.push(dataPath);
    }
    const { options, encrypt } = qcow2CreateOptionsOf(opts);
    if (encrypt) {
      // qemu validates everything else first (qcow2_co_create), then sets up encryption
      resolveQcow2CreateOptions(options);
      if (encrypt.keySecret === undefined) throw new UsageError("Parameter 'encrypt.key-secret' is required for cipher");
      const password = secretAsUtf8(ctx.secrets, encrypt.keySecret);
      options.encrypt = encrypt.format === 'luks' ? { format: 'luks', password, luks: encrypt.luks } : { format: 'aes', password };
    }
    // Held while formatting as qemu's qcow2 node holds its file open read-write.
    const onWarning = ctx.onWarning;
    const file = await FileDevice.open(path, { lock: imageFileLock(topNodePermissions({ write: true }), 'qcow2'), onWarning });
    devices.push(file);
    let data: FileDevice | undefined;
    if (dataName !== undefined) {
      data = await FileDevice.open(protocolPath(dataName), { lock: dataFileLock(topNodePermissions({ write: true })), onWarning });
      devices.push(data);
    }
    try {
      await createQcow2(file, options, data);
    } finally {
      options.encrypt?.password.fill(0);
    }
    for (const d of devices.splice(0)) await d.close();
  } catch (err) {
    for (const d of devices) await d.close().catch(() => undefined);
    for (const p of cleanup) await FileDevice.remove(p).catch(() => undefined);
    throw err;
  }
}

/**
 * qcow2_co_create_opts onto an NBD export: the export is taken as it is (qcow2 asks its file
 * for size 0, which an export larger than that satisfies; the first sector is zeroed), then
 * formatted in place through the client. nbd_co_truncate keeps the export's size when asked
 * for less and refuses more ("Cannot grow NBD nodes"); the rest of the export keeps its bytes.
 */
export async function createQcow2OnNbd(nbd: NbdAddress, opts: QemuOpts): Promise<void> {
  const { options, encrypt } = qcow2CreateOptionsOf(opts);
  if (encrypt !== undefined || options.dataFile !== undefined) {
    throw new UnsupportedError('tsimg cannot create an encrypted qcow2 image, or one with a data file, on an NBD export');
  }
  await createOnNbd(nbd, 0);
  const dev = await NbdClient.connect(nbd, { readOnly: false });
  try {
    await createQcow2(
      {
        write: (offset, data) => dev.write(offset, data),
        size: () => dev.size(),
        resize: async (size) => {
          if (size > dev.size()) throw new UsageError('Cannot grow NBD nodes', { errno: 'EINVAL' });
        },
      },
      options,
    );
    await dev.flush();
  } finally {
    await dev.close();
  }
}

/** The options of qcow2's measure calculation that the creation options give. */
function qcow2MeasureOptions(opts: QemuOpts): Qcow2MeasureOptions {
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

/** qcow2_measure for creation options `opts`; the LUKS header's size is asked only when encrypted. */
export function measureQcow2Image(source: MeasureSource, opts: QemuOpts, secrets: Secrets): Promise<MeasureResult> {
  return measureQcow2Source(source, { ...qcow2MeasureOptions(opts), luksHeaderBytes: () => luksHeaderBytes(opts, 'encrypt.', secrets) });
}
