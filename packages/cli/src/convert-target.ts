/**
 * The target of `tsimg convert` before the copy: its creation options (`-o`, `-B`, `-F`, the
 * sources' size) and img_convert's checks of them, the lock check against the sources, the
 * creation itself, and the files a failed convert removes again.
 */
import { DEFAULT_FORMATS, findFormat, type Image, protocolPath, targetHostFile, tooLarge, uncreatableFormatMessage } from '@tsimg/image';
import fs from 'node:fs';
import { CliExit } from './exit.js';
import { CACHE_MODES } from './command-options.js';
import type { CliIO } from './command.js';
import { lockHint } from './lock-messages.js';
import { creatableFormat, createImageFile, creationOpts } from './creation-options.js';
import { CreatedFile } from './created-file.js';
import type { QemuOpts } from './options.js';

/** What of convert's command line the target's creation reads. */
export interface ConvertTargetArgs {
  /** -O (default raw). */
  outFmt: string;
  /** -B: the target's backing file. */
  outBase?: string;
  /** -F: the format of the target's backing file. */
  backingFmt?: string;
  /** -o, accumulated. */
  options?: string;
  /** -c */
  compressed: boolean;
  /** -U */
  forceShare: boolean;
  /** -t: the target's cache mode. */
  cache: string;
  targetImageOpts: boolean;
  /** `--object secret,...` data by id. */
  secrets: Map<string, Uint8Array>;
}

/** The files creating the target makes: the image and, with `-o data_file`, its data file. */
export async function createdFiles(out: string, opts: QemuOpts): Promise<CreatedFile[]> {
  const dataFile = opts.getString('data_file');
  const names = [out, ...(dataFile === undefined ? [] : [dataFile])];
  const files: CreatedFile[] = [];
  for (const name of names) {
    // A name qemu cannot create fails later, with its own message; nothing is noted for it.
    let path: string;
    try {
      path = protocolPath(name);
    } catch {
      continue;
    }
    files.push(await CreatedFile.before(path));
  }
  return files;
}

/** The target's creation options (without -n): `-o`, the sources' total size, `-B` and `-F`. */
export function creationOptions(args: ConvertTargetArgs, out: string, totalBytes: number): QemuOpts {
  const format = creatableFormat(args.outFmt);
  if (!format) throw new CliExit(1, uncreatableFormatMessage(args.outFmt));
  // An NBD target is used as it is (image-create.ts); any other protocol is refused here.
  hostFileOrExit(out);
  const opts = creationOpts(format);
  if (args.options !== undefined) {
    try {
      opts.parse(args.options);
    } catch (err) {
      throw new CliExit(1, err instanceof Error ? err.message : String(err));
    }
  }
  opts.setNumber('size', BigInt(totalBytes));
  if (args.outBase !== undefined) {
    if (!opts.desc('backing_file')) throw new CliExit(1, `Backing file not supported for file format '${args.outFmt}'`);
    opts.set('backing_file', args.outBase);
  }
  if (args.backingFmt !== undefined) {
    if (!opts.desc('backing_fmt')) {
      throw new CliExit(1, `Backing file format not supported for file format '${args.outFmt}'`);
    }
    opts.set('backing_fmt', args.backingFmt);
  }
  return opts;
}

/** img_convert's checks of the target's backing file and of -c against the creation options. */
export function checkTargetOptions(
  args: ConvertTargetArgs,
  opts: QemuOpts | undefined,
  sourceCount: number,
  outBase: string | undefined,
  outBaseParam: string | undefined,
): void {
  if (sourceCount > 1 && outBase !== undefined) {
    throw new CliExit(1, 'Having a backing file for the target makes no sense when concatenating multiple input images');
  }
  if (outBaseParam !== undefined && opts?.getString('backing_fmt') === undefined) {
    throw new CliExit(1, 'Use of backing file requires explicit backing format');
  }
  if (args.compressed && opts) {
    if (!findFormat(DEFAULT_FORMATS, args.outFmt)?.writesCompressed) throw new CliExit(1, 'Compression not supported for this file format');
    if (opts.get('encryption') !== undefined || opts.getString('encrypt.format') !== undefined) {
      throw new CliExit(1, 'Compression and encryption not supported at the same time');
    }
    const prealloc = opts.getString('preallocation');
    if (prealloc !== undefined && prealloc !== 'off') {
      throw new CliExit(1, 'Compression and preallocation not supported at the same time');
    }
  }
}

