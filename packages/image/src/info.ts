/**
 * What `qemu-img info` reports about an image, gathered as a typed mirror of qemu 7.2's QAPI
 * `ImageInfo`: the keys are QAPI's own names, and every object is built in QAPI schema order
 * (qemu's JSON key order derives from it; the CLI's formatter does the rest).
 *
 * Like qemu-img info (which opens with BDRV_O_NO_IO | BDRV_O_NO_BACKING), this reads only
 * metadata, through the format's `info`: it never opens the backing file or the data file.
 */
import { FormatError, TsimgError, UnsupportedError, LimitError, type LockingMode, UsageError } from '@tsimg/raw';
import { findFormat, DEFAULT_FORMATS } from './formats.js';
import type { FormatInfo, ImageFormat } from './image.js';
import type { ImageInfo, ImageInfoResult } from './info-types.js';
import { type FileResolver, type HostFile, httpImageName, isHttpProtocol, openHostFile, setHostFilePermissions } from './http-location.js';
import { locateImage, locateImageFromOptions, type ImageLocation } from './location.js';
import { NbdClient } from './nbd/client.js';
import { fullBackingFilename } from './paths.js';
import { FOREIGN_FORMATS, probeFormat } from './probe.js';
import { openError } from './open-error.js';
import { imageFileLock, NO_PERMISSIONS, topNodePermissions } from './permissions.js';

/** Options for {@link collectImageInfo}. */
export interface CollectInfoOptions {
  /** Image format; probed when absent (qcow2 by magic, else raw). */
  format?: string;
  /** Flattened block options (`--image-opts`); the name is then only used in messages. */
  blockOptions?: ReadonlyMap<string, string>;
  /** The formats to open and probe with (default: raw and qcow2). */
  formats?: readonly ImageFormat[];
  /** qemu's -U: lock nothing (info opens with BDRV_O_NO_IO: qcow2 files lock 201 203 otherwise). */
  forceShare?: boolean;
  /** qemu's `file.locking`; `file.locking` in `blockOptions` wins. */
  locking?: LockingMode;
  /** Receives FileDevice's lock warnings. */
  onWarning?: (message: string) => void;
  /** Files found by name before the host's (see FileResolver). */
  files?: FileResolver;
  /** `--object secret` data, for the curl driver's `*-secret` options. */
  secrets?: ReadonlyMap<string, Uint8Array>;
}

/** bdrv_getlength refuses more than INT64_MAX bytes; info reports that after a successful open. */
const MAX_INFO_SIZE = (1n << 63n) - 1n;

/** Opens a host file read-only; a directory or device gets qemu's file-driver message. */
async function openFile(loc: ImageLocation, lock: Pick<CollectInfoOptions, 'locking' | 'onWarning' | 'files' | 'secrets'>): Promise<HostFile> {
  const path = loc.path;
  try {
    // Locked once the format is known (qemu's permissions depend on it).
    return await openHostFile(path, loc.http, { readOnly: true, lock: NO_PERMISSIONS, locking: lock.locking, onWarning: lock.onWarning }, lock.files, lock.secrets);
  } catch (err) {
    if (err instanceof TsimgError && (err.errno === 'EISDIR' || err.code === 'unsupported')) {
      throw new UsageError(`'file' driver requires '${path}' to be a regular file`);
    }
    throw err;
  }
}

/** The format's members with the generic ones around them, in QAPI schema order. */
function composeInfo(filename: string, format: string, actualSize: number | undefined, part: FormatInfo): ImageInfo {
  const info: ImageInfo = { filename, format, 'virtual-size': 0 };
  for (const [key, value] of Object.entries(part) as [keyof FormatInfo, unknown][]) {
    if (key === 'virtual-size' && actualSize !== undefined) info['actual-size'] = actualSize;
    (info as unknown as Record<string, unknown>)[key] = value;
    if (key === 'backing-filename') {
      const full = fullBackingFilename(filename, value as string);
      if (full !== undefined) info['full-backing-filename'] = full;
    }
  }
  return info;
}

/**
 * Gathers the ImageInfo of one image, as `qemu-img info` does for each image it reports. `name`
 * is a filename (plain, `file:` or `json:`), or the text of `blockOptions` when those are given.
 * Errors carry qemu's "Could not open '<name>': ..." wording.
 */
