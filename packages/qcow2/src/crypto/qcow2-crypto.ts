/**
 * Encryption of a qcow2 image's data clusters (qcow2.c / qcow2-threads.c): LUKS with its header
 * in the clusters the crypto header extension names, sector IVs from host offsets
 * (crypt_physical_offset); or the legacy AES method (crypt_method 1, block-qcow.c): the
 * passphrase's first 16 bytes as an AES-128-CBC key, plain64 IVs from guest offsets.
 */
import { FormatError, type BlockDevice } from '@tsimg/raw';
import { SectorCipher } from './cipher.js';
import { type LuksEnv, type LuksIo, LuksVolume } from './luks.js';

/** An open image's data encryption. */
export interface Qcow2Crypto {
  cipher: SectorCipher;
  /** LUKS: IVs count host sectors; AES: guest sectors. */
  physical: boolean;
  /** The LUKS volume (key slot changes, info); undefined for AES. */
  volume?: LuksVolume;
}

/** The extension window as qcow2_crypto_hdr_read_func / _write_func see it. */
export function cryptoHeaderIo(file: BlockDevice, window: { offset: number; length: number }): LuksIo {
  const inside = (offset: number, length: number): void => {
    if (offset + length > window.length) throw new FormatError('Request for data outside of extension header');
  };
  return {
    async read(offset, into) {
      inside(offset, into.length);
      const at = window.offset + offset;
      const avail = Math.max(0, Math.min(into.length, file.size() - at));
      if (avail > 0) await file.read(at, into.subarray(0, avail));
      into.fill(0, avail);
    },
    async write(offset, data) {
      inside(offset, data.length);
      await file.write(window.offset + offset, data);
    },
  };
}

/** Unlocks a LUKS-encrypted qcow2 image with `password` (qcrypto_block_open with "encrypt."). */
export async function openQcow2Luks(file: BlockDevice, window: { offset: number; length: number }, password: Uint8Array, env?: LuksEnv): Promise<Qcow2Crypto> {
  const volume = await LuksVolume.open(cryptoHeaderIo(file, window), password, env);
  return { cipher: volume.cipher!, physical: true, volume };
}

/** qcrypto_block_qcow_init: the legacy AES key from the passphrase. */
export function openQcow2Aes(password: Uint8Array): Qcow2Crypto {
  const key = new Uint8Array(16);
  key.set(password.subarray(0, 16));
  try {
    return { cipher: new SectorCipher({ alg: 'aes-128', mode: 'cbc', ivgen: 'plain64' }, key), physical: false };
  } finally {
    key.fill(0);
  }
}
