/**
 * A LUKS1 volume as qemu's crypto/block-luks.c handles it: creation (random master key, its
 * PBKDF2 digest, key slot 0 holding the anti-forensically split master key encrypted with the
 * passphrase's key), opening (trying each active slot until the digest matches), and the key
 * slot changes of `amend`. The volume's header area is reached through {@link LuksIo}: offset 0
 * of a raw LUKS file, or the clusters of a qcow2 crypto header extension.
 */
import { randomFillSync, randomUUID } from 'node:crypto';
import { LimitError, UnsupportedError, UsageError } from '@tsimg/raw';
import { afMerge, afSplit } from './afsplit.js';
import {
  type CipherAlg, type CipherBackend, type CipherMode, cipherKeyBytes, CRYPTO_SECTOR, type HashAlg, type IvgenAlg, nodeCipherBackend,
  SectorCipher, type SectorCipherSpec,
} from './cipher.js';
import {
  checkLuksHeader, decodeLuksHeader, encodeLuksHeader, essivCipher, fieldBytes, LUKS_DIGEST_LEN, LUKS_HEADER_SIZE, LUKS_KEY_SLOT_OFFSET,
  LUKS_MAGIC, LUKS_NUM_KEY_SLOTS, LUKS_SALT_LEN, LUKS_SLOT_DISABLED, LUKS_SLOT_ENABLED, LUKS_STRIPES, luksCipherName, luksInfo,
  type LuksAlgorithms, type LuksHeader, type LuksInfo, parseLuksAlgorithms, splitKeySectors,
} from './luks-header.js';
import { calibration, type IterationPolicy, pbkdf2, scaleIterations } from './pbkdf.js';

/** Reads and writes inside the volume's header area (offsets from the LUKS header's start). */
export interface LuksIo {
  read(offset: number, into: Uint8Array): Promise<void>;
  write(offset: number, data: Uint8Array): Promise<void>;
}

/** QCryptoBlockCreateOptionsLUKS without the secret (the passphrase is passed as bytes). */
export interface LuksCreateOptions {
  cipherAlg?: CipherAlg;
  cipherMode?: CipherMode;
  ivgenAlg?: IvgenAlg;
  ivgenHashAlg?: HashAlg;
  hashAlg?: HashAlg;
  /** PBKDF2 time in milliseconds (default 2000, as qemu). */
  iterTime?: number;
}

/** QCRYPTO_BLOCK_LUKS_DEFAULT_ITER_TIME_MS. */
export const LUKS_DEFAULT_ITER_TIME = 2000;
const MIN_SLOT_KEY_ITERS = 1000;
const MIN_MASTER_KEY_ITERS = 1000;
const ERASE_ITERATIONS = 40;
/**
 * Beyond qemu: PBKDF2 iteration counts above this are refused before any key work, so a
 * hostile header cannot make an open run for hours (qemu would). qemu's own default, 2 s on a
 * fast machine, stays far below (about 10^7).
 */
export const LUKS_MAX_ITERATIONS = 100_000_000;

/** The options qemu-img's `encrypt.*` / luks `-o` names give, filled with qemu's defaults. */
export function resolveLuksOptions(o: LuksCreateOptions): Required<Omit<LuksCreateOptions, 'ivgenHashAlg'>> & { ivgenHashAlg?: HashAlg } {
  const ivgenAlg = o.ivgenAlg ?? 'plain64';
  return {
    cipherAlg: o.cipherAlg ?? 'aes-256',
    cipherMode: o.cipherMode ?? 'xts',
    ivgenAlg,
    ivgenHashAlg: o.ivgenHashAlg ?? (ivgenAlg === 'essiv' ? 'sha256' : undefined),
    hashAlg: o.hashAlg ?? 'sha256',
    iterTime: o.iterTime ?? LUKS_DEFAULT_ITER_TIME,
  };
}

/**
 * qcrypto_block_calculate_payload_offset: the header area a volume with these options gets
 * (qemu creates a throwaway volume for it; the size depends only on the key length).
 */
