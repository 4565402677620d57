/**
 * Creating an image file from its creation options, as bdrv_create does: the target name's
 * protocol (a host file, or an NBD export used as it is), the format's creation from the list
 * of formats, the file protocol's own options and creation, and qemu's EFBIG rewording.
 */
import { createFile, LimitError, TsimgError, UnsupportedError, UsageError } from '@tsimg/raw';
import type { CreateContext, FormatCreation, ImageFormat } from './image.js';
import { measureRaw } from './measure.js';
import { locateImage } from './location.js';
import type { NbdAddress } from './nbd/address.js';
import { createOnNbd } from './nbd/create-target.js';
import type { OptDesc, QemuOpts } from './qemu-opts.js';

/** file-posix's creation options (the protocol layer every format here sits on). */
export const FILE_OPTS: readonly OptDesc[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'nocow', type: 'bool', help: 'Turn off copy-on-write (valid only on btrfs)' },
  { name: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, falloc, full)' },
  { name: 'extent_size_hint', type: 'size', help: 'Extent size hint for the image file, 0 to disable' },
];

/** raw's creation options. */
export const RAW_OPTS: readonly OptDesc[] = [{ name: 'size', type: 'size', help: 'Virtual disk size' }];

/** A host file of the size asked for, with file-posix's preallocation. */
function createHostFile(path: string, opts: QemuOpts): Promise<void> {
  return createFile(path, { size: opts.getNumber('size', 0n), preallocation: opts.getString('preallocation') });
}

/** raw's creation: the file protocol's (raw_co_create_opts passes everything down). */
export const RAW_CREATION: FormatCreation = {
  options: RAW_OPTS,
  create: createHostFile,
  createOnNbd: (nbd, opts) => createOnNbd(nbd, Number(opts.getNumber('size', 0n))),
  measure: (source) => measureRaw(source),
};

/** The file protocol, which `create -f file` names directly; never on an NBD export. */
const FILE_CREATION: FormatCreation = { options: FILE_OPTS, create: createHostFile };

/** A format that can be created: its name (for messages) and its creation. */
export interface CreatableFormat {
  readonly name: string;
  readonly creation: FormatCreation;
}

/**
 * The creatable format called `name` among `formats`, or the file protocol for `file` (qemu
 * lets `-f file` create a plain file, though `file` is a protocol, not a format).
 */
export function findCreatableFormat(formats: readonly ImageFormat[], name: string): CreatableFormat | undefined {
  if (name === 'file') return { name, creation: FILE_CREATION };
  const format = formats.find((f) => f.name === name);
  return format?.creation === undefined ? undefined : { name, creation: format.creation };
}

/** bdrv_find_protocol: the host path of `filename` (only the file protocol creates). */
export function protocolPath(filename: string): string {
  const m = /^([^:/]*):/.exec(filename);
  if (!m) return filename;
  if (m[1] === 'file') return filename.slice(5);
  // The curl protocols exist (reading), but bdrv_create finds no create function in them.
  if (m[1] === 'http' || m[1] === 'https') throw new UsageError(`Protocol driver '${m[1]}' does not support image creation`);
  throw new UsageError(`Unknown protocol '${m[1]}'`);
}

/** The NBD export a filename names, if it names one. */
export function nbdLocation(filename: string): NbdAddress | undefined {
  try {
    return locateImage(filename).nbd;
  } catch {
    return undefined;
  }
}

/**
 * The host file a target name stands for, or undefined for an NBD export, which is used as it
 * is (never created, emptied or locked as a file). Throws protocolPath's UsageError for a
 * protocol that cannot create images.
 */
export function targetHostFile(filename: string): string | undefined {
  return nbdLocation(filename) === undefined ? protocolPath(filename) : undefined;
}

/**
 * bdrv_create of a `format` image at `filename` with `opts` (which hold the size): on an NBD
 * export through the format's createOnNbd, else on the host file the name gives.
 */
export async function createImage(format: CreatableFormat, filename: string, opts: QemuOpts, ctx: CreateContext): Promise<void> {
  const nbd = nbdLocation(filename);
  if (nbd !== undefined) {
    const onNbd = format.creation.createOnNbd;
    if (onNbd === undefined) throw new UnsupportedError(`tsimg cannot create a ${format.name} image on an NBD export`);
    await onNbd(nbd, opts);
    return;
  }
  await format.creation.create(protocolPath(filename), opts, ctx);
}

/**
 * qemu's rewording of an EFBIG failure of image creation ("The image size is too large for file
 * format ..."); other errors are returned unchanged.
 */
export function tooLarge(fmt: string, err: unknown, clusterSizeHint: boolean): unknown {
  if (err instanceof TsimgError && err.errno === 'EFBIG') {
    const hint = clusterSizeHint ? ' (try using a larger cluster size)' : '';
    return new LimitError(`The image size is too large for file format '${fmt}'${hint}`, { errno: 'EFBIG' });
  }
  return err;
}
