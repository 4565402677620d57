/**
 * The LUKS1 header that qcow2 images with encrypt.format=luks keep in their crypto header
 * extension: decoded and checked as qemu's qcrypto_block_luks_open does without a key
 * (QCRYPTO_BLOCK_OPEN_NO_IO), into what `qemu-img info` reports (QAPI QCryptoBlockInfoLUKS).
 *
 * Layout (big-endian): magic "LUKS\xba\xbe", u16 version, cipher name[32], cipher mode[32],
 * hash spec[32], u32 payload offset (sectors), u32 key bytes, digest[20], salt[32], u32 digest
 * iterations, uuid[40], then 8 key slots of {u32 active, u32 iterations, salt[32], u32 key
 * material offset (sectors), u32 stripes}.
 */
import { FormatError, UnsupportedError } from '@tsimg/raw';
import { decodeByteString } from './byte-string.js';

/** QAPI QCryptoBlockInfoLUKSSlot. */
export interface LuksSlotInfo {
  active: boolean;
  iters?: number;
  stripes?: number;
  'key-offset': number;
}

/** QAPI QCryptoBlockInfoLUKS (the LUKS branch of the qcow2 `encrypt` union). */
export interface LuksInfo {
  'cipher-alg': string;
  'cipher-mode': string;
  'ivgen-alg': string;
  'ivgen-hash-alg'?: string;
  'hash-alg': string;
  'payload-offset': number;
  'master-key-iters': number;
  uuid: string;
  slots: LuksSlotInfo[];
}

/** Size of the LUKS1 header with its 8 key slots. */
export const LUKS_HEADER_SIZE = 592;
const LUKS_MAGIC = 'LUKS\xba\xbe';
const LUKS_SECTOR = 512;
const LUKS_KEY_SLOT_OFFSET = 4096;
const LUKS_STRIPES = 4000;
const LUKS_SLOT_ENABLED = 0x00ac71f3;
const LUKS_SLOT_DISABLED = 0x0000dead;

const CIPHER_SIZES: Readonly<Record<string, Readonly<Record<number, string>>>> = {
  aes: { 16: 'aes-128', 24: 'aes-192', 32: 'aes-256' },
  cast5: { 16: 'cast5-128' },
  serpent: { 16: 'serpent-128', 24: 'serpent-192', 32: 'serpent-256' },
  twofish: { 16: 'twofish-128', 24: 'twofish-192', 32: 'twofish-256' },
};
const CIPHER_MODES = new Set(['ecb', 'cbc', 'xts', 'ctr']);
const IVGEN_ALGS = new Set(['plain', 'plain64', 'essiv']);
const HASH_ALGS = new Set(['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160']);

function bytesEqual(a: Uint8Array, offset: number, s: string): boolean {
  if (offset + s.length > a.length) return false;
  for (let i = 0; i < s.length; i++) if (a[offset + i] !== s.charCodeAt(i)) return false;
  return true;
}

function fixedString(b: Uint8Array): string {
  const nul = b.indexOf(0);
  return decodeByteString(nul >= 0 ? b.subarray(0, nul) : b);
}

/**
 * Decodes and checks a LUKS1 header the way qemu's qcrypto_block_luks_open does without a key
 * (QCRYPTO_BLOCK_OPEN_NO_IO): magic, version, key slot layout, cipher/mode/hash names.
 */
