/**
 * The LUKS1 header (qemu's QCryptoBlockLUKSHeader, crypto/block-luks-priv.h): a pure codec with
 * named offsets, qemu's consistency checks (qcrypto_block_luks_check_header), the parsing of
 * its cipher names (qcrypto_block_luks_parse_header) and what `qemu-img info` reports of it
 * (QAPI QCryptoBlockInfoLUKS). Raw LUKS volumes keep it at offset 0; qcow2 images in the
 * clusters their crypto header extension names.
 *
 * Layout (big-endian): magic "LUKS\xba\xbe", u16 version, cipher name[32], cipher mode[32],
 * hash spec[32], u32 payload offset (sectors), u32 key bytes, digest[20], salt[32], u32 digest
 * iterations, uuid[40], then 8 key slots of {u32 active, u32 iterations, salt[32], u32 key
 * material offset (sectors), u32 stripes}.
 */
import { FormatError, UnsupportedError } from '@tsimg/raw';
import { decodeByteString } from '../format/byte-string.js';
import { type CipherAlg, type CipherMode, cipherKeyBytes, type HashAlg, hashBytes, type IvgenAlg, CRYPTO_SECTOR } from './cipher.js';

/** Size of the LUKS1 header with its 8 key slots. */
export const LUKS_HEADER_SIZE = 592;
/** "LUKS\xba\xbe". */
export const LUKS_MAGIC: readonly number[] = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];
/** Where the first key material goes (QCRYPTO_BLOCK_LUKS_KEY_SLOT_OFFSET). */
export const LUKS_KEY_SLOT_OFFSET = 4096;
/** Anti-forensic stripes of every key slot qemu accepts. */
export const LUKS_STRIPES = 4000;
export const LUKS_NUM_KEY_SLOTS = 8;
export const LUKS_SLOT_ENABLED = 0x00ac71f3;
export const LUKS_SLOT_DISABLED = 0x0000dead;
export const LUKS_SALT_LEN = 32;
export const LUKS_DIGEST_LEN = 20;

const OFF = {
  magic: 0, version: 6, cipherName: 8, cipherMode: 40, hashSpec: 72, payloadOffset: 104, keyBytes: 108,
  digest: 112, salt: 132, digestIterations: 164, uuid: 168, slots: 208,
} as const;
const NAME_LEN = 32;
const UUID_LEN = 40;
const SLOT_SIZE = 48;
const SLOT = { active: 0, iterations: 4, salt: 8, keyOffset: 40, stripes: 44 } as const;

/** One key slot as stored. */
export interface LuksKeySlot {
  /** LUKS_SLOT_ENABLED, LUKS_SLOT_DISABLED or (damaged) anything else. */
  active: number;
  iterations: number;
  salt: Uint8Array;
  /** In 512-byte sectors. */
  keyOffsetSector: number;
  stripes: number;
}

/** The header as stored (names as raw bytes, up to their first NUL). */
export interface LuksHeader {
  magic: Uint8Array;
  version: number;
  cipherName: Uint8Array;
  cipherMode: Uint8Array;
  hashSpec: Uint8Array;
  payloadOffsetSector: number;
  masterKeyLen: number;
  masterKeyDigest: Uint8Array;
  masterKeySalt: Uint8Array;
  masterKeyIterations: number;
  uuid: Uint8Array;
  keySlots: LuksKeySlot[];
}