export function luksPayloadBytes(options: LuksCreateOptions): number {
  const o = resolveLuksOptions(options);
  if (o.ivgenAlg === 'essiv') essivCipher(o.cipherAlg, o.ivgenHashAlg!);
  const masterKeyLen = cipherKeyBytes(o.cipherAlg) * (o.cipherMode === 'xts' ? 2 : 1);
  return LUKS_KEY_SLOT_OFFSET + LUKS_NUM_KEY_SLOTS * splitKeySectors(masterKeyLen, LUKS_STRIPES) * CRYPTO_SECTOR;
}

/** The sector cipher of a volume's algorithms with `key`. */
function sectorCipher(algs: LuksAlgorithms, key: Uint8Array, backend: CipherBackend): SectorCipher {
  const spec: SectorCipherSpec = {
    alg: algs.cipherAlg, mode: algs.cipherMode, ivgen: algs.ivgenAlg, ivgenHash: algs.ivgenHashAlg, ivgenCipher: algs.ivgenCipherAlg,
  };
  return new SectorCipher(spec, key, backend);
}

/** Options of the LUKS operations beyond the volume's own settings. */
export interface LuksEnv {
  backend?: CipherBackend;
  iterations?: IterationPolicy;
}

/** An open LUKS volume: its header, and with a key, the payload's sector cipher. */
export class LuksVolume {
  readonly header: LuksHeader;
  readonly algorithms: LuksAlgorithms;
  /** The payload's cipher; undefined when opened without a key (info). */
  readonly cipher: SectorCipher | undefined;
  readonly #io: LuksIo;
  readonly #backend: CipherBackend;
  readonly #policy: Required<IterationPolicy>;

  private constructor(header: LuksHeader, algorithms: LuksAlgorithms, cipher: SectorCipher | undefined, io: LuksIo, env: LuksEnv) {
    this.header = header;
    this.algorithms = algorithms;
    this.cipher = cipher;
    this.#io = io;
    this.#backend = env.backend ?? nodeCipherBackend;
    // One calibration per open volume: create's master key digest and first slot share it.
    this.#policy = { perSecond: env.iterations?.perSecond ?? calibration() };
  }

  /** Where the encrypted payload starts, in bytes from the header. */
  get payloadOffset(): number {
    return this.header.payloadOffsetSector * CRYPTO_SECTOR;
  }

  /** What `qemu-img info` shows. */
  info(): LuksInfo {
    return luksInfo(this.header, this.algorithms);
  }

