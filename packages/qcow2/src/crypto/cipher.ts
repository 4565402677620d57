/**
 * Sector encryption as qemu's crypto/block.c does it (qcrypto_block_cipher_encrypt_helper):
 * each 512-byte sector is one cipher chain whose IV the IV generator derives from the sector
 * number. The block cipher itself comes from a small {@link CipherBackend} (node:crypto here;
 * a browser build can plug in WebCrypto or @noble primitives), and the modes are built on it so
 * that whole runs of sectors go through the backend in one call: XTS as bulk ECB between two
 * tweak XOR passes, CBC decryption as bulk ECB plus one XOR pass, ECB as it is. Only CBC
 * encryption and CTR, which chain inside a sector, take one backend call per sector.
 */
import { createCipheriv, createDecipheriv, createHash, getCiphers, type Cipher, type Decipher } from 'node:crypto';
import { nativeXts, type NativeXts, UnsupportedError } from '@tsimg/raw';
import { XTS_PIECE_SECTORS, XtsTweaker } from './xts-tweak.js';

/** The cipher algorithms qemu 7.2 names (QCryptoCipherAlgorithm) that LUKS can use. */
export type CipherAlg =
  | 'aes-128' | 'aes-192' | 'aes-256' | 'cast5-128' | 'serpent-128' | 'serpent-192' | 'serpent-256'
  | 'twofish-128' | 'twofish-192' | 'twofish-256';
/** QCryptoCipherMode. */
export type CipherMode = 'ecb' | 'cbc' | 'xts' | 'ctr';
/** QCryptoIVGenAlgorithm. */
export type IvgenAlg = 'plain' | 'plain64' | 'essiv';
/** QCryptoHashAlgorithm names LUKS uses. */
export type HashAlg = 'md5' | 'sha1' | 'sha224' | 'sha256' | 'sha384' | 'sha512' | 'ripemd160';

/** The sector size of every qemu crypto format (QCRYPTO_BLOCK_LUKS_SECTOR_SIZE, qcow's too). */
export const CRYPTO_SECTOR = 512;

const KEY_BYTES: Readonly<Record<CipherAlg, number>> = {
  'aes-128': 16, 'aes-192': 24, 'aes-256': 32, 'cast5-128': 16, 'serpent-128': 16, 'serpent-192': 24,
  'serpent-256': 32, 'twofish-128': 16, 'twofish-192': 24, 'twofish-256': 32,
};
const HASH_BYTES: Readonly<Record<HashAlg, number>> = {
  md5: 16, sha1: 20, sha224: 28, sha256: 32, sha384: 48, sha512: 64, ripemd160: 20,
};

/** qcrypto_cipher_get_key_len. */
export function cipherKeyBytes(alg: CipherAlg): number {
  return KEY_BYTES[alg];
}
/** qcrypto_hash_digest_len. */
export function hashBytes(alg: HashAlg): number {
  return HASH_BYTES[alg];
}
/** The cipher's block length (alg_block_len): 8 for cast5, 16 for the others. */
export function cipherBlockBytes(alg: CipherAlg): number {
  return alg === 'cast5-128' ? 8 : 16;
}
/** qcrypto_cipher_get_iv_len: ECB needs no IV, the other modes a block's worth. */
export function cipherIvBytes(alg: CipherAlg, mode: CipherMode): number {
  return mode === 'ecb' ? 0 : cipherBlockBytes(alg);
}

/** A raw block cipher with one key: whole blocks, in place. */
export interface EcbPrimitive {
  encrypt(data: Uint8Array): void;
  decrypt(data: Uint8Array): void;
  /**
   * The result of encrypting (or decrypting) `data` in a buffer of the backend's (data itself
   * when the backend works in place), saving a copy where the caller goes on anyway.
   */
  process?(data: Uint8Array, encrypt: boolean): Uint8Array;
  /** Forgets the key (as far as the backend lets us). */
  dispose(): void;
}