/** Decodes the header's fields from `b` (at least {@link LUKS_HEADER_SIZE} bytes); checks nothing. */
export function decodeLuksHeader(b: Uint8Array): LuksHeader {
  if (b.length < LUKS_HEADER_SIZE) throw new FormatError('LUKS header is truncated');
  const v = new DataView(b.buffer, b.byteOffset, LUKS_HEADER_SIZE);
  const bytes = (off: number, len: number): Uint8Array => b.slice(off, off + len);
  const keySlots: LuksKeySlot[] = [];
  for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) {
    const o = OFF.slots + i * SLOT_SIZE;
    keySlots.push({
      active: v.getUint32(o + SLOT.active),
      iterations: v.getUint32(o + SLOT.iterations),
      salt: bytes(o + SLOT.salt, LUKS_SALT_LEN),
      keyOffsetSector: v.getUint32(o + SLOT.keyOffset),
      stripes: v.getUint32(o + SLOT.stripes),
    });
  }
  return {
    magic: bytes(OFF.magic, 6),
    version: v.getUint16(OFF.version),
    cipherName: bytes(OFF.cipherName, NAME_LEN),
    cipherMode: bytes(OFF.cipherMode, NAME_LEN),
    hashSpec: bytes(OFF.hashSpec, NAME_LEN),
    payloadOffsetSector: v.getUint32(OFF.payloadOffset),
    masterKeyLen: v.getUint32(OFF.keyBytes),
    masterKeyDigest: bytes(OFF.digest, LUKS_DIGEST_LEN),
    masterKeySalt: bytes(OFF.salt, LUKS_SALT_LEN),
    masterKeyIterations: v.getUint32(OFF.digestIterations),
    uuid: bytes(OFF.uuid, UUID_LEN),
    keySlots,
  };
}

/** Encodes `h` into `b` (at least {@link LUKS_HEADER_SIZE} bytes; fields are padded with NULs). */
export function encodeLuksHeader(h: LuksHeader, b: Uint8Array): void {
  const v = new DataView(b.buffer, b.byteOffset, LUKS_HEADER_SIZE);
  b.fill(0, 0, LUKS_HEADER_SIZE);
  const put = (off: number, len: number, src: Uint8Array): void => b.set(src.subarray(0, len), off);
  put(OFF.magic, 6, h.magic);
  v.setUint16(OFF.version, h.version);
  put(OFF.cipherName, NAME_LEN, h.cipherName);
  put(OFF.cipherMode, NAME_LEN, h.cipherMode);
  put(OFF.hashSpec, NAME_LEN, h.hashSpec);
  v.setUint32(OFF.payloadOffset, h.payloadOffsetSector);
  v.setUint32(OFF.keyBytes, h.masterKeyLen);
  put(OFF.digest, LUKS_DIGEST_LEN, h.masterKeyDigest);
  put(OFF.salt, LUKS_SALT_LEN, h.masterKeySalt);
  v.setUint32(OFF.digestIterations, h.masterKeyIterations);
  put(OFF.uuid, UUID_LEN, h.uuid);
  h.keySlots.forEach((s, i) => {
    const o = OFF.slots + i * SLOT_SIZE;
    v.setUint32(o + SLOT.active, s.active);
    v.setUint32(o + SLOT.iterations, s.iterations);
    put(o + SLOT.salt, LUKS_SALT_LEN, s.salt);
    v.setUint32(o + SLOT.keyOffset, s.keyOffsetSector);
    v.setUint32(o + SLOT.stripes, s.stripes);
  });
}

/** A NUL-padded field as text (up to its first NUL). */
export function fieldText(f: Uint8Array): string {
  const nul = f.indexOf(0);
  return decodeByteString(nul >= 0 ? f.subarray(0, nul) : f);
}

/** The ASCII bytes of a header name. */
export function fieldBytes(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);
}

const HEADER_SECTORS = LUKS_KEY_SLOT_OFFSET / CRYPTO_SECTOR;

/**
 * qcrypto_block_luks_splitkeylen_sectors: the key material of one slot in sectors, rounded up
 * to the header's 8 sectors as cryptsetup does.
 */
export function splitKeySectors(masterKeyLen: number, stripes: number): number {
  const sectors = Math.ceil((masterKeyLen * stripes) / CRYPTO_SECTOR);
  return Math.ceil(sectors / HEADER_SECTORS) * HEADER_SECTORS;
}