/**
 * Creates the target (unless -n, `opts` undefined) after qemu's lock check, then checks the
 * target cache mode and, for an existing target, the lock again.
 */
export async function prepareTarget(args: ConvertTargetArgs, opened: readonly Image[], out: string, opts: QemuOpts | undefined, io: CliIO): Promise<void> {
  // qemu's image locks: without -U the sources (with their backing and data files) do not
  // share write access, so a target that is one of those files cannot be written. The locks
  // refuse it themselves (OFD locks conflict within one process); this says it even without
  // the native module, where nothing is locked.
  const lockedBy = args.forceShare ? undefined : await sourceFileIds(opened);
  const createdHost = opts && lockedBy ? hostFileOrExit(out) : undefined;
  if (createdHost !== undefined && (await isOneOf(createdHost, lockedBy!))) {
    const lock = `Failed to get "write" lock\nIs another process using the image [${out}]?`;
    throw new CliExit(1, `${out}: error while converting ${args.outFmt}: ${lock}`);
  }
  if (opts) {
    try {
      // (opts exist only for a format creationOptions found creatable)
      await createImageFile(creatableFormat(args.outFmt)!, out, opts, args.secrets, io);
    } catch (err) {
      const e = tooLarge(args.outFmt, err, opts.getNumber('cluster_size', 0n) !== 0n);
      throw new CliExit(1, `${out}: error while converting ${args.outFmt}: ${e instanceof Error ? e.message : String(e)}${lockHint(e)}`);
    }
  }
  if (!CACHE_MODES.has(args.cache)) throw new CliExit(1, `Invalid cache option: ${args.cache}`);
  // A name with no host file (an NBD export, an http:// URL) is no local file a source could
  // be; a name that cannot be opened fails in the target's open, with its message.
  let hostOut: string | undefined;
  try {
    hostOut = targetHostFile(out);
  } catch {
    hostOut = undefined;
  }
  if (lockedBy && !args.targetImageOpts && hostOut !== undefined && (await isOneOf(hostOut, lockedBy))) {
    throw new CliExit(1, `Could not open '${out}': Failed to get "write" lock\nIs another process using the image [${out}]?`);
  }
}

/** `dev:ino` of every file the opened sources read: images, backing files, data files. */
export async function sourceFileIds(images: readonly Image[]): Promise<Set<string>> {
  const ids = new Set<string>();
  const add = async (dev: unknown): Promise<void> => {
    const name = (dev as { fileName?: unknown } | undefined)?.fileName;
    if (typeof name !== 'string') return;
    const st = await fs.promises.stat(name).catch(() => undefined);
    if (st) ids.add(`${st.dev}:${st.ino}`);
  };
  for (const top of images) {
    for (let img: Image | undefined = top; img; img = img.backing) {
      await add(img.file);
      await add(img.dataFile);
    }
  }
  return ids;
}

/** True when `path` exists and is one of the files in `ids`. */
async function isOneOf(path: string, ids: Set<string>): Promise<boolean> {
  const st = await fs.promises.stat(path).catch(() => undefined);
  return st !== undefined && ids.has(`${st.dev}:${st.ino}`);
}

/** The host file of a target name (undefined for an NBD export), or qemu's message and exit 1. */
function hostFileOrExit(name: string): string | undefined {
  try {
    return targetHostFile(name);
  } catch (err) {
    throw new CliExit(1, err instanceof Error ? err.message : String(err));
  }
}
