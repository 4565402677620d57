/**
 * Images on HTTP(S) servers, named as qemu's curl driver takes them: `http://…` / `https://…`
 * filenames (and backing names), and the `http` / `https` protocol drivers in block options
 * (`file.driver=https,file.url=…` with the curl options that apply to a fetch-based reader).
 * Also the one place that opens "the file an image lives in", a host file or a URL.
 */
import {
  type BlockDevice, FileDevice, type FileDeviceOptions, HttpDevice, type HttpDeviceOptions, type LockPermissions, UnsupportedError, UsageError,
} from '@tsimg/raw';
import { secretAsUtf8, type Secrets } from '@tsimg/qcow2';
import { pathHasProtocol } from './paths.js';
import { type QValue, toQemuJsonLine } from './qobject-json.js';

/** An image file on a web server: its URL and how to read it. */
export interface HttpLocation {
  url: string;
  options: HttpDeviceOptions;
  /** The ids of the curl driver's secrets (`--object secret,...`), looked up at the open. */
  secrets?: { cookie?: string; password?: string; proxyPassword?: string };
  /**
   * The curl node's options when qemu cannot name it by its URL (curl_refresh_filename: an
   * option that changes what is read was given): `driver` and the strong options given
   * (curl_strong_runtime_opts), as given, in the order qemu inserts them. Undefined otherwise.
   */
  nodeOptions?: Record<string, QValue>;
}

/** The curl driver's strong runtime options (curl_strong_runtime_opts), in qemu's order. */
const STRONG_OPTIONS = ['url', 'sslverify', 'cookie', 'cookie-secret', 'username', 'password-secret', 'proxy-username', 'proxy-password-secret'];

/**
 * bdrv_refresh_filename's name for an image on a web server: its URL, or when the curl node has
 * strong options a `json:` name of them — of the curl node itself for a bare protocol node
 * (`format` undefined), else of the `format` node over it.
 */
export function httpImageName(http: HttpLocation, format?: string): string {
  if (http.nodeOptions === undefined) return http.url;
  return `json:${toQemuJsonLine(format === undefined ? http.nodeOptions : { driver: format, file: http.nodeOptions })}`;
}

/**
 * bdrv_make_absolute_filename's check for a backing name stored in an image on a web server:
 * a relative name needs the curl node's directory (bdrv_dirname), which a curl node named by
 * json: has none of — qemu's error then. Absolute and protocol names need no directory.
 */
export function checkHttpBaseDirectory(http: HttpLocation, stored: string): void {
  if (http.nodeOptions === undefined || pathHasProtocol(stored) || stored.startsWith('/')) return;
  throw new UsageError(`Cannot generate a base directory for ${String(http.nodeOptions.driver)} nodes`, { errno: 'EINVAL' });
}

/**
 * curl_refresh_filename's test (sslverify off, or a cookie, user name or password of either
 * kind): the node's strong options then, else undefined.
 */
function strongNodeOptions(proto: string, get: (key: string) => string | undefined, typed: (key: string) => QValue | undefined, sslVerify: boolean): Record<string, QValue> | undefined {
  const named = ['cookie', 'cookie-secret', 'username', 'password-secret', 'proxy-username', 'proxy-password-secret'].some((k) => get(k) !== undefined);
  if (sslVerify && !named) return undefined;
  const node: Record<string, QValue> = { driver: typed('driver') ?? proto };
  for (const key of STRONG_OPTIONS) {
    const value = typed(key) ?? get(key);
    if (value !== undefined) node[key] = value;
  }
  return node;
}

/** The device options of `http` with its secrets' values filled in (curl_open's lookups). */
function withSecrets(http: HttpLocation, secrets: Secrets | undefined): HttpDeviceOptions {
  const ids = http.secrets;
  if (ids === undefined) return http.options;
  const text = (id: string): string => new TextDecoder().decode(secretAsUtf8(secrets, id));
  const options = { ...http.options };
  if (ids.cookie !== undefined) options.cookie = text(ids.cookie);
  if (ids.password !== undefined) options.password = text(ids.password);
  // Looked up as qemu does; a proxy (and its password) comes from the environment here.
  if (ids.proxyPassword !== undefined) text(ids.proxyPassword);
  return options;
}

/** The curl protocols tsimg reads (qemu also has ftp and ftps). */
const PROTOCOLS = new Set(['http', 'https']);

/** True when `proto` (the text before a name's first ':') is a curl protocol tsimg reads. */
export function isHttpProtocol(proto: string | undefined): boolean {
  return proto !== undefined && PROTOCOLS.has(proto);
}

/** curl_open's check that the URL belongs to the driver it was given to. */
function checkUrl(proto: string, url: string): void {
  if (!url.startsWith(`${proto}://`)) {
    throw new UsageError(`${proto} curl driver cannot handle the URL '${url}' (does not start with '${proto}://')`);
  }
}

/** A `http://…` / `https://…` filename (curl_parse_filename: the whole name is the URL). */
export function locateHttpName(proto: string, name: string): { path: string; http: HttpLocation } {
  checkUrl(proto, name);
  return { path: name, http: { url: name, options: {} } };
}

/** qemu's parse_option_size: a number with an optional k/M/G/T/P/E suffix (powers of 1024). */
function sizeOption(key: string, value: string): number {
  const m = /^(\d+(?:\.\d*)?)([kKMGTPE]?)$/.exec(value.trim());
  if (m === null) throw new UsageError(`Parameter '${key}' expects a non-negative number below 2^64`);
  const shift = { '': 0, k: 10, K: 10, M: 20, G: 30, T: 40, P: 50, E: 60 }[m[2]!]!;
  return Math.floor(Number(m[1]) * 2 ** shift);
}