/** Where the block cipher comes from. */
export interface CipherBackend {
  /** Whether the backend has `alg` at all. */
  supports(alg: CipherAlg): boolean;
  /** `alg` in ECB mode keyed with `key` (the backend may keep its own copy of the key). */
  ecb(alg: CipherAlg, key: Uint8Array): EcbPrimitive;
  /** One CBC or CTR chain over `data`, in place, starting from `iv`. */
  chain(alg: CipherAlg, mode: 'cbc' | 'ctr', key: Uint8Array, iv: Uint8Array, data: Uint8Array, encrypt: boolean): void;
  /** The digest of the concatenated `parts`. */
  hash(alg: HashAlg, parts: readonly Uint8Array[]): Uint8Array;
}

function updateInPlace(c: Cipher | Decipher, data: Uint8Array): void {
  const out = c.update(data);
  data.set(out);
  // Key material passes through here too (key slots, ESSIV): no copy of it stays behind.
  out.fill(0);
}

/** node:crypto (OpenSSL, with AES-NI where the CPU has it): AES only. */
export const nodeCipherBackend: CipherBackend = (() => {
  // Asked on the first use, not at import: every command imports this module, few encrypt.
  let have: Set<string> | undefined;
  return {
    supports: (alg) => alg.startsWith('aes-') && (have ??= new Set(getCiphers())).has(`${alg}-ecb`),
    ecb(alg, key) {
      // ECB keeps no state between blocks, so one object per direction serves every call.
      let enc: Cipher | undefined = createCipheriv(`${alg}-ecb`, key, null).setAutoPadding(false);
      let dec: Decipher | undefined;
      const keyCopy = Uint8Array.from(key);
      return {
        encrypt: (data) => updateInPlace(enc!, data),
        decrypt: (data) => {
          dec ??= createDecipheriv(`${alg}-ecb`, keyCopy, null).setAutoPadding(false);
          updateInPlace(dec, data);
        },
        process: (data, encrypt) => {
          if (encrypt) return enc!.update(data);
          dec ??= createDecipheriv(`${alg}-ecb`, keyCopy, null).setAutoPadding(false);
          return dec.update(data);
        },
        dispose() {
          keyCopy.fill(0);
          enc = undefined;
          dec = undefined;
        },
      };
    },
    chain(alg, mode, key, iv, data, encrypt) {
      const name = `${alg}-${mode}`;
      const c = encrypt ? createCipheriv(name, key, iv) : createDecipheriv(name, key, iv);
      c.setAutoPadding(false);
      updateInPlace(c, data);
    },
    hash(alg, parts) {
      const h = createHash(alg);
      for (const p of parts) h.update(p);
      return new Uint8Array(h.digest());
    },
  };
})();


/** Runs shorter than this cipher on the calling thread even with the native XTS (bytes). */
const NATIVE_MIN_BYTES = 64 * 1024;

/** The cipher and IV generator settings of one encrypted volume. */
export interface SectorCipherSpec {
  alg: CipherAlg;
  mode: CipherMode;
  ivgen: IvgenAlg;
  /** ESSIV's hash (ignored by plain and plain64, as in qemu). */
  ivgenHash?: HashAlg;
  /** The cipher ESSIV encrypts the sector number with (qcrypto_block_luks_essiv_cipher). */
  ivgenCipher?: CipherAlg;
}

/** The backend's refusal of an algorithm it lacks, in qemu's words (cipher-nettle.c.inc). */
export function unsupportedCipher(alg: string): UnsupportedError {
  return new UnsupportedError(`Unsupported cipher algorithm ${alg}`, { errno: 'ENOTSUP' });
}

/**
 * Encrypts and decrypts runs of 512-byte sectors with one master key, as qemu's
 * do_qcrypto_block_cipher_encdec: sector `n` of a run starting at `sector` uses the IV of
 * sector `sector + n`. Call {@link dispose} when done: it zeroes the key copies this object owns.
 */
export class SectorCipher {
  readonly #backend: CipherBackend;
  readonly #spec: SectorCipherSpec;
  readonly #key: Uint8Array;
  readonly #ivBytes: number;
  #ecb: EcbPrimitive | undefined;
  #tweakEcb: EcbPrimitive | undefined;
  #essiv: EcbPrimitive | undefined;
  #tweaker: XtsTweaker | undefined;
  /** The thread-pool XTS for this cipher, where the native module has it (see cryptAsync). */
  readonly #native: NativeXts | undefined;

