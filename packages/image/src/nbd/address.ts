/**
 * Where an NBD export is: qemu's nbd block driver names — `nbd://HOST[:PORT]/NAME`,
 * `nbd+tcp://…`, `nbd+unix:///NAME?socket=PATH`, the legacy `nbd:HOST:PORT[:exportname=NAME]`
 * and `nbd:unix:PATH[:exportname=NAME]`, and block options (`driver=nbd` with `server.*`,
 * `host`/`port`/`path`, `export`) — resolved as block/nbd.c resolves them, with its messages.
 */
import { UsageError } from '@tsimg/raw';
import { NBD_DEFAULT_PORT } from './protocol.js';

/** An NBD server's address and the export asked for. */
export type NbdAddress = ({ kind: 'inet'; host: string; port: number } | { kind: 'unix'; path: string }) & {
  /** The export name; undefined asks for the default export (''). */
  export?: string;
};

/** True when `proto` (the text before a name's first ':') is the nbd driver's. */
export function isNbdProtocol(proto: string): boolean {
  return proto === 'nbd' || proto === 'nbd+tcp' || proto === 'nbd+unix';
}

const invalidUrl = (): UsageError => new UsageError('No valid URL specified');

/** nbd_parse_uri: the URI forms. */
function parseUri(name: string): NbdAddress {
  const m = /^([a-z+]+):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?$/.exec(name);
  if (m === null) throw invalidUrl();
  const [, scheme, authority, rawPath, query] = m as unknown as [string, string, string, string, string | undefined];
  const unix = scheme === 'nbd+unix';
  if (!unix && scheme !== 'nbd' && scheme !== 'nbd+tcp') throw invalidUrl();
  let path = decodeURIComponent(rawPath);
  if (path.startsWith('/')) path = path.slice(1);
  const exportName = path === '' ? undefined : path;
  const params = query === undefined || query === '' ? [] : query.split(/[&;]/);
  if (params.length > 1 || (unix && params.length === 0) || (!unix && params.length > 0)) throw invalidUrl();
  if (unix) {
    const [key, value] = params[0]!.split('=', 2) as [string, string | undefined];
    if (authority !== '' || key !== 'socket') throw invalidUrl();
    return { kind: 'unix', path: decodeURIComponent(value ?? ''), export: exportName };
  }
  const hp = /^(\[[^\]]*\]|[^:]*)(?::(\d*))?$/.exec(authority);
  if (hp === null || hp[1] === '') throw invalidUrl();
  const host = hp[1]!.startsWith('[') ? hp[1]!.slice(1, -1) : hp[1]!;
  const port = hp[2] === undefined || hp[2] === '' || Number(hp[2]) === 0 ? NBD_DEFAULT_PORT : Number(hp[2]);
  return { kind: 'inet', host, port, export: exportName };
}

/** nbd_parse_filename's legacy form: nbd:HOST:PORT or nbd:unix:PATH, with :exportname=NAME. */
function parseLegacy(name: string): NbdAddress {
  let file = name;
  let exportName: string | undefined;
  const at = file.indexOf(':exportname=');
  if (at >= 0) {
    exportName = file.slice(at + ':exportname='.length);
    file = file.slice(0, at);
  }
  if (!file.startsWith('nbd:')) throw new UsageError("File name string for NBD must start with 'nbd:'");
  const spec = file.slice(4);
  if (spec.startsWith('unix:')) return { kind: 'unix', path: spec.slice(5), export: exportName };
  const c = spec.lastIndexOf(':');
  if (c < 0) throw new UsageError(`address '${spec}' doesn't contain ':' separating host from port`);
  const host = spec.slice(0, c).replace(/^\[(.*)\]$/, '$1');
  const port = Number(spec.slice(c + 1));
  if (!Number.isInteger(port) || port < 0 || port > 65535 || spec.slice(c + 1) === '') {
    throw new UsageError(`Parameter 'server.port' expects a valid port`);
  }
  return { kind: 'inet', host, port, export: exportName };
}

/** An nbd filename (`nbd://…`, `nbd+unix://…`, `nbd:…`) as an address. */
export function parseNbdName(name: string): NbdAddress {
  return name.includes('://') ? parseUri(name) : parseLegacy(name);
}

/**
 * Block options of the nbd driver (the keys after `file.`, or of `driver=nbd`): `server.type`
 * with `server.host`/`server.port` or `server.path`, or the legacy `host`/`port`/`path`, and
 * `export`. Unknown keys get qemu's "Invalid parameter".
 */
export function nbdAddressFromOptions(opts: ReadonlyMap<string, string>): NbdAddress {
  const known = ['server.type', 'server.host', 'server.port', 'server.path', 'host', 'port', 'path', 'export', 'filename'];
  for (const key of opts.keys()) if (!known.includes(key)) throw new UsageError(`Invalid parameter '${key}'`);
  const filename = opts.get('filename');
  if (filename !== undefined) {
    const addr = parseNbdName(filename);
    return opts.has('export') ? { ...addr, export: opts.get('export') } : addr;
  }
  const exportName = opts.get('export');
  const legacy = opts.has('host') || opts.has('port') || opts.has('path');
  if (legacy && [...opts.keys()].some((k) => k.startsWith('server.'))) {
    throw new UsageError('Cannot use \'server\' and path/host/port at the same time');
  }
  const path = opts.get('server.path') ?? opts.get('path');
  const type = opts.get('server.type') ?? (legacy ? (opts.has('path') ? 'unix' : 'inet') : undefined);
  if (type === undefined) throw new UsageError("Parameter 'server.type' is missing");
  if (type === 'unix') {
    if (path === undefined) throw new UsageError("Parameter 'server.path' is missing");
    return { kind: 'unix', path, export: exportName };
  }
  if (type !== 'inet') throw new UsageError(`Parameter 'server.type' does not accept value '${type}'`);
  const host = opts.get('server.host') ?? opts.get('host');
  if (host === undefined) throw new UsageError("Parameter 'server.host' is missing");
  const portText = opts.get('server.port') ?? opts.get('port') ?? String(NBD_DEFAULT_PORT);
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`Parameter 'server.port' expects a valid port`);
  return { kind: 'inet', host, port, export: exportName };
}

/** nbd_refresh_filename: the name qemu reports for the export. */
export function nbdFilename(addr: NbdAddress): string {
  if (addr.kind === 'unix') {
    return addr.export !== undefined ? `nbd+unix:///${addr.export}?socket=${addr.path}` : `nbd+unix://?socket=${addr.path}`;
  }
  return addr.export !== undefined ? `nbd://${addr.host}:${addr.port}/${addr.export}` : `nbd://${addr.host}:${addr.port}`;
}

/** How qemu's socket code names the peer in "Failed to connect to '…'". */
export function nbdPeerName(addr: NbdAddress): string {
  return addr.kind === 'unix' ? addr.path : `${addr.host}:${addr.port}`;
}
