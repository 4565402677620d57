/**
 * `tsimg check [-q] [-f fmt] [--output=human|json] [-r leaks|all] [-T cache] [-U] [--object ...]
 * [--image-opts] filename` — qemu-img 7.2's img_check: the same report on stdout, the same
 * per-problem lines on stderr, the same repairs, and its exit statuses:
 * 0 clean (or everything repaired), 1 check failed, 2 corruptions, 3 leaks only,
 * 63 the format has no checks (raw).
 */
import { FileDevice, type LockingMode, TsimgError, type BlockDevice, FormatError, UsageError } from '@tsimg/raw';
import { addObject } from '../object-option.js';
import {
  dataFileLock, type HostFile, type HttpLocation, imageFileLock, locateImage, luksHeaderIo, NbdClient, NO_PERMISSIONS, type NodePermissions, openHostFile, openImage,
  openingPermissions, resolveRelative, setHostFilePermissions, topNodePermissions, QEMU_FORMATS,
} from '@tsimg/image';
import { lockHint, lockWarnings } from '../lock-messages.js';
import { probedRawWarning } from '../raw-probe-warning.js';
import {
  AUTOCLEAR_BITMAPS,
  FIX_ERRORS,
  FIX_LEAKS,
  INCOMPAT_DATA_FILE,
  QCOW2_MAGIC,
  Qcow2Image,
  checkErrnoText,
  checkImage,
  finishRepair,
  openForCheck,
  findExtension,
  hasLuksFormat,
  LuksVolume,
  secretAsUtf8,
  type CheckImage,
  type CheckOutcome,
} from '@tsimg/qcow2';
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

async function probeCheckFormat(file: BlockDevice): Promise<'qcow2' | 'luks' | 'raw'> {
  const first = new Uint8Array(Math.min(8, file.size()));
  if (first.length > 0) await file.read(0, first);
  if (first.length >= 4 && new DataView(first.buffer).getUint32(0) === QCOW2_MAGIC) return 'qcow2';
  return hasLuksFormat(first) ? 'luks' : 'raw';
}

/** Opens like img_open: the file, its format, the header checks, and the backing chain. */
async function openChecked(
  filename: string,
  format: string | undefined,
  writable: boolean,
  io: CliIO,
  lock: {
    forceShare: boolean; locking?: LockingMode; held: BlockDevice[]; hostPath?: boolean; shown?: string; http?: HttpLocation; keySecret?: string;
    secrets: ReadonlyMap<string, Uint8Array>;
  },
): Promise<{ file: HostFile; img?: CheckImage }> {
  if (format !== undefined && format !== 'raw' && format !== 'qcow2' && format !== 'luks') {
    if (!QEMU_FORMATS.has(format)) throw new CliExit(1, `Could not open '${lock.shown ?? filename}': Unknown driver '${format}'`);
    throw new CliExit(1, `Could not open '${lock.shown ?? filename}': tsimg does not support the '${format}' format`);
  }
  let file: HostFile;
  const onWarning = lockWarnings(io, writable);
  let node: NodePermissions;
  let path: string;
  try {
    // A name from --image-opts is a host path already; a filename argument is parsed as qemu does.
    const loc = lock.http !== undefined ? { path: filename, http: lock.http, nbd: undefined } : lock.hostPath ? { path: filename, nbd: undefined } : locateImage(filename);
    path = loc.path;
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
    const fmt = format ?? (await probeCheckFormat(file));
    setHostFilePermissions(file, imageFileLock(node, fmt));
    if (fmt === 'luks') {
      // bdrv_open unlocks the volume before qemu-img finds that luks has no check.
      const keySecret = lock.keySecret;
      if (keySecret === undefined) throw new UsageError("Parameter 'key-secret' is required for cipher", { errno: 'EINVAL' });
      const password = secretAsUtf8(lock.secrets, keySecret);
      try {
        (await LuksVolume.open(luksHeaderIo(file), password)).dispose();
      } finally {
        password.fill(0);
      }
      return { file };
    }
    if (fmt === 'raw') {
      if (format === undefined && writable) {
        io.stderr(probedRawWarning(filename));
      }
      return { file };
    }
    const keySecret = lock.keySecret;
    const img = await openForCheck(file, repairLog(io), writable, keySecret === undefined ? undefined : () => secretAsUtf8(lock.secrets, keySecret));
    const finalLocks: (() => void)[] = [];
    const dataFileExt = img.dataFile ? findExtension(img.extensions, 'data-file') : undefined;
    if (dataFileExt) {
      // qemu opens the external data file too; its failure fails the open
      const df = await FileDevice.open(resolveRelative(path, dataFileExt.name), { readOnly: !writable, lock: dataFileLock(openingPermissions(node)), onWarning });
      lock.held.push(df); // held, as qemu holds its data child, until the check ends
      finalLocks.push(() => df.setPermissions(dataFileLock(node)));
    }
    const info = img.header.backingFileOffset > 0 ? await backingName(img) : undefined;
    if (info !== undefined && info !== '') {
      // img_open opens the whole chain: a missing or broken backing file fails the check too.
      const fmtName = findExtension(img.extensions, 'backing-format')?.name;
      const bfmt = fmtName === 'raw' || fmtName === 'qcow2' ? fmtName : undefined;
      const backingPath = resolveRelative(path, info);
      // A read-only top's permissions are what qemu gives a backing child of a check (its
      // user shares everything): read, sharing read and write-unchanged on a qcow2 file.
      const backing = await openImage(backingPath, { format: bfmt, readOnly: true, forceShare: lock.forceShare, onWarning }).catch((err: unknown) => {
        // openImage words its errors for a top-level image ("Could not open 'b': reason");
        // qemu names a backing file's failure once, after "Could not open backing file: ".
        let msg = err instanceof Error ? err.message : String(err);
        const prefix = `Could not open '${backingPath}': `;
        if (msg.startsWith(prefix)) msg = msg.slice(prefix.length);
        throw new FormatError(`Could not open backing file: ${msg}`, { cause: err });
      });
      lock.held.push(backing);
    }
    for (const update of finalLocks) update(); // as openImage's second step
    return { file, img };
  } catch (err) {
    await file.close().catch(() => undefined);
    for (const dev of lock.held.splice(0).reverse()) await dev.close().catch(() => undefined);
    if (err instanceof CliExit) throw err;
    if (err instanceof TsimgError) {
      throw new CliExit(1, `Could not open '${lock.shown ?? filename}': ${err.message}${lockHint(err)}`);
    }
    throw err;
  }
}

