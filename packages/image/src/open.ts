/**
 * openImage: opens an image file of any registered format (probing it like qemu when no format
 * is given), with its external data file and its backing chain, resolving backing names the
 * way qemu does (relative to the directory of the image that names them).
 */
import fs from 'node:fs';
import {
  BLK_PERM_CONSISTENT_READ, BLK_PERM_RESIZE, BLK_PERM_WRITE, BLK_PERM_WRITE_UNCHANGED, FileDevice, TsimgError, UnsupportedError, UsageError, type BlockDevice, FormatError, LimitError, type LockingMode,
} from '@tsimg/raw';
import { DEFAULT_FORMATS, findFormat } from './formats.js';
import type { Image, ImageFormat, LayerContext, SnapshotSelector } from './image.js';
import { prefixedError } from './open-error.js';
import {
  checkHttpBaseDirectory, type FileResolver, type HttpLocation, httpImageName, isHttpProtocol, openHostFile, setHostFilePermissions,
} from './http-location.js';
import { type ImageLocation, locateImage } from './location.js';
import type { NbdAddress } from './nbd/address.js';
import { NbdClient } from './nbd/client.js';
import { resolveRelative } from './paths.js';
import {
  backingNodePermissions, dataFileLock, imageFileLock, NO_PERMISSIONS, type NodePermissions, openingPermissions,
  topNodePermissions,
} from './permissions.js';
import { probeFormat } from './probe.js';

/** Options for {@link openImage}. */
export interface OpenImageOptions {
  /** The format; probed from the file's first bytes when absent (qcow2 magic → qcow2, else raw). */
  format?: string;
  /**
   * The name is a host path already (`file.filename` of block options), not a name to parse for
   * `file:` / `json:` / protocol prefixes, which qemu applies only to filename arguments.
   */
  hostPath?: boolean;
  /**
   * The image is on a web server: the name is its URL (or the text naming it), read through
   * these options (`--image-opts file.driver=https,...`). Read-only.
   */
  http?: HttpLocation;
  /** Files found by name before the host's (see FileResolver): the image's, its backing files'. */
  files?: FileResolver;
  /** Open read-only (default true). Backing images are always read-only. */
  readOnly?: boolean;
  /** Open the backing chain (default true); without it unallocated ranges read as zeroes. */
  backing?: boolean;
  /**
   * Read an internal snapshot of a qcow2 image instead of its active layer (read-only):
   * `{ id, name }` match like qemu-img's `-l snapshot.id=...,snapshot.name=...`; a string
   * matches an ID first, then a name (qemu-img's `-s`/`-l NAME`).
   */
  snapshot?: SnapshotSelector;
  /** Receives the lines qemu would print while repairing a dirty image opened read/write. */
  log?: (line: string, kind?: 'report' | 'raw') => void;
  /**
   * qemu's cache mode `unsafe` (qemu-img convert's default for its target): flushes of the
   * image's files are skipped (FileDevice `noFlush`). Backing images are read-only anyway.
   */
  noFlush?: boolean;
  /**
   * FileDevice `io` for the image's own files: `'sync'` does their I/O on the calling thread.
   * For convert -c, whose target gets one small write per cluster, that saves a thread-pool
   * round trip per write (256 MiB -c zstd: 0.55 → 0.48 s CPU).
   */
  io?: 'async' | 'sync';
  /**
   * qemu's `discard=unmap` for the image itself (not its backing files): clusters that guest
   * requests free are discarded in the file too (see Qcow2OpenOptions.unmap).
   */
  unmap?: boolean;
  /**
   * The top's persistent bitmaps on a read/write open: loaded, marked in use and stored at the
   * close, as qemu does (default true); false for an open that only looks and writes nothing.
   */
  holdBitmaps?: boolean;
  /** The formats to open and probe with (default: raw and qcow2). */
  formats?: readonly ImageFormat[];
  /**
   * qemu's force-share (`-U`): take no permission away from others (read-only opens only; with
   * `readOnly: false` the open fails with qemu's "force-share=on can only be used with
   * read-only images"). See permissions.ts for what each file locks.
   */
  forceShare?: boolean;
  /** qemu-img's BDRV_O_NO_SHARE (convert's sources): others may not write while it is open. */
  noShare?: boolean;
  /** qemu-img's BDRV_O_RESIZE: the image's user may resize it. */
  resize?: boolean;
  /** qemu-img's BDRV_O_NO_IO: only metadata is read, so no file asks for consistent read. */
  noIo?: boolean;
  /** qemu's `file.locking` for the image's own file (backing and data files: 'auto'). */
  locking?: LockingMode;
  /** Receives FileDevice's lock warnings (see FileDeviceOptions.onWarning). */
  onWarning?: (message: string) => void;
  /**
   * Open the backing image `depth` layers below the top read/write too (1: the top's backing
   * file), with the top's file options and `unmap`: qemu-img commit's base, which qemu reopens
   * read/write (bdrv_reopen_set_read_only) and writes through the commit job — and resizes, with
   * `resize`, when it is smaller than the top. It is locked with the job's permissions.
   */
  writableBacking?: { depth: number; resize?: boolean };
  /** Secret data by id (qemu's `--object secret,...`): where encrypted formats find their keys. */
  secrets?: ReadonlyMap<string, Uint8Array>;
  /** The top image's key secret id (`encrypt.key-secret` / `key-secret`; image options give it too). */
  keySecret?: string;
  /** Key secret ids of the backing images by depth (1: the top's backing file). */
  backingKeySecrets?: readonly (string | undefined)[];
}

