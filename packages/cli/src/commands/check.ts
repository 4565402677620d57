/**
 * `tsimg check [-q] [-f fmt] [--output=human|json] [-r leaks|all] [-T cache] [-U] [--object ...]
 * [--image-opts] filename` — qemu-img 7.2's img_check: the same report on stdout, the same
 * per-problem lines on stderr, the same repairs, and its exit statuses:
 * 0 clean (or everything repaired), 1 check failed, 2 corruptions, 3 leaks only,
 * 63 the format has no checks (raw, luks). The format's own part is its FormatCheck (@tsimg/image).
 */
import { type LockingMode, TsimgError, type BlockDevice, UsageError } from '@tsimg/raw';
import { addObject } from '../object-option.js';
import {
  type CheckSession, DEFAULT_FORMATS, findFormat, type HostFile, type HttpLocation, type ImageFormat, imageFileLock, locateImage, NbdClient, NO_PERMISSIONS,
  type NodePermissions, openForCheckAs, openHostFile, openImage, QEMU_FORMATS, setHostFilePermissions, topNodePermissions,
} from '@tsimg/image';
import { lockHint, lockWarnings } from '../lock-messages.js';
import { probedRawWarning } from '../raw-probe-warning.js';
import { checkErrnoText, type CheckOutcome, FIX_ERRORS, FIX_LEAKS } from '@tsimg/qcow2';
import type { CliIO, CommandRunner } from '../command.js';
import { CliExit } from '../exit.js';
import { getoptLong, type LongOption } from '../getopt.js';
import {
  CACHE_MODES,
  expectOneFilename,
  FORMAT_OPTION,
  getoptExit,
  HELP_OPTION,
  IMAGE_SOURCE_OPTIONS,
  isJsonOutput,
  OUTPUT_OPTION,
  refuseFormatWithImageOpts,
  usageExit,
} from '../command-options.js';
import { repairLog } from '../image-open.js';
import { interruptsOf } from '../interrupt.js';
import { parseImageOpts } from '../image-opts.js';
import { formatCheckHuman, formatCheckJson, formatRepairSummary } from '../check-output.js';

const LONG_OPTIONS: readonly LongOption[] = [
  HELP_OPTION,
  FORMAT_OPTION,
  { name: 'repair', hasArg: true, key: 'r' },
  OUTPUT_OPTION,
  ...IMAGE_SOURCE_OPTIONS,
];


const HELP =
  'usage: tsimg check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename\n\n' +
  "  '-r leaks' repairs leaked clusters, '-r all' also repairs corruptions\n" +
  "  '--output' takes 'human' (default) or 'json'\n" +
  'Exit status: 0 no errors, 1 check failed, 2 corruptions, 3 leaks only, 63 format without checks\n';

/**
 * The format of `file` as bdrv_open probes it for a check: a registered format's probe, else
 * raw (whose "does not support checks" is also qemu's answer for qcow version 1).
 */
async function probeCheckFormat(file: BlockDevice): Promise<ImageFormat> {
  const first = new Uint8Array(Math.min(8, file.size()));
  if (first.length > 0) await file.read(0, first);
  return DEFAULT_FORMATS.find((f) => f.probe?.(first)) ?? findFormat(DEFAULT_FORMATS, 'raw')!;
}

/** What openChecked needs besides the name: the command's mode, locks and secrets. */
interface CheckOpenOptions {
  forceShare: boolean;
  locking?: LockingMode;
  hostPath?: boolean;
  shown?: string;
  http?: HttpLocation;
  keySecret?: string;
  secrets: ReadonlyMap<string, Uint8Array>;
}

/**
 * Opens like img_open: the file, its format, and for a format with a check its header checks and
 * backing chain (the format's FormatCheck); a format without one is opened as any image is.
 */