/** qcrypto_block_luks_check_header: magic, version, terminated names, slot layout. */
export function checkLuksHeader(h: LuksHeader): void {
  if (!LUKS_MAGIC.every((c, i) => h.magic[i] === c)) throw new FormatError('Volume is not in LUKS format');
  if (h.version !== 1) throw new UnsupportedError(`LUKS version ${h.version} is not supported`);
  if (h.cipherName.indexOf(0) < 0) throw new FormatError('LUKS header cipher name is not NUL terminated');
  if (h.cipherMode.indexOf(0) < 0) throw new FormatError('LUKS header cipher mode is not NUL terminated');
  if (h.hashSpec.indexOf(0) < 0) throw new FormatError('LUKS header hash spec is not NUL terminated');
  if (h.payloadOffsetSector < HEADER_SECTORS) throw new FormatError('LUKS payload is overlapping with the header');
  if (h.masterKeyIterations === 0) throw new FormatError('LUKS key iteration count is zero');
  h.keySlots.forEach((s, i) => {
    // qemu computes in size_t then stores in unsigned int: wraps modulo 2^32 like this.
    const len = splitKeySectors(h.masterKeyLen, s.stripes) >>> 0;
    if (s.stripes !== LUKS_STRIPES) throw new FormatError(`Keyslot ${i} is corrupted (stripes ${s.stripes | 0} != ${LUKS_STRIPES})`);
    if (s.active !== LUKS_SLOT_ENABLED && s.active !== LUKS_SLOT_DISABLED) {
      throw new FormatError(`Keyslot ${i} state (active/disable) is corrupted`);
    }
    if (s.active === LUKS_SLOT_ENABLED && s.iterations === 0) throw new FormatError(`Keyslot ${i} iteration count is zero`);
    if (s.keyOffsetSector < HEADER_SECTORS) throw new FormatError(`Keyslot ${i} is overlapping with the LUKS header`);
    if (((s.keyOffsetSector + len) >>> 0) > h.payloadOffsetSector) {
      throw new FormatError(`Keyslot ${i} is overlapping with the encrypted payload`);
    }
    for (let j = i + 1; j < LUKS_NUM_KEY_SLOTS; j++) {
      const t = h.keySlots[j]!;
      const len2 = splitKeySectors(h.masterKeyLen, t.stripes) >>> 0;
      if (((s.keyOffsetSector + len) >>> 0) > t.keyOffsetSector && ((t.keyOffsetSector + len2) >>> 0) > s.keyOffsetSector) {
        throw new FormatError(`Keyslots ${i} and ${j} are overlapping in the header`);
      }
    }
  });
}

const CIPHER_SIZES: Readonly<Record<string, Readonly<Record<number, CipherAlg>>>> = {
  aes: { 16: 'aes-128', 24: 'aes-192', 32: 'aes-256' },
  cast5: { 16: 'cast5-128' },
  serpent: { 16: 'serpent-128', 24: 'serpent-192', 32: 'serpent-256' },
  twofish: { 16: 'twofish-128', 24: 'twofish-192', 32: 'twofish-256' },
};
const CIPHER_MODES: ReadonlySet<string> = new Set(['ecb', 'cbc', 'xts', 'ctr']);
const IVGEN_ALGS: ReadonlySet<string> = new Set(['plain', 'plain64', 'essiv']);
const HASH_ALGS: ReadonlySet<string> = new Set(['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160']);

/** The LUKS header's family name of a cipher ("aes" for aes-256): qcrypto_block_luks_cipher_alg_lookup. */
export function luksCipherName(alg: CipherAlg): string {
  return alg.slice(0, alg.indexOf('-'));
}

/** The algorithms a LUKS header names, parsed. */
export interface LuksAlgorithms {
  cipherAlg: CipherAlg;
  cipherMode: CipherMode;
  ivgenAlg: IvgenAlg;
  ivgenHashAlg?: HashAlg;
  ivgenCipherAlg: CipherAlg;
  hashAlg: HashAlg;
}

function lookup<T extends string>(set: ReadonlySet<string>, name: string, type: string): T {
  if (!set.has(name)) throw new UnsupportedError(`${type} '${name}' not supported`);
  return name as T;
}

/**
 * qcrypto_block_luks_essiv_cipher: ESSIV keys its cipher with the hash's digest, so the cipher
 * of the same family whose key is that long.
 */
export function essivCipher(alg: CipherAlg, hash: HashAlg): CipherAlg {
  const digest = hashBytes(hash);
  if (digest === cipherKeyBytes(alg)) return alg;
  const family = luksCipherName(alg);
  if (family === 'aes' || family === 'serpent' || family === 'twofish') {
    const found = CIPHER_SIZES[family]![digest];
    if (found !== undefined) return found;
    const label = family === 'aes' ? 'AES' : family === 'serpent' ? 'Serpent' : 'Twofish';
    throw new UnsupportedError(`No ${label} cipher with key size ${digest} available`);
  }
  throw new UnsupportedError(`Cipher ${alg} not supported with essiv`);
}

