/**
 * Creating an image file from its creation options, as bdrv_create does for the formats tsimg
 * creates: qcow2_co_create_opts (the files, the QAPI visit of the options, the image), and
 * file-posix for raw. Also the two helpers create and convert share around it: the file
 * protocol's name rule and qemu's EFBIG rewording.
 */
import fs from 'node:fs';
import {
  createQcow2, type LuksCreateOptions, LuksVolume, type Qcow2CreateOptions, type Qcow2Preallocation, resolveQcow2CreateOptions, type Secrets, secretAsUtf8,
} from '@tsimg/qcow2';
import { createFile, FileDevice, TsimgError, truncateWithPreallocation, UnsupportedError, UsageError, LimitError } from '@tsimg/raw';
import { createOnNbd, dataFileLock, imageFileLock, locateImage, luksHeaderIo, type NbdAddress, NbdClient, topNodePermissions } from '@tsimg/image';
import type { CliIO } from './command.js';
import { lockWarnings } from './lock-messages.js';
import type { QemuOpts } from './options.js';
import { BLOCKDEV_DRIVERS } from './qemu-formats.js';

/** bdrv_find_protocol: the host path of `filename` (only the file protocol is available). */
export function protocolPath(filename: string): string {
  const m = /^([^:/]*):/.exec(filename);
  if (!m) return filename;
  if (m[1] === 'file') return filename.slice(5);
  // The curl protocols exist (reading), but bdrv_create finds no create function in them.
  if (m[1] === 'http' || m[1] === 'https') throw new UsageError(`Protocol driver '${m[1]}' does not support image creation`);
  throw new UsageError(`Unknown protocol '${m[1]}'`);
}

/** The NBD export a filename names, if it names one. */
export function nbdLocation(filename: string): NbdAddress | undefined {
  try {
    return locateImage(filename).nbd;
  } catch {
    return undefined;
  }
}

/**
 * The host file a target name stands for, or undefined for an NBD export, which is used as it
 * is (never created, emptied or locked as a file). Throws protocolPath's UsageError for a
 * protocol that cannot create images.
 */
export function targetHostFile(filename: string): string | undefined {
  return nbdLocation(filename) === undefined ? protocolPath(filename) : undefined;
}

/** Parses a bool option's string the way the QAPI visitor does after qemu_opts_to_qdict. */
function qapiBool(opts: QemuOpts, name: string): boolean | undefined {
  const e = opts.get(name);
  return e === undefined ? undefined : (e.value as boolean);
}

function enumError(param: string, value: string): never {
  throw new UsageError(`Parameter '${param}' does not accept value '${value}'`);
}

/** The QAPI enums of QCryptoBlockCreateOptionsLUKS, in the visit's member order. */
const LUKS_ENUMS: readonly (readonly [string, ReadonlySet<string>])[] = [
  ['cipher-alg', new Set(['aes-128', 'aes-192', 'aes-256', 'des', '3des', 'cast5-128', 'serpent-128', 'serpent-192', 'serpent-256', 'twofish-128', 'twofish-192', 'twofish-256'])],
  ['cipher-mode', new Set(['ecb', 'cbc', 'xts', 'ctr'])],
  ['ivgen-alg', new Set(['plain', 'plain64', 'essiv'])],
  ['ivgen-hash-alg', new Set(['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160'])],
  ['hash-alg', new Set(['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160'])],
];

/**
 * The LUKS creation options under `prefix` (`encrypt.` for qcow2, none for luks) after the
 * QAPI visit: enums checked with qemu's message (which names the member without the prefix).
 */
export function luksCreateOptions(opts: QemuOpts, prefix: string): LuksCreateOptions {
  const out: Record<string, string | number> = {};
  for (const [name, values] of LUKS_ENUMS) {
    const v = opts.getString(prefix + name);
    if (v === undefined) continue;
    if (!values.has(v)) enumError(name, v);
    if (v === 'des' || v === '3des') throw new UnsupportedError(`Algorithm '${v}' not supported`);
    out[name] = v;
  }
  const iter = opts.get(prefix + 'iter-time');
  return {
    cipherAlg: out['cipher-alg'] as LuksCreateOptions['cipherAlg'],
    cipherMode: out['cipher-mode'] as LuksCreateOptions['cipherMode'],
    ivgenAlg: out['ivgen-alg'] as LuksCreateOptions['ivgenAlg'],
    ivgenHashAlg: out['ivgen-hash-alg'] as LuksCreateOptions['ivgenHashAlg'],
    hashAlg: out['hash-alg'] as LuksCreateOptions['hashAlg'],
    iterTime: iter === undefined ? undefined : Number(iter.value as bigint),
  };
}

