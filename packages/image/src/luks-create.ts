/**
 * Creating a luks image (qemu's block/crypto.c block_crypto_co_create_opts_luks): its creation
 * options, the QAPI visit of the LUKS members (shared with qcow2's `encrypt.` options), and the
 * file sized to the header area plus the guest size, then the header and key slot 0.
 */
import { type LuksCreateOptions, luksPayloadBytes, LuksVolume, type MeasureResult, type Secrets, secretAsUtf8 } from '@tsimg/qcow2';
import { createFile, FileDevice, truncateWithPreallocation, UnsupportedError, UsageError } from '@tsimg/raw';
import { luksHeaderIo } from './luks-header-io.js';
import type { CreateContext } from './image.js';
import type { MeasureSource } from './measure.js';
import { imageFileLock, topNodePermissions } from './permissions.js';
import { checkPreallocation, enumError } from './qapi-visit.js';
import type { OptDesc, QemuOpts } from './qemu-opts.js';

/** The LUKS cipher and PBKDF options (block/crypto.h BLOCK_CRYPTO_OPT_DEF_LUKS_*), shared by luks and qcow2 (`encrypt.`). */
export const LUKS_CIPHER_OPTS: readonly OptDesc[] = [
  { name: 'cipher-alg', type: 'string', help: 'Name of encryption cipher algorithm' },
  { name: 'cipher-mode', type: 'string', help: 'Name of encryption cipher mode' },
  { name: 'ivgen-alg', type: 'string', help: 'Name of IV generator algorithm' },
  { name: 'ivgen-hash-alg', type: 'string', help: 'Name of IV generator hash algorithm' },
  { name: 'hash-alg', type: 'string', help: 'Name of encryption hash algorithm' },
  { name: 'iter-time', type: 'number', help: 'Time to spend in PBKDF in milliseconds' },
];

/** block_crypto_create_opts_luks in qemu 7.2's order. */
export const LUKS_OPTS: readonly OptDesc[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'key-secret', type: 'string', help: 'ID of the secret that provides the keyslot passphrase' },
  ...LUKS_CIPHER_OPTS,
];

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

/**
 * qcrypto_block_calculate_payload_offset for the LUKS options under `prefix`: the options' QAPI
 * visit, the key secret (required, and looked up), then the header area's size in bytes.
 */
export function luksHeaderBytes(opts: QemuOpts, prefix: string, secrets: Secrets): number {
  const luks = luksCreateOptions(opts, prefix);
  const id = opts.getString(`${prefix}key-secret`);
  if (id === undefined) throw new UsageError(`Parameter '${prefix}key-secret' is required for cipher`);
  secretAsUtf8(secrets, id).fill(0);
  return luksPayloadBytes(luks);
}

/** block_crypto_measure: the header area plus the whole guest size, allocated or not. */
export async function measureLuks(source: MeasureSource, opts: QemuOpts, secrets: Secrets): Promise<MeasureResult> {
  const header = luksHeaderBytes(opts, '', secrets);
  const size = 'size' in source ? Number(source.size) : source.image.size();
  const total = BigInt(header + size);
  return { required: total, fullyAllocated: total };
}

/**
 * block_crypto_co_create_opts_luks at host path `path`: the file sized to the header area plus
 * `size` (with the preallocation asked for), then the LUKS header and key slot 0 at its start.
 */
export async function createLuksImage(path: string, opts: QemuOpts, ctx: CreateContext): Promise<void> {
  const size = Number((opts.get('size')?.value as bigint | undefined) ?? 0n);
  const prealloc = opts.getString('preallocation');
  checkPreallocation(prealloc);
  const luks = luksCreateOptions(opts, '');
  const keySecret = opts.getString('key-secret');
  if (keySecret === undefined) throw new UsageError("Parameter 'key-secret' is required for cipher");
  const password = secretAsUtf8(ctx.secrets, keySecret);
  await createFile(path);
  const file = await FileDevice.open(path, { lock: imageFileLock(topNodePermissions({ write: true }), 'luks'), onWarning: ctx.onWarning });
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
    await FileDevice.remove(path).catch(() => undefined);
    throw err;
  } finally {
    password.fill(0);
  }
}
