/**
 * Opening the images named on a command line: `-f` names are checked against qemu-img 7.2's
 * format list first, so an unknown name reads like qemu's ("Unknown driver 'foo'") and a format
 * qemu knows but tsimg does not handle says so, before @tsimg/image's `openImage` runs.
 */
import { DEFAULT_FORMATS, findFormat, openImage, type Image, type OpenImageOptions, QEMU_FORMATS } from '@tsimg/image';
import { type LockingMode, TsimgError, UnsupportedError, UsageError, errorWithCode } from '@tsimg/raw';
import type { CliIO } from './command.js';
import { CliExit } from './exit.js';
import { parseImageOpts } from './image-opts.js';

/**
 * Opens `name` (read-only unless asked) with an optional `-f` format name. With `imageOpts`,
 * `name` is an option string (`driver=qcow2,file.filename=x`), resolved as `info` does, and
 * errors name the whole string as qemu does.
 */
export async function openCommandImage(
  name: string,
  options: {
    format?: string;
    readOnly?: boolean;
    imageOpts?: boolean;
    snapshot?: OpenImageOptions['snapshot'];
    /** Cache mode `unsafe`: the image's files skip flushes (see OpenImageOptions.noFlush). */
    noFlush?: boolean;
    /** FileDevice I/O mode of the image's files (see OpenImageOptions.io). */
    io?: 'async' | 'sync';
    /** qemu's discard=unmap (see OpenImageOptions.unmap). */
    unmap?: boolean;
    /** Where the repair of a dirty image opened read/write is reported ({@link repairLog}). */
    log?: OpenImageOptions['log'];
    /** BDRV_O_RESIZE: the command changes the image's size (see OpenImageOptions.resize). */
    resize?: boolean;
    /** A backing layer opened read/write too (see OpenImageOptions.writableBacking). */
    writableBacking?: OpenImageOptions['writableBacking'];
    /** Open the backing chain (default true; see OpenImageOptions.backing). */
    backing?: boolean;
    /** false: a read/write open that leaves persistent bitmaps alone (see OpenImageOptions.holdBitmaps). */
    holdBitmaps?: boolean;
    /** The `--object secret,...` data by id (see OpenImageOptions.secrets). */
    secrets?: ReadonlyMap<string, Uint8Array>;
    /** The key secret id when no image options give one (convert's target: its -o encrypt.key-secret). */
    keySecret?: string;
  } & LockOptions = {},
): Promise<Image> {
  if (!options.imageOpts) return openByName(name, options);
  if (options.format !== undefined) throw new CliExit(1, '--image-opts and --format are mutually exclusive');
  const { format, filename, locking, protocol, http, keySecret, backingKeySecrets } = parseImageOpts(name);
  try {
    // A bare protocol node (driver=file, nbd, http) is read as it is: raw's view.
    const bare = format === 'file' || format === 'nbd' || format === 'http' || format === 'https';
    return await openByName(filename, {
      ...options, format: bare ? 'raw' : format, locking, hostPath: !protocol, http, keySecret: keySecret ?? options.keySecret, backingKeySecrets,
    });
  } catch (err) {
    if (!(err instanceof TsimgError)) throw err;
    const prefix = `Could not open '${filename}': `;
    const reason = err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
    throw errorWithCode(err.code, `Could not open '${name}': ${reason}`, { cause: err, errno: err.errno });
  }
}

async function openByName(
  filename: string,
  options: Pick<
    OpenImageOptions,
    | 'format' | 'readOnly' | 'snapshot' | 'noFlush' | 'io' | 'unmap' | 'log' | 'resize' | 'writableBacking' | 'backing' | 'holdBitmaps' | 'hostPath' | 'http'
    | 'secrets' | 'keySecret' | 'backingKeySecrets'
  > & LockOptions & { locking?: LockingMode },
): Promise<Image> {
  const format = options.format;
  // Any format the image layer has opens here; a new one needs nothing from the CLI.
  if (format !== undefined && findFormat(DEFAULT_FORMATS, format) === undefined) {
    if (!QEMU_FORMATS.has(format)) {
      throw new UsageError(`Could not open '${filename}': Unknown driver '${format}'`, { errno: 'EINVAL' });
    }
    throw new UnsupportedError(`Could not open '${filename}': tsimg does not support the '${format}' format`);
  }
  return openImage(filename, {
    format,
    readOnly: options.readOnly ?? true,
    snapshot: options.snapshot,
    noFlush: options.noFlush,
    io: options.io,
    unmap: options.unmap,
    log: options.log,
    resize: options.resize,
    forceShare: options.forceShare,
    noShare: options.noShare,
    locking: options.locking,
    onWarning: options.onWarning,
    writableBacking: options.writableBacking,
    backing: options.backing,
    holdBitmaps: options.holdBitmaps,
    hostPath: options.hostPath,
    http: options.http,
    secrets: options.secrets,
    keySecret: options.keySecret,
    backingKeySecrets: options.backingKeySecrets,
  });
}

/**
 * Prints the lines qemu's check code prints on stderr (a dirty image's repair on a read/write
 * open, or `check`'s own): its error_report lines ("report") as `tsimg: …`, its fprintf lines
 * as they are ("raw" ones already end with their newline).
 */
export function repairLog(io: CliIO): NonNullable<OpenImageOptions['log']> {
  return (line, kind) => io.stderr(kind === 'report' ? `tsimg: ${line}\n` : kind === 'raw' ? line : `${line}\n`);
}

/** How a command locks the image it opens (see @tsimg/image's OpenImageOptions). */
export interface LockOptions {
  /** -U / --force-share: read-only opens only (qemu's message otherwise). */
  forceShare?: boolean;
  /** BDRV_O_NO_SHARE: convert opens its sources so that nobody else may write them. */
  noShare?: boolean;
  /** Where lock warnings go (lock-messages.ts). */
  onWarning?: (message: string) => void;
}

/**
 * The line qemu's qcow2 driver prints on its own (no "qemu-img:" prefix) when it finds the image
 * corrupt, if `err` (or its cause) is such a corruption error; commands print it before their
 * own message, as qemu-img's output has it.
 */
export function corruptionLine(err: unknown): string | undefined {
  for (let e: unknown = err; e instanceof Error; e = (e as { cause?: unknown }).cause) {
    if (e instanceof TsimgError && e.code === 'corrupt' && e.message.startsWith('qcow2: ')) return `${e.message}\n`;
  }
  return undefined;
}