/** The encryption settings after qcow2_co_create_opts' legacy handling and the QAPI visit. */
function encryptionOf(opts: QemuOpts): { format: 'qcow' | 'luks'; keySecret?: string; luks?: LuksCreateOptions } | undefined {
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

/**
 * qemu's rewording of an EFBIG failure of image creation ("The image size is too large for file
 * format ..."); other errors are returned unchanged.
 */
export function tooLarge(fmt: string, err: unknown, clusterSizeHint: boolean): unknown {
  if (err instanceof TsimgError && err.errno === 'EFBIG') {
    const hint = clusterSizeHint ? ' (try using a larger cluster size)' : '';
    return new LimitError(`The image size is too large for file format '${fmt}'${hint}`, { errno: 'EFBIG' });
  }
  return err;
}

/**
 * The qcow2 creation options `-o` (and the size) give, checked in the order of qemu's QAPI visit
 * of BlockdevCreateOptionsQcow2; `encrypt` when encryption was asked for.
 */
export function qcow2CreateOptionsOf(opts: QemuOpts): { options: Qcow2CreateOptions; encrypt: ReturnType<typeof encryptionOf> } {
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
  return { options, encrypt };
}

/** qcow2_co_create_opts: creates the files, converts the options, creates the image. */
export async function createQcow2Image(filename: string, opts: QemuOpts, secrets: Secrets, io: CliIO): Promise<void> {
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
        await fs.promises.rm(path, { force: true });
        io.stderr(`tsimg: ${dataPath} is not a regular file: No such file or directory\n`);
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
      const password = secretAsUtf8(secrets, encrypt.keySecret);
      options.encrypt = encrypt.format === 'luks' ? { format: 'luks', password, luks: encrypt.luks } : { format: 'aes', password };
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
    try {
      await createQcow2(file, options, data);
    } finally {
      options.encrypt?.password.fill(0);
    }
    for (const d of devices.splice(0)) await d.close();
  } catch (err) {
    for (const d of devices) await d.close().catch(() => undefined);
    for (const p of cleanup) await fs.promises.rm(p, { force: true }).catch(() => undefined);
    throw err;
  }
}

/**
 * qcow2_co_create_opts onto an NBD export: the export is taken as it is (qcow2 asks its file
 * for size 0, which an export larger than that satisfies; the first sector is zeroed), then
 * formatted in place through the client. nbd_co_truncate keeps the export's size when asked
 * for less and refuses more ("Cannot grow NBD nodes"); the rest of the export keeps its bytes.
 */
async function createQcow2OnNbd(nbd: NbdAddress, opts: QemuOpts): Promise<void> {
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

/** Whether two paths name the same existing file. */
async function sameFile(a: string, b: string): Promise<boolean> {
  try {
    const [sa, sb] = await Promise.all([fs.promises.stat(a), fs.promises.stat(b)]);
    return sa.dev === sb.dev && sa.ino === sb.ino;
  } catch {
    return false;
  }
}

/**
 * bdrv_create of a `qcow2`, `luks` or `raw` image at `filename` with `opts` (which hold the
 * size); `secrets` are the `--object secret,...` data the encryption options name.
 */
export async function createImageFile(fmt: string, filename: string, opts: QemuOpts, secrets: Secrets, io: CliIO): Promise<void> {
  const nbd = nbdLocation(filename);
  if (nbd !== undefined) {
    // A protocol that cannot create: the export is used as it is (bdrv_co_create_opts_simple).
    if (fmt === 'qcow2') await createQcow2OnNbd(nbd, opts);
    else if (fmt !== 'raw') throw new UnsupportedError(`tsimg cannot create a ${fmt} image on an NBD export`);
    else await createOnNbd(nbd, Number(opts.getNumber('size', 0n)));
    return;
  }
  if (fmt === 'qcow2') await createQcow2Image(filename, opts, secrets, io);
  else if (fmt === 'luks') await createLuksImage(filename, opts, secrets, io);
  else await createFile(protocolPath(filename), { size: opts.getNumber('size', 0n), preallocation: opts.getString('preallocation') });
}

/**
 * block_crypto_co_create_opts_luks: the file sized to the header area plus `size` (with the
 * preallocation asked for), then the LUKS header and key slot 0 written at its start.
 */
export async function createLuksImage(filename: string, opts: QemuOpts, secrets: Secrets, io: CliIO): Promise<void> {
  const path = protocolPath(filename);
  const size = Number((opts.get('size')?.value as bigint | undefined) ?? 0n);
  const prealloc = opts.getString('preallocation');
  if (prealloc !== undefined && !['off', 'metadata', 'falloc', 'full'].includes(prealloc)) enumError('preallocation', prealloc);
  const luks = luksCreateOptions(opts, '');
  const keySecret = opts.getString('key-secret');
  if (keySecret === undefined) throw new UsageError("Parameter 'key-secret' is required for cipher");
  const password = secretAsUtf8(secrets, keySecret);
  await createFile(path);
  const file = await FileDevice.open(path, { lock: imageFileLock(topNodePermissions({ write: true }), 'luks'), onWarning: lockWarnings(io, true) });
  try {
    const volume = await LuksVolume.create(luks, password, async (headerBytes) => {
      const mode = prealloc === 'metadata' ? 'off' : prealloc;
      await truncateWithPreallocation(file, BigInt(headerBytes + size), (mode ?? 'off') as 'off' | 'falloc' | 'full');
      return luksHeaderIo(file);
    });
    volume.dispose();
    await file.close();
  } catch (err) {
    await file.close().catch(() => undefined);
    await fs.promises.rm(path, { force: true }).catch(() => undefined);
    throw err;
  } finally {
    password.fill(0);
  }
}
