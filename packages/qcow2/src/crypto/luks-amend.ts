/**
 * `qemu-img amend`'s key slot options (QCryptoBlockAmendOptionsLUKS) from their text form to a
 * {@link LuksVolume.amend} call: the QAPI visit's checks (state required, an enum), then the
 * secrets looked up by id only when qemu would look them up.
 */
import { UsageError } from '@tsimg/raw';
import type { LuksVolume } from './luks.js';
import { type Secrets, secretAsUtf8 } from './secrets.js';

/** The amend options as given (`encrypt.state=...` for qcow2, `state=...` for luks). */
export interface EncryptionAmend {
  state?: string;
  keyslot?: number;
  iterTime?: number;
  /** Secret ids. */
  newSecret?: string;
  oldSecret?: string;
  /** The secret id that opened the image (qemu's luks->secret). */
  secret?: string;
  secrets?: Secrets;
}

/** block_crypto_amend_opts_init and qcrypto_block_amend_options on an open volume. */
export async function amendLuks(volume: LuksVolume | undefined, o: EncryptionAmend, force: boolean): Promise<void> {
  if (o.state === undefined) throw new UsageError("Parameter 'state' is missing", { errno: 'EINVAL' });
  if (o.state !== 'active' && o.state !== 'inactive') throw new UsageError(`Parameter 'state' does not accept value '${o.state}'`, { errno: 'EINVAL' });
  if (volume === undefined) throw new UsageError("Can't amend encryption options - encryption not present", { errno: 'EINVAL' });
  const lookup = (id: string | undefined) => (id === undefined ? undefined : () => secretAsUtf8(o.secrets, id));
  await volume.amend({
    state: o.state,
    keyslot: o.keyslot,
    iterTime: o.iterTime,
    newSecret: lookup(o.newSecret),
    oldSecret: lookup(o.oldSecret),
    secret: () => secretAsUtf8(o.secrets, o.secret ?? ''),
    force,
  });
}