  /**
   * qcrypto_block_luks_open: the header read and checked, then with `password` the master key
   * unlocked from the first slot it opens ("Invalid password, cannot unlock any keyslot").
   */
  static async open(io: LuksIo, password: Uint8Array | undefined, env: LuksEnv = {}): Promise<LuksVolume> {
    const raw = new Uint8Array(LUKS_HEADER_SIZE);
    await io.read(0, raw);
    const header = decodeLuksHeader(raw);
    checkLuksHeader(header);
    const algorithms = parseLuksAlgorithms(header);
    if (password === undefined) return new LuksVolume(header, algorithms, undefined, io, env);
    const probe = new LuksVolume(header, algorithms, undefined, io, env);
    const key = await probe.#findKey(password);
    try {
      return new LuksVolume(header, algorithms, sectorCipher(algorithms, key, probe.#backend), io, env);
    } finally {
      key.fill(0);
    }
  }

  /**
   * qcrypto_block_luks_create: a new volume with `password` in key slot 0. `init` receives the
   * header area's size (the payload offset) and returns where to write it, zero-filled.
   */
  static async create(
    options: LuksCreateOptions,
    password: Uint8Array,
    init: (headerBytes: number) => Promise<LuksIo>,
    env: LuksEnv = {},
  ): Promise<LuksVolume> {
    const backend = env.backend ?? nodeCipherBackend;
    const o = resolveLuksOptions(options);
    const family = luksCipherName(o.cipherAlg);
    const modeSpec = o.ivgenHashAlg !== undefined ? `${o.cipherMode}-${o.ivgenAlg}:${o.ivgenHashAlg}` : `${o.cipherMode}-${o.ivgenAlg}`;
    const ivgenCipherAlg = o.ivgenAlg === 'essiv' ? essivCipher(o.cipherAlg, o.ivgenHashAlg!) : o.cipherAlg;
    const algorithms: LuksAlgorithms = {
      cipherAlg: o.cipherAlg, cipherMode: o.cipherMode, ivgenAlg: o.ivgenAlg, ivgenHashAlg: o.ivgenHashAlg, ivgenCipherAlg, hashAlg: o.hashAlg,
    };
    const masterKeyLen = cipherKeyBytes(o.cipherAlg) * (o.cipherMode === 'xts' ? 2 : 1);
    if ((masterKeyLen * LUKS_STRIPES) % CRYPTO_SECTOR !== 0) {
      // qemu 7.2 aborts on an assertion here (the split key is not a whole number of sectors).
      throw new UnsupportedError(`LUKS key material of ${masterKeyLen * LUKS_STRIPES} bytes is not a whole number of sectors`);
    }
    const masterKey = new Uint8Array(masterKeyLen);
    randomFillSync(masterKey);
    try {
      // qcrypto_block_init_cipher comes first: an algorithm the backend lacks fails here.
      const cipher = sectorCipher(algorithms, masterKey, backend);
      const masterKeySalt = new Uint8Array(LUKS_SALT_LEN);
      randomFillSync(masterKeySalt);
      const perSecond = env.iterations?.perSecond ?? calibration();
      const rate = perSecond(o.hashAlg, masterKey, masterKeySalt, LUKS_DIGEST_LEN);
      const masterKeyIterations = scaleIterations(rate, o.iterTime, 8, MIN_MASTER_KEY_ITERS);
      const masterKeyDigest = pbkdf2(o.hashAlg, masterKey, masterKeySalt, masterKeyIterations, LUKS_DIGEST_LEN);
      const headerSectors = LUKS_KEY_SLOT_OFFSET / CRYPTO_SECTOR;
      const splitSectors = splitKeySectors(masterKeyLen, LUKS_STRIPES);
      const header: LuksHeader = {
        magic: Uint8Array.from(LUKS_MAGIC),
        version: 1,
        cipherName: fieldBytes(family),
        cipherMode: fieldBytes(modeSpec),
        hashSpec: fieldBytes(o.hashAlg),
        payloadOffsetSector: headerSectors + LUKS_NUM_KEY_SLOTS * splitSectors,
        masterKeyLen,
        masterKeyDigest,
        masterKeySalt,
        masterKeyIterations,
        uuid: fieldBytes(randomUUID()),
        keySlots: Array.from({ length: LUKS_NUM_KEY_SLOTS }, (_, i) => ({
          active: LUKS_SLOT_DISABLED, iterations: 0, salt: new Uint8Array(LUKS_SALT_LEN), keyOffsetSector: headerSectors + i * splitSectors,
          stripes: LUKS_STRIPES,
        })),
      };
      const io = await init(header.payloadOffsetSector * CRYPTO_SECTOR);
      const volume = new LuksVolume(header, algorithms, cipher, io, { ...env, iterations: { perSecond } });
      await volume.#storeKey(0, password, masterKey, o.iterTime);
      return volume;
    } finally {
      masterKey.fill(0);
    }
  }

  /** qcrypto_block_luks_store_header. */
  async #storeHeader(): Promise<void> {
    const b = new Uint8Array(LUKS_HEADER_SIZE);
    encodeLuksHeader(this.header, b);
    await this.#io.write(0, b);
  }

  /** qcrypto_block_luks_store_key: `password` guards `masterKey` in slot `index`. */
  async #storeKey(index: number, password: Uint8Array, masterKey: Uint8Array, iterTime: number): Promise<void> {
    const h = this.header;
    const slot = h.keySlots[index]!;
    const salt = new Uint8Array(LUKS_SALT_LEN);
    randomFillSync(salt);
    const rate = this.#policy.perSecond(this.algorithms.hashAlg, password, salt, h.masterKeyLen);
    const iterations = scaleIterations(rate, iterTime, 1, MIN_SLOT_KEY_ITERS);
    const slotKey = pbkdf2(this.algorithms.hashAlg, password, salt, iterations, h.masterKeyLen);
    const split = afSplit(this.#backend, this.algorithms.hashAlg, masterKey, slot.stripes);
    try {
      const c = sectorCipher(this.algorithms, slotKey, this.#backend);
      c.encrypt(0, split);
      c.dispose();
      await this.#io.write(slot.keyOffsetSector * CRYPTO_SECTOR, split);
    } finally {
      slotKey.fill(0);
      split.fill(0);
    }
    slot.salt = salt;
    slot.iterations = iterations;
    slot.active = LUKS_SLOT_ENABLED;
    await this.#storeHeader();
  }

  /** qcrypto_block_luks_load_key: the master key if `password` opens slot `index`. */
  async #loadKey(index: number, password: Uint8Array): Promise<Uint8Array | undefined> {
    const h = this.header;
    const slot = h.keySlots[index]!;
    if (slot.active !== LUKS_SLOT_ENABLED) return undefined;
    if (slot.iterations > LUKS_MAX_ITERATIONS) {
      throw new LimitError(`Keyslot ${index} iteration count ${slot.iterations} exceeds the limit of ${LUKS_MAX_ITERATIONS}`);
    }
    if (h.masterKeyIterations > LUKS_MAX_ITERATIONS) {
      throw new LimitError(`LUKS key iteration count ${h.masterKeyIterations} exceeds the limit of ${LUKS_MAX_ITERATIONS}`);
    }
    const hash = this.algorithms.hashAlg;
    const possible = pbkdf2(hash, password, slot.salt, slot.iterations, h.masterKeyLen);
    const split = new Uint8Array(h.masterKeyLen * slot.stripes);
    try {
      await this.#io.read(slot.keyOffsetSector * CRYPTO_SECTOR, split);
      const c = sectorCipher(this.algorithms, possible, this.#backend);
      c.decrypt(0, split);
      c.dispose();
      const key = afMerge(this.#backend, hash, split, h.masterKeyLen, slot.stripes);
      const digest = pbkdf2(hash, key, h.masterKeySalt, h.masterKeyIterations, LUKS_DIGEST_LEN);
      if (digest.every((b, i) => b === h.masterKeyDigest[i])) return key;
      key.fill(0);
      return undefined;
    } finally {
      possible.fill(0);
      split.fill(0);
    }
  }

  /** qcrypto_block_luks_find_key. */
  async #findKey(password: Uint8Array): Promise<Uint8Array> {
    for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) {
      const key = await this.#loadKey(i, password);
      if (key !== undefined) return key;
    }
    throw new UsageError('Invalid password, cannot unlock any keyslot', { errno: 'EINVAL' });
  }

  #activeCount(): number {
    return this.header.keySlots.filter((s) => s.active === LUKS_SLOT_ENABLED).length;
  }