/** qemu gives up on chains deeper than this (BDRV max backing depth is far lower in practice). */
export const MAX_BACKING_DEPTH = 256;

async function canonical(path: string): Promise<string> {
  try {
    return await fs.promises.realpath(path);
  } catch {
    return path;
  }
}

/** What every layer's open needs to know of the whole open. */
interface OpenContext {
  formats: readonly ImageFormat[];
  withBacking: boolean;
  onWarning?: (message: string) => void;
  files?: FileResolver;
  /** The permission updates to make once the whole chain is open (see openImage). */
  finalLocks: (() => void)[];
  secrets?: ReadonlyMap<string, Uint8Array>;
  backingKeySecrets?: readonly (string | undefined)[];
  /** The depth of the backing layer opened read/write (OpenImageOptions.writableBacking). */
  writableBacking?: { depth: number; resize: boolean; fileOptions: Layer['fileOptions']; unmap: boolean };
}

/** What only the top layer gets: its open options (backing images are plain read-only opens). */
type TopOptions = Pick<OpenImageOptions, 'snapshot' | 'log' | 'unmap' | 'holdBitmaps' | 'keySecret'>;

/** A layer being opened: its name, mode, the chain above it (canonical names) and file options. */
interface Layer {
  filename: string;
  readOnly: boolean;
  /** Canonical names of this layer and the layers above it, for loop detection. */
  seen: readonly string[];
  fileOptions: { noFlush?: boolean; io?: 'async' | 'sync'; locking?: LockingMode };
  /** The permissions qemu gives this layer's node (permissions.ts). */
  perms: NodePermissions;
  /** The layer's file is this NBD export, not a host file. */
  nbd?: NbdAddress;
  /** Where the file is when it is on a web server (`filename` is then its URL). */
  http?: HttpLocation;
  /** The layer is a bare protocol node (driver=http, say): no format node over the file. */
  bare?: boolean;
}

/** The format of a layer opened without one: probed from its first bytes, like qemu. */
async function probeLayer(file: BlockDevice, formats: readonly ImageFormat[]): Promise<ImageFormat> {
  const first = new Uint8Array(Math.min(2048, file.size()));
  if (first.length > 0) await file.read(0, first);
  const name = probeFormat(first, formats);
  const fmt = findFormat(formats, name);
  if (fmt === undefined) throw new UnsupportedError(`image format '${name}' is not supported by tsimg`);
  return fmt;
}

/**
 * Opens the backing image `stored` names below `layer` (with its recorded format, or probed):
 * resolved relative to the layer's file, refusing loops and chains deeper than qemu allows.
 */