export function decodeLuksInfo(b: Uint8Array): LuksInfo {
  if (b.length < LUKS_HEADER_SIZE) throw new FormatError('LUKS header is truncated');
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (!bytesEqual(b, 0, LUKS_MAGIC)) throw new FormatError('Volume is not in LUKS format');
  const version = v.getUint16(6);
  if (version !== 1) throw new UnsupportedError(`LUKS version ${version} is not supported`);
  const field = (off: number, len: number, what: string): string => {
    const f = b.subarray(off, off + len);
    if (f.indexOf(0) < 0) throw new FormatError(`LUKS header ${what} is not NUL terminated`);
    return fixedString(f);
  };
  const cipherName = field(8, 32, 'cipher name');
  const cipherModeSpec = field(40, 32, 'cipher mode');
  const hashSpec = field(72, 32, 'hash spec');
  const payloadSector = v.getUint32(104);
  const keyBytes = v.getUint32(108);
  const mkIters = v.getUint32(164);
  const uuid = fixedString(b.subarray(168, 208));
  const headerSectors = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR;
  if (payloadSector < headerSectors) throw new FormatError('LUKS payload is overlapping with the header');
  if (mkIters === 0) throw new FormatError('LUKS key iteration count is zero');
  const slotSectors = (stripes: number): number =>
    Math.ceil(Math.ceil((keyBytes * stripes) / LUKS_SECTOR) / headerSectors) * headerSectors;
  const slots: LuksSlotInfo[] = [];
  const raw: Array<{ active: number; iters: number; start: number; stripes: number }> = [];
  for (let i = 0; i < 8; i++) {
    const o = 208 + i * 48;
    raw.push({ active: v.getUint32(o), iters: v.getUint32(o + 4), start: v.getUint32(o + 40), stripes: v.getUint32(o + 44) });
  }
  raw.forEach((s, i) => {
    if (s.stripes !== LUKS_STRIPES) {
      throw new FormatError(`Keyslot ${i} is corrupted (stripes ${s.stripes} != ${LUKS_STRIPES})`);
    }
    if (s.active !== LUKS_SLOT_ENABLED && s.active !== LUKS_SLOT_DISABLED) {
      throw new FormatError(`Keyslot ${i} state (active/disable) is corrupted`);
    }
    if (s.active === LUKS_SLOT_ENABLED && s.iters === 0) throw new FormatError(`Keyslot ${i} iteration count is zero`);
    if (s.start < headerSectors) throw new FormatError(`Keyslot ${i} is overlapping with the LUKS header`);
    const len = slotSectors(s.stripes);
    if (s.start + len > payloadSector) throw new FormatError(`Keyslot ${i} is overlapping with the encrypted payload`);
    for (let j = i + 1; j < 8; j++) {
      const t = raw[j]!;
      const len2 = slotSectors(t.stripes);
      if (s.start + len > t.start && t.start + len2 > s.start) {
        throw new FormatError(`Keyslots ${i} and ${j} are overlapping in the header`);
      }
    }
    const active = s.active === LUKS_SLOT_ENABLED;
    slots.push(
      active
        ? { active, iters: s.iters, stripes: s.stripes, 'key-offset': s.start * LUKS_SECTOR }
        : { active, 'key-offset': s.start * LUKS_SECTOR },
    );
  });
  // "xts-plain64" → mode xts, ivgen plain64; "cbc-essiv:sha256" → ivgen essiv with hash sha256.
  const dash = cipherModeSpec.indexOf('-');
  const mode = dash >= 0 ? cipherModeSpec.slice(0, dash) : cipherModeSpec;
  const ivSpec = dash >= 0 ? cipherModeSpec.slice(dash + 1) : 'plain';
  const colon = ivSpec.indexOf(':');
  const ivgen = colon >= 0 ? ivSpec.slice(0, colon) : ivSpec;
  const ivHash = colon >= 0 ? ivSpec.slice(colon + 1) : undefined;
  if (!CIPHER_MODES.has(mode)) throw new UnsupportedError(`Cipher mode '${mode}' is not supported`);
  if (!IVGEN_ALGS.has(ivgen)) throw new UnsupportedError(`IV generator '${ivgen}' is not supported`);
  const algKeyBytes = mode === 'xts' ? keyBytes / 2 : keyBytes;
  const alg = CIPHER_SIZES[cipherName]?.[algKeyBytes];
  if (alg === undefined) {
    throw new UnsupportedError(`Algorithm '${cipherName}' with key size ${algKeyBytes} bytes not supported`);
  }
  if (!HASH_ALGS.has(hashSpec)) throw new UnsupportedError(`Hash algorithm '${hashSpec}' not supported`);
  if (ivgen === 'essiv' && (ivHash === undefined || !HASH_ALGS.has(ivHash))) {
    throw new UnsupportedError(`Hash algorithm '${ivHash ?? ''}' not supported`);
  }
  // Built in schema order; ivgen-hash-alg exists only for essiv.
  const out: Partial<LuksInfo> = { 'cipher-alg': alg, 'cipher-mode': mode, 'ivgen-alg': ivgen };
  if (ivgen === 'essiv') out['ivgen-hash-alg'] = ivHash;
  out['hash-alg'] = hashSpec;
  out['payload-offset'] = payloadSector * LUKS_SECTOR;
  out['master-key-iters'] = mkIters;
  out.uuid = uuid;
  out.slots = slots;
  return out as LuksInfo;
}
