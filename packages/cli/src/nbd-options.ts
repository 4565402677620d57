/**
 * tsimg-nbd's command line: qemu-nbd 7.2's options (getopt "hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L"
 * and its long table), checked in qemu-nbd's order with its messages.
 */
import { CliExit } from './exit.js';
import { getoptLong, glibcGetoptMessage, type LongOption } from './getopt.js';
import { parseSnapshotParam, type SnapshotParam } from './snapshot-param.js';

/** What a tsimg-nbd command line asks for. */
export interface NbdServeConfig {
  action: 'serve' | 'help' | 'version';
  filename: string;
  format?: string;
  imageOpts: boolean;
  bind: string;
  port: string;
  socket?: string;
  shared: number;
  persistent: boolean;
  readOnly: boolean;
  /** -s: writes go to a temporary overlay. */
  snapshot: boolean;
  /** -l: an internal snapshot, read-only. */
  loadSnapshot?: string | SnapshotParam;
  exportName: string;
  description?: string;
  bitmaps: string[];
  allocationDepth: boolean;
  discard: 'ignore' | 'unmap';
  detectZeroes: 'off' | 'on' | 'unmap';
  /** --cache: writeback (default), writethrough, none, directsync, unsafe. */
  cache: string;
  fork: boolean;
  pidFile?: string;
  verbose: boolean;
}

const LONG: readonly LongOption[] = [
  ['help', false, 'h'], ['version', false, 'V'], ['bind', true, 'b'], ['port', true, 'p'], ['socket', true, 'k'],
  ['offset', true, 'o'], ['read-only', false, 'r'], ['allocation-depth', false, 'A'], ['bitmap', true, 'B'],
  ['connect', true, 'c'], ['disconnect', false, 'd'], ['list', false, 'L'], ['snapshot', false, 's'],
  ['load-snapshot', true, 'l'], ['nocache', false, 'n'], ['cache', true, 'cache'], ['aio', true, 'aio'],
  ['discard', true, 'discard'], ['detect-zeroes', true, 'detect-zeroes'], ['shared', true, 'e'], ['format', true, 'f'],
  ['persistent', false, 't'], ['verbose', false, 'v'], ['object', true, 'object'], ['export-name', true, 'x'],
  ['description', true, 'D'], ['tls-creds', true, 'tls-creds'], ['tls-hostname', true, 'tls-hostname'],
  ['tls-authz', true, 'tls-authz'], ['image-opts', false, 'image-opts'], ['trace', true, 'T'], ['fork', false, 'fork'],
  ['pid-file', true, 'pid-file'], ['selinux-label', true, 'selinux-label'],
].map(([name, hasArg, key]) => ({ name: name as string, hasArg: hasArg as boolean, key: key as string }));

const TRY = "Try `tsimg-nbd --help' for more information.";
const fail = (message: string): never => {
  throw new CliExit(1, message);
};

/** qemu_strtoi with base 0: decimal, 0x hex or 0 octal, the whole text. */
function strtoi(text: string): number | undefined {
  const t = text.trim();
  let n: number;
  if (/^[+-]?0x[0-9a-f]+$/i.test(t)) n = parseInt(t, 16);
  else if (/^[+-]?0[0-7]*$/.test(t)) n = parseInt(t, 8);
  else if (/^[+-]?[1-9][0-9]*$/.test(t)) n = parseInt(t, 10);
  else return undefined;
  return Number.isSafeInteger(n) && Math.abs(n) <= 0x7fffffff ? n : undefined;
}

const CACHE_MODES = ['none', 'off', 'writeback', 'writethrough', 'directsync', 'unsafe'];