async function openBackingLayer(
  layer: Layer,
  stored: string,
  formatName: string | undefined,
  octx: OpenContext,
): Promise<Image> {
  let name: string;
  let nbd: NbdAddress | undefined;
  let http: HttpLocation | undefined;
  // bdrv_get_full_backing_filename fails before any "Could not open backing file".
  if (layer.http !== undefined) checkHttpBaseDirectory(layer.http, stored);
  try {
    // A name relative to a URL is a URL too (path_combine keeps "http://host/dir/").
    ({ path: name, nbd, http } = locateImage(resolveRelative(layer.filename, stored)));
  } catch (err) {
    throw prefixedError('Could not open backing file: ', err);
  }
  const real = await canonical(name);
  if (layer.seen.includes(real)) {
    throw new FormatError(`Backing file '${stored}' creates an infinite loop.`, { errno: 'EINVAL' });
  }
  if (layer.seen.length >= MAX_BACKING_DEPTH) {
    throw new LimitError(`Backing chain is deeper than ${MAX_BACKING_DEPTH} images`, { errno: 'EINVAL' });
  }
  let fmt: ImageFormat | undefined;
  if (formatName !== undefined && formatName !== '') {
    fmt = findFormat(octx.formats, formatName);
    if (fmt === undefined) {
      throw new UnsupportedError(`Could not open backing file: Unknown driver '${formatName}'`, { errno: 'EINVAL' });
    }
  }
  try {
    const wb = octx.writableBacking;
    if (wb !== undefined && wb.depth === layer.seen.length) {
      // The commit job's base (mirror_start_job's target): written (and resized when it must
      // grow), sharing reads and writes but not resizes; what reads it, reads through the job.
      const perms: NodePermissions = {
        node: { perm: BLK_PERM_WRITE | (wb.resize ? BLK_PERM_RESIZE : 0), shared: BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED | BLK_PERM_WRITE },
        writable: true,
        noIo: false,
        forceShare: false,
      };
      const writable: Layer = { filename: name, readOnly: false, seen: [...layer.seen, real], fileOptions: wb.fileOptions, perms, nbd, http };
      return await openLayer(writable, fmt, octx, { unmap: wb.unmap });
    }
    let perms = backingNodePermissions(layer.perms);
    if (wb !== undefined && layer.seen.length < wb.depth) {
      // An image between the top and the commit's base: the job shares only writes on it
      // (mirror_start_job's "intermediate node"), so nobody else may read it consistently.
      perms = { ...perms, node: { perm: perms.node.perm, shared: perms.node.shared & ~BLK_PERM_CONSISTENT_READ } };
    }
    return await openLayer({ filename: name, readOnly: true, seen: [...layer.seen, real], fileOptions: {}, perms, nbd, http }, fmt, octx);
  } catch (err) {
    throw prefixedError('Could not open backing file: ', err);
  }
}

/**
 * Opens one layer with `format` (probed when undefined); errors carry the reason only (the
 * caller adds "Could not open ..."). On failure every file the layer opened is closed again.
 */
async function openLayer(layer: Layer, format: ImageFormat | undefined, octx: OpenContext, top?: TopOptions): Promise<Image> {
  const { filename, readOnly, fileOptions, perms } = layer;
  // Locked like qemu: opened sharing everything, given its permissions once the format is known.
  // bdrv_apply_auto_read_only: the curl driver opens nothing for writing.
  if (layer.http !== undefined && !readOnly) throw new UsageError('curl driver does not support writes', { errno: 'EACCES' });
  const file = layer.nbd
    ? await NbdClient.connect(layer.nbd, { readOnly })
    : await openHostFile(filename, layer.http, { readOnly, ...fileOptions, lock: NO_PERMISSIONS, onWarning: octx.onWarning }, octx.files, octx.secrets);
  const opened: BlockDevice[] = [];
  try {
    const fmt = format ?? (await probeLayer(file, octx.formats));
    setHostFilePermissions(file, imageFileLock(openingPermissions(perms), fmt.name));
    octx.finalLocks.push(() => setHostFilePermissions(file, imageFileLock(perms, fmt.name)));
    const ctx: LayerContext = {
      // qemu's name for the node: a web server's file may get a json: name (httpImageName).
      filename: layer.http !== undefined ? httpImageName(layer.http, layer.bare ? undefined : fmt.name) : filename,
      readOnly,
      snapshot: top?.snapshot,
      log: top?.log,
      unmap: top?.unmap ?? false,
      holdBitmaps: top?.holdBitmaps,
      keySecret: top?.keySecret ?? octx.backingKeySecrets?.[layer.seen.length - 1],
      secrets: octx.secrets,
      openFile: async (name) => {
        const dataOptions = { noFlush: fileOptions.noFlush, io: fileOptions.io, onWarning: octx.onWarning };
        const dev = await FileDevice.open(name, { readOnly, ...dataOptions, lock: dataFileLock(openingPermissions(perms)) });
        opened.push(dev);
        octx.finalLocks.push(() => dev.setPermissions(dataFileLock(perms)));
        return dev;
      },
      openBacking: async (stored, formatName) => {
        if (!octx.withBacking) return undefined;
        const backing = await openBackingLayer(layer, stored, formatName, octx);
        opened.push(backing);
        return backing;
      },
    };
    return await fmt.open(file, ctx);
  } catch (err) {
    for (const dev of opened.reverse()) await dev.close().catch(() => undefined);
    await file.close().catch(() => undefined);
    throw err;
  }
}

