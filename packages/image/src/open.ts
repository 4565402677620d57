/**
 * openImage: opens an image file of any registered format (probing it like qemu when no format
 * is given), with its external data file and its backing chain, resolving backing names the
 * way qemu does (relative to the directory of the image that names them).
 */
import { realpath } from 'node:fs/promises';
import { FileDevice, TsimgError, UnsupportedError, type BlockDevice } from '@tsimg/raw';
import { DEFAULT_FORMATS, findFormat } from './formats.js';
import type { Image, ImageFormat, LayerContext, SnapshotSelector } from './image.js';
import { resolveRelative } from './paths.js';
import { probeFormat } from './probe.js';

/** Options for {@link openImage}. */
export interface OpenImageOptions {
  /** The format; probed from the file's first bytes when absent (qcow2 magic → qcow2, else raw). */
  format?: string;
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
  /** The formats to open and probe with (default: raw and qcow2). */
  formats?: readonly ImageFormat[];
}

/** qemu gives up on chains deeper than this (BDRV max backing depth is far lower in practice). */
export const MAX_BACKING_DEPTH = 256;

function rewrap(err: unknown, prefix: string): TsimgError {
  if (err instanceof TsimgError) {
    return new TsimgError(err.code, `${prefix}${err.message}`, { cause: err, errno: err.errno });
  }
  return new TsimgError('io', `${prefix}${err instanceof Error ? err.message : String(err)}`, { cause: err });
}

async function canonical(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return path;
  }
}

/** What one layer's open needs to know of the whole open. */
interface OpenContext {
  formats: readonly ImageFormat[];
  withBacking: boolean;
  fileOptions: { noFlush?: boolean; io?: 'async' | 'sync' };
}

/** Opens one layer; errors carry the reason only (the caller adds "Could not open ..."). */
async function openLayer(
  filename: string,
  format: ImageFormat | undefined,
  readOnly: boolean,
  seen: string[],
  octx: OpenContext,
  top?: Pick<OpenImageOptions, 'snapshot' | 'log' | 'unmap'>,
): Promise<Image> {
  const fileOptions = top !== undefined ? octx.fileOptions : {};
  const file = await FileDevice.open(filename, { readOnly, ...fileOptions });
  const opened: BlockDevice[] = [];
  try {
    let fmt = format;
    if (fmt === undefined) {
      const first = new Uint8Array(Math.min(2048, file.size()));
      if (first.length > 0) await file.read(0, first);
      const name = probeFormat(first, octx.formats);
      fmt = findFormat(octx.formats, name);
      if (fmt === undefined) throw new UnsupportedError(`image format '${name}' is not supported by tsimg`);
    }
    const ctx: LayerContext = {
      filename,
      readOnly,
      snapshot: top?.snapshot,
      log: top?.log,
      unmap: top?.unmap ?? false,
      openFile: async (name) => {
        const dev = await FileDevice.open(name, { readOnly, ...fileOptions });
        opened.push(dev);
        return dev;
      },
      openBacking: async (stored, formatName) => {
        if (!octx.withBacking) return undefined;
        const name = resolveRelative(filename, stored);
        const real = await canonical(name);
        if (seen.includes(real)) {
          throw new TsimgError('format', `Backing file '${stored}' creates an infinite loop.`, { errno: 'EINVAL' });
        }
        if (seen.length >= MAX_BACKING_DEPTH) {
          throw new TsimgError('limit', `Backing chain is deeper than ${MAX_BACKING_DEPTH} images`, { errno: 'EINVAL' });
        }
        let bfmt: ImageFormat | undefined;
        if (formatName !== undefined && formatName !== '') {
          bfmt = findFormat(octx.formats, formatName);
          if (bfmt === undefined) {
            throw new UnsupportedError(`Could not open backing file: Unknown driver '${formatName}'`, { errno: 'EINVAL' });
          }
        }
        try {
          const backing = await openLayer(name, bfmt, true, [...seen, real], octx);
          opened.push(backing);
          return backing;
        } catch (err) {
          throw rewrap(err, 'Could not open backing file: ');
        }
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
 * Opens `filename` as an image. Errors read like qemu's: `Could not open 'NAME': reason`
 * (e.g. `Could not open 'a.qcow2': Could not open backing file: Could not open 'b': No such
 * file or directory`).
 */
export async function openImage(filename: string, options: OpenImageOptions = {}): Promise<Image> {
  const readOnly = options.readOnly ?? true;
  const formats = options.formats ?? DEFAULT_FORMATS;
  const octx: OpenContext = { formats, withBacking: options.backing ?? true, fileOptions: { noFlush: options.noFlush, io: options.io } };
  try {
    let format: ImageFormat | undefined;
    if (options.format !== undefined) {
      format = findFormat(formats, options.format);
      if (format === undefined) throw new UnsupportedError(`Unknown driver '${options.format}'`, { errno: 'EINVAL' });
    }
    return await openLayer(filename, format, readOnly, [await canonical(filename)], octx, options);
  } catch (err) {
    // qemu opens the image first and loads the snapshot afterwards: no "Could not open" there.
    if (err instanceof TsimgError && err.message.startsWith('Failed to load snapshot')) throw err;
    throw rewrap(err, `Could not open '${filename}': `);
  }
}