async function backingName(img: CheckImage): Promise<string> {
  const h = img.header;
  const bytes = new Uint8Array(h.backingFileSize);
  if (h.backingFileSize > 0) await img.file.read(h.backingFileOffset, bytes);
  return new TextDecoder().decode(bytes);
}

/**
 * qemu-img check -r opens the image read/write, so its persistent bitmaps are loaded and marked
 * in use at the open and stored anew at the close, after the repair (no allocation comes
 * between: the marking is in place). tsimg's check works below the engine, so an engine open
 * and close of the repaired file does that part. (Images with an external data file keep
 * their bitmaps as they are.)
 */
async function storeBitmapsAgain(file: BlockDevice, img: CheckImage, filename: string): Promise<void> {
  const h = img.header;
  if (h.version < 3 || (h.autoclearFeatures & AUTOCLEAR_BITMAPS) === 0n || (h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n) return;
  if (findExtension(img.extensions, 'bitmaps') === undefined) return;
  // The check closes the file itself afterwards.
  const view: BlockDevice = new Proxy(file, {
    get: (target, prop) => {
      if (prop === 'close') return async () => undefined;
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  const engine = await Qcow2Image.open(view, { filename, readOnly: false });
  await engine.close();
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

  const held: BlockDevice[] = [];
  const { file, img } = await openChecked(filename, format, fix !== 0, io, { forceShare, locking, held, hostPath: imageOpts, shown, http, keySecret, secrets });
  const checkAndReport = async (signal?: AbortSignal): Promise<number> => {
    try {
      if (!img) throw new CliExit(63, 'This image format does not support checks');
      let outcome: CheckOutcome = await checkImage(img, fix);
      // A repair runs to its end; a signal that came meanwhile ends the command after it.
      signal?.throwIfAborted();
      if (!outcome.errno && (outcome.result.corruptionsFixed || outcome.result.leaksFixed)) {
        const { leaksFixed, corruptionsFixed } = outcome.result;
        if (!json) out(formatRepairSummary(leaksFixed, corruptionsFixed));
        outcome = await checkImage(img, 0);
        outcome.result.leaksFixed = leaksFixed;
        outcome.result.corruptionsFixed = corruptionsFixed;
      }
      const { result, errno } = outcome;
      if (!errno) {
        out(json ? formatCheckJson({ filename, format: 'qcow2', result }) : formatCheckHuman(result));
      }
      if (errno || result.checkErrors) {
        throw new CliExit(1, errno ? `Check failed: ${checkErrnoText(errno)}` : 'Check failed');
      }
      return result.corruptions ? 2 : result.leaks ? 3 : 0;
    } finally {
      if (img && fix) {
        await finishRepair(img).catch(() => undefined);
        await storeBitmapsAgain(file, img, filename).catch(() => undefined);
      }
      await file.close().catch(() => undefined);
      for (const dev of held.reverse()) await dev.close().catch(() => undefined);
    }
  };
  // -r writes the image: SIGINT/SIGTERM wait until the repair is written (interrupt.ts).
  return fix ? interruptsOf(io).hold(checkAndReport) : checkAndReport();
};