/** qapi_bool_parse. */
function boolOption(key: string, value: string): boolean {
  if (['on', 'yes', 'true', 'y'].includes(value)) return true;
  if (['off', 'no', 'false', 'n'].includes(value)) return false;
  throw new UsageError(`Parameter '${key}' expects 'on' or 'off'`);
}

/** The curl driver's runtime options (QemuOptsList "curl"). */
const CURL_OPTIONS = new Set([
  'url', 'readahead', 'sslverify', 'timeout', 'cookie', 'cookie-secret', 'username', 'password-secret', 'proxy-username', 'proxy-password-secret',
]);

/**
 * The protocol node of flattened block options whose protocol driver is `proto` (http or
 * https): its options under `prefix` (`file.` below a format, '' for a bare protocol node),
 * checked and turned into HttpDevice options with curl_open's messages.
 */
export function locateHttpOptions(
  proto: string,
  opts: ReadonlyMap<string, string>,
  prefix: string,
  typedOpts?: ReadonlyMap<string, QValue>,
): { path: string; format?: string; http: HttpLocation } {
  const get = (key: string): string | undefined => opts.get(prefix + key);
  for (const key of opts.keys()) {
    if (key === 'driver' || key === `${prefix}driver`) continue;
    if (!key.startsWith(prefix) || !CURL_OPTIONS.has(key.slice(prefix.length))) {
      const driver = opts.get('driver');
      throw new UsageError(
        key.startsWith(prefix) && prefix !== ''
          ? `Block protocol '${proto}' doesn't support the option '${key.slice(prefix.length)}'`
          : driver !== undefined ? `Block format '${driver}' does not support the option '${key}'` : `Invalid parameter '${key}'`,
      );
    }
  }
  const options: HttpDeviceOptions = {};
  const readahead = get('readahead');
  if (readahead !== undefined) {
    options.readahead = sizeOption('readahead', readahead);
    if (options.readahead % 512 !== 0) throw new UsageError(`HTTP_READAHEAD_SIZE ${options.readahead} is not a multiple of 512`);
  }
  const timeout = get('timeout');
  if (timeout !== undefined) {
    if (!/^-?\d+$/.test(timeout)) throw new UsageError(`Parameter 'timeout' expects a number`);
    options.timeout = Number(timeout);
    if (options.timeout > 10000 || options.timeout < 0) throw new UsageError('timeout parameter is too large or negative');
  }
  const sslverify = get('sslverify');
  if (sslverify !== undefined && !boolOption('sslverify', sslverify)) options.sslVerify = false;
  const cookie = get('cookie');
  const cookieSecret = get('cookie-secret');
  if (cookie !== undefined && cookieSecret !== undefined) throw new UsageError('curl driver cannot handle both cookie and cookie secret');
  if (cookie !== undefined) options.cookie = cookie;
  // Secrets (--object secret,...) are looked up when the device is opened (openHostFile).
  const secretIds: HttpLocation['secrets'] = {};
  for (const [key, name] of [['cookie-secret', 'cookie'], ['password-secret', 'password'], ['proxy-password-secret', 'proxyPassword']] as const) {
    const id = get(key);
    if (id !== undefined) secretIds[name] = id;
  }
  const username = get('username');
  if (username !== undefined) options.username = username;
  // A proxy user name only matters with a proxy, which fetch takes from its environment.
  const url = get('url');
  if (url === undefined) throw new UsageError("curl block driver requires an 'url' option");
  checkUrl(proto, url);
  const http: HttpLocation = { url, options };
  if (Object.keys(secretIds).length > 0) http.secrets = secretIds;
  const nodeOptions = strongNodeOptions(proto, get, (key) => typedOpts?.get(prefix + key), options.sslVerify !== false);
  if (nodeOptions !== undefined) http.nodeOptions = nodeOptions;
  return { path: url, format: prefix === '' ? proto : opts.get('driver'), http };
}

/** What the open of a host file or URL needs to know (FileDevice's options for host files). */
export type HostFileOptions = FileDeviceOptions;

/** The file an image lives in: a host file, a remote one read by ranges, or the caller's device. */
export type HostFile = FileDevice | HttpDevice | BlockDevice;

/**
 * Where an open finds files by name instead of the host's file system (a browser page's
 * picked Files as BlobDevices, say): a fresh device for `name`, or undefined to open it as usual.
 */
export type FileResolver = (name: string) => BlockDevice | undefined;

/**
 * Opens `path`: the device `files` gives for it, else the URL of `http` when given (read-only;
 * remote files take no locks), else the host file.
 */
export async function openHostFile(
  path: string,
  http: HttpLocation | undefined,
  options: HostFileOptions,
  files?: FileResolver,
  secrets?: Secrets,
): Promise<HostFile> {
  const given = files?.(path);
  if (given !== undefined) return given;
  if (http !== undefined) return HttpDevice.open(http.url, { ...withSecrets(http, secrets), filename: httpImageName(http) });
  return FileDevice.open(path, options);
}

/** Gives a host file its lock permissions; a remote file has no locks. */
export function setHostFilePermissions(file: HostFile, perms: LockPermissions): void {
  if (file instanceof FileDevice) file.setPermissions(perms);
}