  constructor(spec: SectorCipherSpec, key: Uint8Array, backend: CipherBackend = nodeCipherBackend) {
    // XTS needs 16-byte blocks (cast5 has 8): qemu's backends refuse the mode before the cipher.
    if (spec.mode === 'xts' && cipherBlockBytes(spec.alg) !== 16) throw new UnsupportedError(`Unsupported cipher mode ${spec.mode}`, { errno: 'ENOTSUP' });
    if (!backend.supports(spec.alg)) throw unsupportedCipher(spec.alg);
    this.#backend = backend;
    this.#spec = spec;
    this.#key = Uint8Array.from(key);
    this.#ivBytes = cipherIvBytes(spec.alg, spec.mode);
    // OpenSSL has AES-XTS for 128- and 256-bit keys; the plain IVs are the sector number.
    const nativeSpec = spec.mode === 'xts' && (spec.alg === 'aes-128' || spec.alg === 'aes-256') && spec.ivgen !== 'essiv';
    this.#native = nativeSpec && backend === nodeCipherBackend ? nativeXts() : undefined;
    if (spec.mode === 'xts') {
      const half = key.length / 2;
      this.#ecb = backend.ecb(spec.alg, key.subarray(0, half));
      this.#tweakEcb = backend.ecb(spec.alg, key.subarray(half));
    } else if (spec.mode === 'ecb' || spec.mode === 'cbc') {
      this.#ecb = backend.ecb(spec.alg, key);
    }
    if (spec.ivgen === 'essiv' && this.#ivBytes > 0) {
      const salt = backend.hash(spec.ivgenHash ?? 'sha256', [key]);
      const essivAlg = spec.ivgenCipher ?? spec.alg;
      if (!backend.supports(essivAlg)) throw unsupportedCipher(essivAlg);
      this.#essiv = backend.ecb(essivAlg, salt);
      salt.fill(0);
    }
  }

