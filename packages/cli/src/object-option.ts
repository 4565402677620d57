/**
 * `--object objectdef` as qemu-img 7.2 takes it (user_creatable_add_from_str): keyval text with
 * the implied `qom-type` first. `secret` objects become entries of the command's secrets map
 * (data or file contents, raw or base64, optionally AES-256-CBC encrypted with another secret's
 * key as `keyid` and `iv` say); the other user-creatable types qemu-img knows are accepted and
 * have no effect on images, as in qemu-img.
 */
import { readFileSync } from 'node:fs';
import { createDecipheriv } from 'node:crypto';
import { CliExit } from './exit.js';

/** qemu-img 7.2's user creatable object types (`--object help`). */
const OBJECT_TYPES: ReadonlySet<string> = new Set([
  'authz-list', 'authz-list-file', 'authz-simple', 'main-loop', 'pr-manager-helper', 'secret', 'secret_keyring', 'thread-context',
  'throttle-group', 'tls-cipher-suites', 'tls-creds-anon', 'tls-creds-psk', 'tls-creds-x509',
]);
const SECRET_PROPERTIES: ReadonlySet<string> = new Set(['qom-type', 'id', 'data', 'file', 'format', 'keyid', 'iv']);
const ID = /^[A-Za-z][A-Za-z0-9._-]*$/;

function fail(message: string): never {
  throw new CliExit(1, message);
}

/** keyval_parse with `qom-type` implied: comma-separated `key=value`, ",," a literal comma. */
function parseKeyval(text: string): Map<string, string> {
  const opts = new Map<string, string>();
  const parts: string[] = [];
  let part = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ',' && text[i + 1] === ',') {
      part += ',';
      i++;
    } else if (text[i] === ',') {
      parts.push(part);
      part = '';
    } else part += text[i];
  }
  parts.push(part);
  parts.forEach((p, i) => {
    const eq = p.indexOf('=');
    if (eq < 0) {
      if (i === 0 && p !== '') opts.set('qom-type', p);
      else fail(`Expected '=' after parameter '${p}'`);
    } else opts.set(p.slice(0, eq), p.slice(eq + 1));
  });
  return opts;
}

/** qbase64_decode's strict decoding. */
function base64(text: string): Uint8Array {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) fail('Base64 data contains invalid characters');
  return new Uint8Array(Buffer.from(text, 'base64'));
}

/**
 * Adds the object `text` defines to `secrets` (when it is a secret), or exits with qemu's
 * message and status `status` (1; compare's is 2).
 */
export function addObject(text: string, secrets: Map<string, Uint8Array>, status = 1): void {
  try {
    addObjectOrFail(text, secrets);
  } catch (err) {
    if (err instanceof CliExit && status !== err.status) throw new CliExit(status, err.message);
    throw err;
  }
}

function addObjectOrFail(text: string, secrets: Map<string, Uint8Array>): void {
  const opts = parseKeyval(text);
  const type = opts.get('qom-type');
  if (type === undefined) fail("Parameter 'qom-type' is missing");
  if (!OBJECT_TYPES.has(type)) fail(`Parameter 'qom-type' does not accept value '${type}'`);
  const id = opts.get('id');
  if (id === undefined) fail("Parameter 'id' is missing");
  if (!ID.test(id)) fail("Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.");
  if (secrets.has(id)) fail(`attempt to add duplicate property '${id}' to object (type 'container')`);
  if (type !== 'secret') return;
  for (const k of opts.keys()) if (!SECRET_PROPERTIES.has(k)) fail(`Parameter '${k}' is unexpected`);
  const format = opts.get('format') ?? 'raw';
  if (format !== 'raw' && format !== 'base64') fail(`Parameter 'format' does not accept value '${format}'`);
  const data = opts.get('data');
  const file = opts.get('file');
  let input: Uint8Array;
  if (file !== undefined) {
    if (data !== undefined) fail("'file' and 'data' are mutually exclusive");
    try {
      input = new Uint8Array(readFileSync(file));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? 'No such file or directory' : code === 'EACCES' ? 'Permission denied' : String(code);
      fail(`Unable to read ${file}: Failed to open file “${file}”: ${why}`);
    }
  } else if (data !== undefined) {
    input = new TextEncoder().encode(data);
  } else {
    fail("Either 'file' or 'data' must be provided");
  }
  const keyid = opts.get('keyid');
  let out: Uint8Array;
  if (keyid !== undefined) {
    out = decryptSecret(input, format, keyid, opts.get('iv'), secrets);
  } else {
    out = format === 'base64' ? base64(new TextDecoder().decode(input)) : input;
  }
  secrets.set(id, out);
}

/** qcrypto_secret_decrypt: AES-256-CBC with secret `keyid` as the key, padding bytes dropped. */
function decryptSecret(input: Uint8Array, format: string, keyid: string, iv: string | undefined, secrets: Map<string, Uint8Array>): Uint8Array {
  const key = secrets.get(keyid);
  if (key === undefined) fail(`No secret with id '${keyid}'`);
  if (key.length !== 32) fail('Key should be 32 bytes in length');
  if (iv === undefined) fail('IV is required to decrypt secret');
  const ivBytes = base64(iv);
  if (ivBytes.length !== 16) fail(`IV should be 16 bytes in length not ${ivBytes.length}`);
  const cipherText = format === 'base64' ? base64(new TextDecoder().decode(input)) : input;
  if (cipherText.length % 16 !== 0 || cipherText.length === 0) fail(`Length ${cipherText.length} must be a multiple of block size 16`);
  const d = createDecipheriv('aes-256-cbc', key, ivBytes).setAutoPadding(false);
  const plain = new Uint8Array(Buffer.concat([d.update(cipherText), d.final()]));
  const pad = plain[plain.length - 1]!;
  if (pad > 16 || pad > plain.length) fail(`Incorrect number of padding bytes (${pad}) found on decrypted data`);
  return plain.slice(0, plain.length - pad);
}