async function openChecked(
  filename: string,
  format: string | undefined,
  writable: boolean,
  io: CliIO,
  lock: CheckOpenOptions,
): Promise<{ file: HostFile; format: ImageFormat; session?: CheckSession }> {
  const named = format === undefined ? undefined : findFormat(DEFAULT_FORMATS, format);
  if (format !== undefined && named === undefined) {
    if (!QEMU_FORMATS.has(format)) throw new CliExit(1, `Could not open '${lock.shown ?? filename}': Unknown driver '${format}'`);
    throw new CliExit(1, `Could not open '${lock.shown ?? filename}': tsimg does not support the '${format}' format`);
  }
  let file: HostFile;
  const onWarning = lockWarnings(io, writable);
  let node: NodePermissions;
  let path: string;
  let http: HttpLocation | undefined;
  let jsonFormat: string | undefined;
  try {
    // A name from --image-opts is a host path already; a filename argument is parsed as qemu does.
    const loc = lock.http !== undefined ? { path: filename, http: lock.http, nbd: undefined } : lock.hostPath ? { path: filename, nbd: undefined } : locateImage(filename);
    path = loc.path;
    http = loc.http;
    // A json: name may name the format itself ("driver"); the file protocol alone is raw bytes.
    if ('format' in loc && loc.format !== undefined && named === undefined) jsonFormat = loc.format === 'file' ? 'raw' : loc.format;
    if (loc.http !== undefined && writable) throw new UsageError('curl driver does not support writes');
    // img_check opens read-write for -r; -U there is qemu's error before any file is opened.
    node = topNodePermissions({ write: writable, forceShare: lock.forceShare });
    file = loc.nbd
      ? await NbdClient.connect(loc.nbd, { readOnly: !writable })
      : await openHostFile(path, loc.http, { readOnly: !writable, io: 'sync', lock: NO_PERMISSIONS, locking: lock.locking, onWarning }, undefined, lock.secrets);
  } catch (err) {
    throw new CliExit(1, `Could not open '${lock.shown ?? filename}': ${(err as Error).message}${lockHint(err)}`);
  }
  try {
    const fmt = named ?? (jsonFormat !== undefined ? findFormat(DEFAULT_FORMATS, jsonFormat) : undefined) ?? (await probeCheckFormat(file));
    setHostFilePermissions(file, imageFileLock(node, fmt.name));
    // qemu-img's warning for a probed raw image it is about to write (raw-probe-warning.ts).
    if (format === undefined && writable && fmt.name === 'raw') io.stderr(probedRawWarning(filename));
    const session = await openForCheckAs(fmt, file, {
      filename,
      path,
      writable,
      node,
      onWarning,
      log: repairLog(io),
      keySecret: lock.keySecret,
      secrets: lock.secrets,
      http,
      openBacking: (p, f) => openImage(p, { format: f, readOnly: true, forceShare: lock.forceShare, onWarning }),
    });
    return { file, format: fmt, session };
  } catch (err) {
    await file.close().catch(() => undefined);
    if (err instanceof CliExit) throw err;
    if (err instanceof TsimgError) {
      throw new CliExit(1, `Could not open '${lock.shown ?? filename}': ${err.message}${lockHint(err)}`);
    }
    throw err;
  }
}

export const run: CommandRunner = async (argv, io) => {
  const parsed = getoptLong(argv, ':hf:r:T:qU', LONG_OPTIONS, 'check');
  if (parsed.error) getoptExit(parsed.error);
  let format: string | undefined;
  let output: string | undefined;
  let cache: string | undefined;
  let fix = 0;
  let quiet = false;
  let imageOpts = false;
  let forceShare = false;
  let locking: LockingMode | undefined;
  let keySecret: string | undefined;
  const secrets = new Map<string, Uint8Array>();
  for (const o of parsed.options) {
    switch (o.key) {
      case 'h':
        io.stdout(HELP);
        return 0;
      case 'f':
        format = o.value;
        break;
      case 'r':
        if (o.value === 'leaks') fix = FIX_LEAKS;
        else if (o.value === 'all') fix = FIX_LEAKS | FIX_ERRORS;
        else usageExit(`Unknown option value for -r (expecting 'leaks' or 'all'): ${o.value}`);
        break;
      case 'output':
        output = o.value;
        break;
      case 'T':
        cache = o.value;
        break;
      case 'q':
        quiet = true;
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'U':
        forceShare = true;
        break;
      case 'object':
        addObject(o.value!, secrets);
        break;
      default:
        break;
    }
  }
  let filename = expectOneFilename(parsed.operands);
  const json = isJsonOutput(output);
  if (cache !== undefined && !CACHE_MODES.has(cache)) throw new CliExit(1, `Invalid source cache option: ${cache}`);
  // qemu names an --image-opts image by its option string in errors.
  const shown = filename;
  let http: HttpLocation | undefined;
  if (imageOpts) {
    refuseFormatWithImageOpts(format);
    const opts = parseImageOpts(filename);
    filename = opts.filename;
    format = opts.format;
    locking = opts.locking;
    http = opts.http;
    keySecret = opts.keySecret;
  }
  const out = (text: string): void => {
    if (!quiet) io.stdout(text);
  };

  const { file, format: opened, session } = await openChecked(filename, format, fix !== 0, io, { forceShare, locking, hostPath: imageOpts, shown, http, keySecret, secrets });
  const checkAndReport = async (signal?: AbortSignal): Promise<number> => {
    try {
      if (!session) throw new CliExit(63, 'This image format does not support checks');
      let outcome: CheckOutcome = await session.check(fix);
      // A repair runs to its end; a signal that came meanwhile ends the command after it.
      signal?.throwIfAborted();
      if (!outcome.errno && (outcome.result.corruptionsFixed || outcome.result.leaksFixed)) {
        const { leaksFixed, corruptionsFixed } = outcome.result;
        if (!json) out(formatRepairSummary(leaksFixed, corruptionsFixed));
        outcome = await session.check(0);
        outcome.result.leaksFixed = leaksFixed;
        outcome.result.corruptionsFixed = corruptionsFixed;
      }
      const { result, errno } = outcome;
      if (!errno) {
        out(json ? formatCheckJson({ filename, format: opened.name, result }) : formatCheckHuman(result));
      }
      if (errno || result.checkErrors) {
        throw new CliExit(1, errno ? `Check failed: ${checkErrnoText(errno)}` : 'Check failed');
      }
      return result.corruptions ? 2 : result.leaks ? 3 : 0;
    } finally {
      if (session && fix) await session.finishRepair();
      await file.close().catch(() => undefined);
      await session?.close();
    }
  };
  // -r writes the image: SIGINT/SIGTERM wait until the repair is written (interrupt.ts).
  return fix ? interruptsOf(io).hold(checkAndReport) : checkAndReport();
};