  /** qcrypto_block_luks_erase_key: the slot disabled in the header, its key material overwritten. */
  async #eraseKey(index: number): Promise<void> {
    const slot = this.header.keySlots[index]!;
    slot.salt = new Uint8Array(LUKS_SALT_LEN);
    slot.iterations = 0;
    slot.active = LUKS_SLOT_DISABLED;
    // The header first: a power loss in between leaves a disabled slot, never a half-erased active one.
    await this.#storeHeader();
    const garbage = new Uint8Array(this.header.masterKeyLen * slot.stripes);
    for (let i = 0; i < ERASE_ITERATIONS; i++) {
      randomFillSync(garbage);
      await this.#io.write(slot.keyOffsetSector * CRYPTO_SECTOR, garbage);
    }
  }

  /**
   * qcrypto_block_luks_amend_options: key slot `state` active (add `newSecret`, unlocking with
   * `secret`, the open's passphrase) or inactive (erase `keyslot`, or every slot `oldSecret`
   * opens), with qemu's checks; `force` allows overwriting or erasing the last key.
   */
  async amend(o: LuksAmendOptions): Promise<void> {
    if (o.state === 'active') {
      if (o.newSecret === undefined) throw usage("'new-secret' is required to activate a keyslot");
      if (o.oldSecret !== undefined) throw usage("'old-secret' must not be given when activating keyslots");
      let slot: number;
      if (o.keyslot !== undefined) {
        slot = o.keyslot;
        if (slot < 0 || slot >= LUKS_NUM_KEY_SLOTS) {
          throw usage(`Invalid keyslot ${slot >>> 0} specified, must be between 0 and ${LUKS_NUM_KEY_SLOTS - 1}`);
        }
      } else {
        slot = this.header.keySlots.findIndex((s) => s.active !== LUKS_SLOT_ENABLED);
        if (slot < 0) throw usage("Can't add a keyslot - all keyslots are in use");
      }
      if (!o.force && this.header.keySlots[slot]!.active === LUKS_SLOT_ENABLED) {
        throw usage(`Refusing to overwrite active keyslot ${slot} - please erase it first`);
      }
      const secret = o.secret();
      let key: Uint8Array;
      try {
        key = await this.#findKey(secret);
      } finally {
        secret.fill(0);
      }
      const fresh = o.newSecret();
      try {
        await this.#storeKey(slot, fresh, key, o.iterTime ?? LUKS_DEFAULT_ITER_TIME);
      } finally {
        key.fill(0);
        fresh.fill(0);
      }
      return;
    }
    if (o.newSecret !== undefined) throw usage("'new-secret' must not be given when erasing keyslots");
    if (o.iterTime !== undefined) throw usage("'iter-time' must not be given when erasing keyslots");
    const old = o.oldSecret?.();
    try {
      await this.#erase(o, old);
    } finally {
      old?.fill(0);
    }
  }

  /** qcrypto_block_luks_amend_erase_keyslots after its option checks. */
  async #erase(o: LuksAmendOptions, old: Uint8Array | undefined): Promise<void> {
    if (o.keyslot !== undefined) {
      const slot = o.keyslot;
      if (slot < 0 || slot >= LUKS_NUM_KEY_SLOTS) throw usage(`Invalid keyslot ${slot} specified, must be between 0 and ${LUKS_NUM_KEY_SLOTS - 1}`);
      if (old !== undefined) {
        const key = await this.#loadKey(slot, old);
        if (key === undefined) throw usage(`Given keyslot ${slot} doesn't contain the given old password for erase operation`);
        key.fill(0);
      }
      if (!o.force && this.header.keySlots[slot]!.active !== LUKS_SLOT_ENABLED) throw usage(`Given keyslot ${slot} is already erased (inactive) `);
      if (!o.force && this.#activeCount() === 1) {
        throw usage(`Attempt to erase the only active keyslot ${slot} which will erase all the data in the image irreversibly - refusing operation`);
      }
      await this.#eraseKey(slot);
      return;
    }
    if (old === undefined) {
      throw usage('To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given');
    }
    const matching: number[] = [];
    for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) {
      const key = await this.#loadKey(i, old);
      if (key !== undefined) {
        matching.push(i);
        key.fill(0);
      }
    }
    if (matching.length === 0) throw usage('No keyslots match given (old) password for erase operation');
    if (!o.force && matching.length === this.#activeCount()) {
      throw usage(
        'All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation',
      );
    }
    for (const i of matching) await this.#eraseKey(i);
  }

  /** Zeroes the payload cipher's keys. */
  dispose(): void {
    this.cipher?.dispose();
  }
}

function usage(message: string): UsageError {
  return new UsageError(message, { errno: 'EINVAL' });
}

/** QCryptoBlockAmendOptionsLUKS; secrets are functions so that each is looked up only when qemu would. */
export interface LuksAmendOptions {
  state: 'active' | 'inactive';
  keyslot?: number;
  iterTime?: number;
  /** The passphrase that opened the volume (or `secret`), for adding a key. */
  secret: () => Uint8Array;
  newSecret?: () => Uint8Array;
  oldSecret?: () => Uint8Array;
  force?: boolean;
}

/** Whether `b` starts like a LUKS1 volume (qcrypto_block_luks_has_format). */
export function hasLuksFormat(b: Uint8Array): boolean {
  return b.length >= 8 && LUKS_MAGIC.every((c, i) => b[i] === c) && b[6] === 0 && b[7] === 1;
}
