/**
 * qcow2_set_up_encryption for a new image: LUKS gets its header area allocated as clusters
 * after everything else (qcow2_crypto_hdr_init_func: qcow2_alloc_clusters, zero-filled), the
 * LUKS header and key slot 0 written there; the legacy AES method needs nothing on disk but
 * the header's crypt method.
 */
import type { LuksCreateOptions } from '../crypto/luks.js';
import { type LuksEnv, LuksVolume } from '../crypto/luks.js';
import type { Layout } from './layout.js';

/** The encryption of a new qcow2 image (qemu's `encrypt.*` creation options). */
export type Qcow2CreateEncryption =
  | { format: 'luks'; password: Uint8Array; luks?: LuksCreateOptions; env?: LuksEnv }
  | { format: 'aes'; password: Uint8Array };

/** QCOW_CRYPT_AES / QCOW_CRYPT_LUKS. */
export const CRYPT_METHOD = { aes: 1, luks: 2 } as const;

/** Sets up LUKS in `lay`; returns the crypto header extension's window. */
export async function setUpLuks(lay: Layout, enc: Extract<Qcow2CreateEncryption, { format: 'luks' }>): Promise<{ offset: number; length: number }> {
  let window: { offset: number; length: number } | undefined;
  const volume = await LuksVolume.create(
    enc.luks ?? {},
    enc.password,
    async (length) => {
      const offset = lay.allocClusters(length);
      lay.write(offset, new Uint8Array(Math.ceil(length / lay.cs) * lay.cs));
      window = { offset, length };
      return {
        read: async (o: number, into: Uint8Array) => {
          for (let i = 0; i < into.length; ) {
            const abs = offset + o + i;
            const ci = Math.floor(abs / lay.cs);
            const within = abs - ci * lay.cs;
            const n = Math.min(lay.cs - within, into.length - i);
            into.set(lay.overlay.get(ci)!.subarray(within, within + n), i);
            i += n;
          }
        },
        write: async (o: number, data: Uint8Array) => lay.write(offset + o, data),
      };
    },
    enc.env,
  );
  volume.dispose();
  return window!;
}