/** qcrypto_block_luks_parse_header, with its order of checks and messages. */
export function parseLuksAlgorithms(h: LuksHeader): LuksAlgorithms {
  const modeSpec = fieldText(h.cipherMode);
  const dash = modeSpec.indexOf('-');
  if (dash < 0) throw new UnsupportedError(`Unexpected cipher mode string format '${modeSpec}'`);
  const ivSpec = modeSpec.slice(dash + 1);
  const colon = ivSpec.indexOf(':');
  const ivgenName = colon >= 0 ? ivSpec.slice(0, colon) : ivSpec;
  const ivHashName = colon >= 0 ? ivSpec.slice(colon + 1) : undefined;
  const ivgenHashAlg = ivHashName !== undefined ? lookup<HashAlg>(HASH_ALGS, ivHashName, 'Hash algorithm') : undefined;
  const cipherMode = lookup<CipherMode>(CIPHER_MODES, modeSpec.slice(0, dash), 'Cipher mode');
  const name = fieldText(h.cipherName);
  const keyBytes = cipherMode === 'xts' ? Math.floor(h.masterKeyLen / 2) : h.masterKeyLen;
  const cipherAlg = CIPHER_SIZES[name]?.[keyBytes];
  if (cipherAlg === undefined) throw new UnsupportedError(`Algorithm '${name}' with key size ${keyBytes | 0} bytes not supported`);
  const hashAlg = lookup<HashAlg>(HASH_ALGS, fieldText(h.hashSpec), 'Hash algorithm');
  const ivgenAlg = lookup<IvgenAlg>(IVGEN_ALGS, ivgenName, 'IV generator');
  let ivgenCipherAlg = cipherAlg;
  if (ivgenAlg === 'essiv') {
    if (ivgenHashAlg === undefined) throw new UnsupportedError('Missing IV generator hash specification');
    ivgenCipherAlg = essivCipher(cipherAlg, ivgenHashAlg);
  }
  return { cipherAlg, cipherMode, ivgenAlg, ivgenHashAlg, ivgenCipherAlg, hashAlg };
}

/** QAPI QCryptoBlockInfoLUKSSlot. */
export interface LuksSlotInfo {
  active: boolean;
  iters?: number;
  stripes?: number;
  'key-offset': number;
}

/** QAPI QCryptoBlockInfoLUKS (the LUKS branch of the qcow2 `encrypt` union, and luks' own). */
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

/** qcrypto_block_luks_get_info, built in schema order (ivgen-hash-alg only for essiv). */
export function luksInfo(h: LuksHeader, algs: LuksAlgorithms): LuksInfo {
  const out: Partial<LuksInfo> = { 'cipher-alg': algs.cipherAlg, 'cipher-mode': algs.cipherMode, 'ivgen-alg': algs.ivgenAlg };
  if (algs.ivgenAlg === 'essiv') out['ivgen-hash-alg'] = algs.ivgenHashAlg;
  out['hash-alg'] = algs.hashAlg;
  out['payload-offset'] = h.payloadOffsetSector * CRYPTO_SECTOR;
  out['master-key-iters'] = h.masterKeyIterations;
  out.uuid = fieldText(h.uuid);
  out.slots = h.keySlots.map((s) =>
    s.active === LUKS_SLOT_ENABLED
      ? { active: true, iters: s.iterations, stripes: s.stripes, 'key-offset': s.keyOffsetSector * CRYPTO_SECTOR }
      : { active: false, 'key-offset': s.keyOffsetSector * CRYPTO_SECTOR },
  );
  return out as LuksInfo;
}

/**
 * Decodes and checks a LUKS1 header the way qemu's qcrypto_block_luks_open does without a key
 * (QCRYPTO_BLOCK_OPEN_NO_IO), into what `qemu-img info` shows.
 */
export function decodeLuksInfo(b: Uint8Array): LuksInfo {
  const h = decodeLuksHeader(b);
  checkLuksHeader(h);
  return luksInfo(h, parseLuksAlgorithms(h));
}