  /** The IVs of `count` sectors from `sector` on, `ivBytes` each (qcrypto_ivgen_calculate). */
  #ivs(sector: number, count: number): Uint8Array {
    const n = this.#ivBytes;
    const out = new Uint8Array(count * n);
    const v = new DataView(out.buffer);
    for (let i = 0; i < count; i++) {
      const s = sector + i;
      v.setUint32(i * n, s >>> 0, true);
      // plain keeps the low 32 bits only; plain64 and essiv the whole 64-bit number.
      if (this.#spec.ivgen !== 'plain' && n >= 8) v.setUint32(i * n + 4, Math.floor(s / 2 ** 32), true);
    }
    if (this.#essiv !== undefined) this.#essiv.encrypt(out);
    return out;
  }

  /** Encrypts whole sectors in place; `data.length` must be a multiple of 512. */
  encrypt(sector: number, data: Uint8Array): void {
    this.#run(sector, data, true);
  }

  /** Decrypts whole sectors in place. */
  decrypt(sector: number, data: Uint8Array): void {
    this.#run(sector, data, false);
  }

  /**
   * encrypt / decrypt, on libuv's thread pool where the native module does this cipher (AES-XTS
   * with plain or plain64 IVs): several requests in flight then cipher on both cores, as qemu's
   * thread pool does (qcow2_co_encdec). `data` must not be touched until the promise settles.
   * Small runs, and every other cipher, run on this thread (a pool round trip costs more).
   */
  async crypt(sector: number, data: Uint8Array, encrypt: boolean): Promise<void> {
    if (this.#native !== undefined && data.length >= NATIVE_MIN_BYTES && data.length % CRYPTO_SECTOR === 0) {
      return this.#native(this.#key, data, sector, this.#spec.ivgen === 'plain', encrypt);
    }
    this.#run(sector, data, encrypt);
  }

  /** {@link encrypted} through {@link crypt}: a new buffer, `data` left as it is. */
  async encryptedAsync(sector: number, data: Uint8Array): Promise<Uint8Array> {
    if (this.#native === undefined || data.length < NATIVE_MIN_BYTES) return this.encrypted(sector, data);
    const out = Uint8Array.from(data);
    await this.crypt(sector, out, true);
    return out;
  }

  /** The encryption of `data` (whole sectors) as a new buffer; `data` is left as it is. */
  encrypted(sector: number, data: Uint8Array): Uint8Array {
    if (this.#spec.mode !== 'xts') {
      const out = Uint8Array.from(data);
      this.#run(sector, out, true);
      return out;
    }
    const out = new Uint8Array(data.length);
    const count = data.length / CRYPTO_SECTOR;
    if (!Number.isInteger(count)) throw new RangeError('encrypted I/O must cover whole sectors');
    this.#xts(sector, count, data, true, out);
    return out;
  }

  #run(sector: number, data: Uint8Array, encrypt: boolean): void {
    const count = data.length / CRYPTO_SECTOR;
    if (!Number.isInteger(count)) throw new RangeError('encrypted I/O must cover whole sectors');
    if (count === 0) return;
    const { mode, alg } = this.#spec;
    switch (mode) {
      case 'ecb':
        return encrypt ? this.#ecb!.encrypt(data) : this.#ecb!.decrypt(data);
      case 'xts':
        return this.#xts(sector, count, data, encrypt);
      case 'cbc':
        if (!encrypt) return this.#cbcDecrypt(sector, count, data);
        break;
      case 'ctr':
        break;
    }
    const ivs = this.#ivs(sector, count);
    for (let i = 0; i < count; i++) {
      const iv = ivs.subarray(i * this.#ivBytes, (i + 1) * this.#ivBytes);
      this.#backend.chain(alg, mode, this.#key, iv, data.subarray(i * CRYPTO_SECTOR, (i + 1) * CRYPTO_SECTOR), encrypt);
    }
  }

  /**
   * XTS: C = E_K1(P ^ T) ^ T with T running from E_K2(IV) by doublings. Per piece of
   * XTS_PIECE_SECTORS: the IVs encrypted in one ECB call, the tweak pass in wasm, one bulk ECB
   * call, the tweak pass again.
   */
  #xts(sector: number, count: number, data: Uint8Array, encrypt: boolean, into: Uint8Array = data): void {
    this.#tweaker ??= new XtsTweaker();
    const k = this.#tweaker;
    const mem = k.view;
    const ecb = this.#ecb!;
    for (let done = 0; done < count; done += XTS_PIECE_SECTORS) {
      const n = Math.min(XTS_PIECE_SECTORS, count - done);
      const t0 = this.#ivs(sector + done, n);
      this.#tweakEcb!.encrypt(t0);
      mem.set(t0, 0);
      const piece = data.subarray(done * CRYPTO_SECTOR, (done + n) * CRYPTO_SECTOR);
      const work = mem.subarray(k.dataOffset, k.dataOffset + piece.length);
      work.set(piece);
      k.run(n);
      const out = ecb.process?.(work, encrypt);
      if (out !== undefined) work.set(out);
      else if (encrypt) ecb.encrypt(work);
      else ecb.decrypt(work);
      k.run(n);
      into.set(work, done * CRYPTO_SECTOR);
    }
  }

  /** CBC decryption needs no chaining: P_i = D(C_i) ^ C_(i-1), the sector's IV before its first block. */
  #cbcDecrypt(sector: number, count: number, data: Uint8Array): void {
    const block = cipherBlockBytes(this.#spec.alg);
    const ivs = this.#ivs(sector, count);
    const cipherText = Uint8Array.from(data);
    this.#ecb!.decrypt(data);
    for (let s = 0; s < count; s++) {
      const base = s * CRYPTO_SECTOR;
      for (let i = 0; i < block; i++) data[base + i]! ^= ivs[s * block + i]!;
      for (let i = block; i < CRYPTO_SECTOR; i++) data[base + i]! ^= cipherText[base + i - block]!;
    }
  }

  /** Zeroes this object's key copies and drops the backend's cipher objects. */
  dispose(): void {
    this.#key.fill(0);
    this.#ecb?.dispose();
    this.#tweakEcb?.dispose();
    this.#essiv?.dispose();
    this.#tweaker?.wipe();
  }
}
