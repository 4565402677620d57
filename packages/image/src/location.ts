/**
 * Where an image is: resolving image names (`file:`, `json:`) and `--image-opts` block options
 * to a host file and a format, with qemu's messages.
 */
import { type LockingMode, TsimgError, UnsupportedError, UsageError, NotFoundError } from '@tsimg/raw';
import { type HttpLocation, isHttpProtocol, locateHttpName, locateHttpOptions } from './http-location.js';
import { pathHasProtocol } from './paths.js';
import type { QValue } from './qobject-json.js';
import type { NbdAddress } from './nbd/address.js';
import { locateNbdName, locateNbdOptions } from './nbd/location.js';

/** Where an image is: the host file, and the format its name or options ask for. */
export interface ImageLocation {
  /** The host file's path; qemu reports it as the image's filename. */
  path: string;
  /** `driver` from block options ('qcow2', 'raw', or 'file' for the bare protocol). */
  format?: string;
  /** qemu's `file.locking` (`locking` with driver=file), when the options give it. */
  locking?: LockingMode;
  /** The NBD export the image is on (then `path` is qemu's name for it, not a host file). */
  nbd?: NbdAddress;
  /** The image is on a web server (`path` is then its URL). */
  http?: HttpLocation;
  /** The secret id of `encrypt.key-secret` (qcow2) or `key-secret` (luks), when given. */
  keySecret?: string;
  /** The backing images' key secrets by depth (1: `backing.encrypt.key-secret`), when given. */
  backingKeySecrets?: (string | undefined)[];
}

/** `backing.` repeated `depth` times before a key secret option: the depth, or undefined. */
function backingKeySecretDepth(key: string): number | undefined {
  const m = /^((?:backing\.)+)(?:encrypt\.)?key-secret$/.exec(key);
  return m ? m[1]!.length / 'backing.'.length : undefined;
}

/** The option naming an encrypted format's passphrase secret, by driver. */
function keySecretOption(driver: string | undefined, key: string): boolean {
  if (key === 'encrypt.key-secret') return driver === undefined || driver === 'qcow2';
  if (key === 'key-secret') return driver === undefined || driver === 'luks';
  return false;
}

/** file-posix's `locking` option: on, off or auto (qapi_enum_parse's message otherwise). */
function lockingOption(value: string | undefined): LockingMode | undefined {
  if (value === undefined || value === 'on' || value === 'off' || value === 'auto') return value;
  throw new UsageError(`invalid parameter value: ${value}`);
}

/**
 * Resolves flattened block options (`--image-opts` text, or a `json:` name) to a host file:
 * `driver`, `file.driver` (= file), `file.filename` / `file`, or `filename` with driver=file.
 * Throws qemu's messages (without the "Could not open" prefix). `typed` has the values of a
 * `json:` name as JSON gave them, for the options qemu puts in a json: filename.
 */
export function locateImageFromOptions(opts: ReadonlyMap<string, string>, typed?: ReadonlyMap<string, QValue>): ImageLocation {
  const nbd = locateNbdOptions(opts);
  if (nbd !== undefined) return nbd;
  const driver = opts.get('driver');
  if (isHttpProtocol(driver)) return locateHttpOptions(driver!, opts, '', typed);
  if (isHttpProtocol(opts.get('file.driver'))) return locateHttpOptions(opts.get('file.driver')!, opts, 'file.', typed);
  if (driver === 'file') {
    for (const key of opts.keys()) {
      if (key !== 'driver' && key !== 'filename' && key !== 'locking') throw new UsageError(`Invalid parameter '${key}'`);
    }
    const path = opts.get('filename');
    if (path === undefined || path === '') throw new UsageError("The 'file' block driver requires a file name");
    return { path, format: 'file', locking: lockingOption(opts.get('locking')) };
  }
  for (const key of opts.keys()) {
    if (!['driver', 'file', 'file.driver', 'file.filename', 'file.locking'].includes(key) && !keySecretOption(driver, key) && backingKeySecretDepth(key) === undefined) {
      throw new UsageError(
        driver !== undefined ? `Block format '${driver}' does not support the option '${key}'` : `Invalid parameter '${key}'`,
      );
    }
  }
  const fileDriver = opts.get('file.driver');
  const node = opts.get('file');
  if (node !== undefined) {
    // A string `file` names an existing block node; tsimg has none (nor has qemu-img).
    if (fileDriver !== undefined || opts.has('file.filename')) {
      throw new UsageError('Cannot reference an existing block device with additional options or a new filename');
    }
    throw new NotFoundError(`Cannot find device='${node}' nor node-name='${node}'`);
  }
  if (fileDriver !== undefined && fileDriver !== 'file') throw new UnsupportedError(`Unknown protocol '${fileDriver}'`);
  const path = opts.get('file.filename');
  if (path === undefined) {
    if (fileDriver !== undefined) throw new UsageError("The 'file' block driver requires a file name");
    throw new UsageError('A block device must be specified for "file"');
  }
  if (path === '') throw new UsageError("The 'file' block driver requires a file name");
  const keySecret = opts.get('encrypt.key-secret') ?? opts.get('key-secret');
  const loc: ImageLocation = { path, format: driver, locking: lockingOption(opts.get('file.locking')) };
  if (keySecret !== undefined) loc.keySecret = keySecret;
  for (const [key, value] of opts) {
    const depth = backingKeySecretDepth(key);
    if (depth !== undefined) (loc.backingKeySecrets ??= [])[depth] = value;
  }
  return loc;
}

/** Flattens a JSON object into dotted keys (qemu's qdict_flatten): values as strings, and as given. */
function flattenJson(value: unknown, prefix: string, out: Map<string, string>, typed: Map<string, QValue>): void {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) flattenJson(v, prefix ? `${prefix}.${k}` : k, out, typed);
  } else {
    out.set(prefix, typeof value === 'string' ? value : JSON.stringify(value));
    typed.set(prefix, value as QValue);
  }
}

/**
 * Resolves an image name as qemu does for a filename argument or a backing file name: a plain
 * path, `file:<path>`, or `json:{...}` block options; any other `proto:` is an unknown protocol.
 */
export function locateImage(name: string): ImageLocation {
  if (!pathHasProtocol(name)) return { path: name };
  const proto = name.slice(0, name.indexOf(':'));
  if (proto === 'file') {
    const path = name.slice(5);
    if (path === '') throw new UsageError("The 'file' block driver requires a file name");
    // bdrv_parse_filename_strip_prefix: a name that would now read as "proto:..." gets "./",
    // which is also the name the image is known by (printed, and combined with backing names).
    return { path: pathHasProtocol(path) ? `./${path}` : path };
  }
  if (proto === 'json') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(name.slice(5));
    } catch {
      throw new UsageError('Could not parse the JSON options: JSON parse error');
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new UsageError('Could not parse the JSON options: Invalid JSON object given');
    }
    const opts = new Map<string, string>();
    const typed = new Map<string, QValue>();
    flattenJson(parsed, '', opts, typed);
    return locateImageFromOptions(opts, typed);
  }
  const nbd = locateNbdName(name, proto);
  if (nbd !== undefined) return nbd;
  if (isHttpProtocol(proto)) return locateHttpName(proto, name);
  throw new UnsupportedError(`Unknown protocol '${proto}'`);
}
