/**
 * Secrets by id (qemu's `--object secret,id=...` objects, created by the CLI) and their lookup
 * as qcrypto_secret_lookup_as_utf8 does it, with its messages. The bytes are the caller's; a
 * lookup returns a copy the caller zeroes after use.
 */
import { UsageError } from '@tsimg/raw';

/** Secret data by object id. */
export type Secrets = ReadonlyMap<string, Uint8Array>;

/**
 * The passphrase of secret `id`: up to its first NUL (qemu uses it as a C string), which must
 * be valid UTF-8. A fresh copy; zero it after use.
 */
export function secretAsUtf8(secrets: Secrets | undefined, id: string): Uint8Array {
  const data = secrets?.get(id);
  if (data === undefined) throw new UsageError(`No secret with id '${id}'`, { errno: 'EINVAL' });
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(data);
  } catch {
    throw new UsageError(`Data from secret ${id} is not valid UTF-8`, { errno: 'EINVAL' });
  }
  const nul = data.indexOf(0);
  return Uint8Array.from(nul >= 0 ? data.subarray(0, nul) : data);
}