export async function collectImageInfo(name: string, options: CollectInfoOptions = {}): Promise<ImageInfoResult> {
  const formats = options.formats ?? DEFAULT_FORMATS;
  let loc: ImageLocation;
  try {
    loc = options.blockOptions ? locateImageFromOptions(options.blockOptions) : locateImage(name);
  } catch (err) {
    throw openError(name, err);
  }
  let requested = options.format ?? loc.format;
  // The bare protocol driver reads the file as it is: raw's view.
  if (requested === 'file' || requested === 'nbd' || isHttpProtocol(requested)) requested = 'raw';
  if (requested !== undefined && findFormat(formats, requested) === undefined) {
    throw openError(
      name,
      new UnsupportedError(
        FOREIGN_FORMATS.has(requested) ? `image format '${requested}' is not supported by tsimg` : `Unknown driver '${requested}'`,
      ),
    );
  }
  const filename = loc.path;
  let dev: HostFile;
  try {
    dev = loc.nbd
      ? await NbdClient.connect(loc.nbd)
      : await openFile(loc, { files: options.files, locking: loc.locking ?? options.locking, onWarning: options.onWarning, secrets: options.secrets });
  } catch (err) {
    throw openError(name, err);
  }
  let result: ImageInfoResult;
  let size: bigint;
  try {
    let format = requested;
    if (format === undefined) {
      const first = new Uint8Array(2048);
      await dev.read(0, first);
      format = probeFormat(first, formats);
      if (findFormat(formats, format) === undefined) {
        throw new UnsupportedError(`image format '${format}' is not supported by tsimg`);
      }
    }
    // qemu-img info: BDRV_O_NO_IO | BDRV_O_NO_BACKING, read-only.
    setHostFilePermissions(dev, imageFileLock(topNodePermissions({ write: false, noIo: true, forceShare: options.forceShare }), format === 'file' ? 'raw' : format));
    const actual = await dev.allocatedSize();
    const { info, warnings, sizeBytes } = await findFormat(formats, format)!.info(dev);
    // raw's bdrv_get_info asks its file, and the nbd driver has none: no dirty flag then.
    if (loc.nbd !== undefined && format === 'raw') delete info['dirty-flag'];
    size = sizeBytes ?? BigInt(info['virtual-size']);
    // A web server's file named by json: (strong curl options) has no directory for backing names.
    const name = loc.http !== undefined ? httpImageName(loc.http, isHttpProtocol(loc.format) ? undefined : format) : filename;
    result = { info: composeInfo(name, options.format ?? loc.format ?? format, actual, info), warnings };
    // raw's get_info asks its file, and the curl driver has none: no dirty-flag over HTTP.
    if (loc.http !== undefined && findFormat(formats, format)!.name === 'raw') delete result.info['dirty-flag'];
  } catch (err) {
    throw openError(name, err);
  } finally {
    await dev.close();
  }
  if (size > MAX_INFO_SIZE) {
    throw new LimitError(`Can't get image size '${filename}': File too large`, { errno: 'EFBIG' });
  }
  return result;
}

/** Options for {@link collectImageInfoList}. */
export interface CollectInfoListOptions extends CollectInfoOptions {
  /** Follow the backing chain (`--backing-chain`). */
  chain?: boolean;
  /** Called with each image's warnings as soon as it is opened (qemu prints them then). */
  onWarnings?: (warnings: string[]) => void;
}

/**
 * qemu-img's collect_image_info_list: the image, then (with `chain`) each backing file by its
 * full name and recorded format, refusing loops and unresolvable relative names.
 */
export async function collectImageInfoList(filename: string, options: CollectInfoListOptions = {}): Promise<ImageInfo[]> {
  const seen = new Set<string>();
  const out: ImageInfo[] = [];
  let next: string | undefined = filename;
  let format = options.format;
  while (next !== undefined) {
    if (seen.has(next)) throw new FormatError(`Backing file '${next}' creates an infinite loop.`);
    seen.add(next);
    const { info, warnings } = await collectImageInfo(next, {
      format,
      formats: options.formats,
      blockOptions: out.length === 0 ? options.blockOptions : undefined,
      forceShare: options.forceShare,
      locking: out.length === 0 ? options.locking : undefined,
      onWarning: options.onWarning,
    });
    if (warnings.length > 0) options.onWarnings?.(warnings);
    out.push(info);
    next = undefined;
    format = undefined;
    if (options.chain) {
      if (info['full-backing-filename'] !== undefined) {
        next = info['full-backing-filename'];
      } else if (info['backing-filename'] !== undefined) {
        throw new FormatError(
          `Could not determine absolute backing filename, but backing filename '${info['backing-filename']}' present`,
        );
      }
      if (info['backing-filename-format'] !== undefined) format = info['backing-filename-format'];
    }
  }
  return out;
}