/** qemu-nbd's cache, aio, discard and detect-zeroes options, checked in its order and words. */
function applyIoMode(c: NbdServeConfig, key: string, v: string, seen: Set<string>): void {
  const once = (what: string, message: string): void => {
    if (seen.has(what)) fail(message);
    seen.add(what);
  };
  switch (key) {
    case 'n':
    case 'cache':
      once('cache', '-n and --cache can only be specified once');
      if (!CACHE_MODES.includes(key === 'n' ? 'none' : v)) fail(`Invalid cache mode \`${v}'`);
      c.cache = key === 'n' ? 'none' : v;
      break;
    case 'aio':
      once('aio', '--aio can only be specified once');
      if (!['threads', 'native', 'io_uring'].includes(v)) fail(`Invalid aio mode '${v}'`);
      break;
    case 'discard':
      once('discard', '--discard can only be specified once');
      if (v === 'off' || v === 'ignore') c.discard = 'ignore';
      else if (v === 'on' || v === 'unmap') c.discard = 'unmap';
      else fail(`Invalid discard mode \`${v}'`);
      break;
    case 'detect-zeroes':
      if (v !== 'off' && v !== 'on' && v !== 'unmap') fail(`Failed to parse detect_zeroes mode: Parameter 'detect-zeroes' does not accept value '${v}'`);
      if (v === 'unmap' && c.discard !== 'unmap') fail('setting detect-zeroes to unmap is not allowed without setting discard operation to unmap');
      c.detectZeroes = v as NbdServeConfig['detectZeroes'];
      break;
  }
}

/** Parses tsimg-nbd's argv (without the program name). Throws CliExit with qemu-nbd's messages. */
export function parseNbdArgs(argv: readonly string[]): NbdServeConfig {
  const parsed = getoptLong(argv, 'hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L', LONG, 'tsimg-nbd');
  const c: NbdServeConfig = {
    action: 'serve', filename: '', imageOpts: false, bind: '0.0.0.0', port: '10809', shared: 1, persistent: false,
    readOnly: false, snapshot: false, exportName: '', bitmaps: [], allocationDepth: false, discard: 'ignore',
    detectZeroes: 'off', cache: 'writeback', fork: false, verbose: false,
  };
  // The I/O modes qemu-nbd allows once each ('n' and 'cache' are one).
  const seen = new Set<string>();
  let exportName: string | undefined;
  let list = false;
  let device = false;
  let tls = false;
  for (const { key, value } of parsed.options) {
    const v = value ?? '';
    switch (key) {
      case 's':
        c.snapshot = true;
        break;
      case 'n':
      case 'cache':
      case 'aio':
      case 'discard':
      case 'detect-zeroes':
        applyIoMode(c, key, v, seen);
        break;
      case 'b':
        c.bind = v;
        break;
      case 'p':
        c.port = v;
        break;
      case 'o':
        fail('--offset is not supported');
        break;
      case 'l':
        c.loadSnapshot = v.startsWith('snapshot.') ? parseNbdSnapshotParam(v) : v;
        c.readOnly = true;
        break;
      case 'r':
        c.readOnly = true;
        break;
      case 'A':
        c.allocationDepth = true;
        break;
      case 'B':
        c.bitmaps.unshift(v);
        break;
      case 'k':
        if (!v.startsWith('/')) fail('socket path must be absolute');
        c.socket = v;
        break;
      case 'd':
      case 'c':
        device = true;
        break;
      case 'e': {
        const n = strtoi(v);
        if (n === undefined || n < 0) fail(`Invalid shared device number '${v}'`);
        c.shared = n!;
        break;
      }
      case 'f':
        c.format = v;
        break;
      case 't':
        c.persistent = true;
        break;
      case 'x':
        if (new TextEncoder().encode(v).length > 4096) fail(`export name '${v}' too long`);
        exportName = v;
        break;
      case 'D':
        if (new TextEncoder().encode(v).length > 4096) fail(`export description '${v}' too long`);
        c.description = v;
        break;
      case 'v':
        c.verbose = true;
        break;
      case 'V':
        return { ...c, action: 'version' };
      case 'h':
        return { ...c, action: 'help' };
      case 'tls-creds':
      case 'tls-authz':
      case 'tls-hostname':
        tls = true;
        break;
      case 'image-opts':
        c.imageOpts = true;
        break;
      case 'fork':
        c.fork = true;
        break;
      case 'L':
        list = true;
        break;
      case 'pid-file':
        c.pidFile = v;
        break;
      case 'object': // secrets serve encryption only, which tsimg refuses
      case 'T':
      case 'selinux-label':
        break;
    }
  }
  if (parsed.error) fail(`${glibcGetoptMessage('tsimg-nbd', parsed.error).replace(/^tsimg-nbd: /, '')}\ntsimg-nbd: ${TRY}`);
  if (list) fail('--list is not supported');
  if (parsed.operands.length !== 1) fail(`Invalid number of arguments\n${TRY}`);
  if (tls) fail('TLS is not supported');
  if (device) fail('Kernel /dev/nbdN support not available');
  // qemu-nbd checks this once it has bound its socket; nothing is listening yet either way.
  if (c.imageOpts && c.format !== undefined) fail('--image-opts and -f are mutually exclusive');
  c.filename = parsed.operands[0]!;
  c.exportName = exportName ?? '';
  return c;
}