/**
 * Opens `filename` as an image, locking its files in qemu's two steps: each file as its node
 * is opened (openingPermissions), then all of them with the permissions the command's use
 * asks for (the BlockBackend attaching; errors then name no backing file). Errors read like qemu's: `Could not open 'NAME': reason`
 * (e.g. `Could not open 'a.qcow2': Could not open backing file: Could not open 'b': No such
 * file or directory`).
 */
export async function openImage(filename: string, options: OpenImageOptions = {}): Promise<Image> {
  const readOnly = options.readOnly ?? true;
  const formats = options.formats ?? DEFAULT_FORMATS;
  const octx: OpenContext = {
    formats, withBacking: options.backing ?? true, onWarning: options.onWarning, files: options.files, finalLocks: [], secrets: options.secrets,
  };
  try {
    // `file:NAME` and `json:{...}` name the file as qemu's protocol parsing does.
    const loc: ImageLocation =
      options.http !== undefined ? { path: options.http.url, http: options.http } : options.hostPath ? { path: filename } : locateImage(filename);
    octx.backingKeySecrets = options.backingKeySecrets ?? loc.backingKeySecrets;
    // A bare protocol node (driver=file, nbd, http) reads the file as it is: raw's view.
    const formatName = options.format ?? (loc.format === 'file' || loc.format === 'nbd' || isHttpProtocol(loc.format) ? 'raw' : loc.format);
    let format: ImageFormat | undefined;
    if (formatName !== undefined) {
      format = findFormat(formats, formatName);
      if (format === undefined) throw new UnsupportedError(`Unknown driver '${formatName}'`, { errno: 'EINVAL' });
    }
    const flags = { write: !readOnly, resize: options.resize, noIo: options.noIo, noShare: options.noShare, forceShare: options.forceShare };
    const top: Layer = {
      filename: loc.path,
      readOnly,
      seen: [await canonical(loc.path)],
      // Only the image's own files get the file options; backing files are plain reads.
      fileOptions: { noFlush: options.noFlush, io: options.io, locking: options.locking ?? loc.locking },
      perms: topNodePermissions(flags),
      nbd: loc.nbd,
      http: loc.http,
      bare: isHttpProtocol(loc.format),
    };
    if (options.writableBacking !== undefined) {
      const fileOptions = { noFlush: options.noFlush, io: options.io };
      const { depth, resize } = options.writableBacking;
      octx.writableBacking = { depth, resize: resize ?? false, fileOptions, unmap: options.unmap ?? false };
    }
    const image = await openLayer(top, format, octx, { ...options, keySecret: options.keySecret ?? loc.keySecret });
    try {
      for (const update of octx.finalLocks) update();
    } catch (err) {
      await image.close().catch(() => undefined);
      throw err;
    }
    return image;
  } catch (err) {
    // qemu opens the image first and loads the snapshot afterwards: no "Could not open" there.
    if (err instanceof TsimgError && err.message.startsWith('Failed to load snapshot')) throw err;
    throw prefixedError(`Could not open '${filename}': `, err);
  }
}