/** -l snapshot.id=…,snapshot.name=…, with qemu-nbd's message on failure. */
function parseNbdSnapshotParam(v: string): SnapshotParam {
  try {
    return parseSnapshotParam(v);
  } catch {
    throw new CliExit(1, `Failed in parsing snapshot param \`${v}'`);
  }
}

/** qemu-nbd --help, with tsimg-nbd's name and the options it has. */
export const NBD_HELP = `Usage: tsimg-nbd [OPTIONS] FILE
tsimg Disk Network Block Device Utility (qemu-nbd 7.2 compatible)

  -h, --help                display this help and exit
  -V, --version             output version information and exit

Connection properties:
  -p, --port=PORT           port to listen on (default \`10809')
  -b, --bind=IFACE          interface to bind to (default \`0.0.0.0')
  -k, --socket=PATH         path to the unix socket
  -e, --shared=NUM          device can be shared by NUM clients (default '1')
  -t, --persistent          don't exit on the last connection
  -v, --verbose             display extra debugging information
  -x, --export-name=NAME    expose export by name (default is empty string)
  -D, --description=TEXT    export a human-readable description

Exposing part of the image:
  -A, --allocation-depth    expose the allocation depth
  -B, --bitmap=NAME         expose a persistent dirty bitmap

General purpose options:
  --object type,id=ID,...   define an object such as 'secret' for providing
                            passwords and/or encryption keys
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                            specify tracing options (accepted, ignored)
  --fork                    fork off the server process and exit the parent
                            once the server is running
  --pid-file=PATH           store the server's process ID in the given file

Block device options:
  -f, --format=FORMAT       set image format (raw, qcow2, ...)
  -r, --read-only           export read-only
  -s, --snapshot            use FILE as an external snapshot, create a temporary
                            file with backing_file=FILE, redirect the write to
                            the temporary one
  -l, --load-snapshot=SNAPSHOT_PARAM
                            load an internal snapshot inside FILE and export it
                            as an read-only device, SNAPSHOT_PARAM format is
                            'snapshot.id=[ID],snapshot.name=[NAME]', or
                            '[ID_OR_NAME]'
  -n, --nocache             disable host cache
      --cache=MODE          set cache mode used to access the disk image, the
                            valid options are: 'none', 'writeback' (default),
                            'writethrough', 'directsync' and 'unsafe'
      --aio=MODE            set AIO mode (native, io_uring or threads)
      --discard=MODE        set discard mode (ignore, unmap)
      --detect-zeroes=MODE  set detect-zeroes mode (off, on, unmap)
      --image-opts          treat FILE as a full set of image options

Not available: -c/--connect and -d/--disconnect (kernel NBD devices), -L/--list,
-o/--offset, TLS.
`;
