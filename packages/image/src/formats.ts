/**
 * The formats tsimg opens and creates: raw, qcow2 and luks, each described to the generic
 * layer as an {@link ImageFormat}. A new format is one more entry here (or in a caller's own list).
 */
import {
  findExtension, hasLuksFormat, loadQcow2Metadata, LuksVolume, openQcow2Metadata, Qcow2Image, qcow2ImageInfo, QCOW2_MAGIC, INCOMPAT_DATA_FILE,
  secretAsUtf8,
} from '@tsimg/qcow2';
import { BDRV_SECTOR_SIZE, IoError, TsimgError, UnsupportedError, UsageError, type BlockDevice, NotFoundError } from '@tsimg/raw';
import type { Image, ImageFormat, LayerContext, SnapshotSelector } from './image.js';
import { RAW_CREATION } from './image-create.js';
import { createLuksImage, LUKS_OPTS, measureLuks } from './luks-create.js';
import { luksHeaderIo } from './luks-header-io.js';
import { LuksImage } from './luks-image.js';
import { QCOW2_CHECK } from './qcow2-check.js';
import { createQcow2Image, createQcow2OnNbd, measureQcow2Image, QCOW2_OPTS } from './qcow2-create.js';
import { RawImage } from './raw-image.js';

const SECTOR = BDRV_SECTOR_SIZE;

/** The raw format: no metadata, the file is the guest's disk. */
export const rawFormat: ImageFormat = {
  name: 'raw',
  async open(file: BlockDevice, ctx: LayerContext): Promise<Image> {
    if (ctx.snapshot !== undefined) {
      // bdrv_snapshot_load_tmp's words for a format without internal snapshots
      throw new UnsupportedError(
        "Failed to load snapshot: Block format 'raw' used by device '' does not support temporarily loading internal snapshots",
        { errno: 'ENOTSUP' },
      );
    }
    return new RawImage(ctx.filename, file);
  },
  async info(file: BlockDevice) {
    // The file driver counts whole sectors, rounding a partial last sector up.
    return { info: { 'dirty-flag': false, 'virtual-size': Math.ceil(file.size() / SECTOR) * SECTOR }, warnings: [] };
  },
  creation: RAW_CREATION,
};

/** The snapshot a selector names (qemu-img's `-s`/`-l`): an ID first, then a name. */
function findSnapshot<S extends { id: string; name: string }>(list: readonly S[], sel: SnapshotSelector): S | undefined {
  if (typeof sel === 'string') return list.find((s) => s.id === sel) ?? list.find((s) => s.name === sel);
  if (sel.id === undefined && sel.name === undefined) return undefined;
  return list.find((s) => (sel.id === undefined || s.id === sel.id) && (sel.name === undefined || s.name === sel.name));
}

/** The qcow2 format (@tsimg/qcow2), with its data file and backing image opened through `ctx`. */
export const qcow2Format: ImageFormat = {
  name: 'qcow2',
  probe(first: Uint8Array): boolean {
    if (first.length < 8) return false;
    const v = new DataView(first.buffer, first.byteOffset, first.byteLength);
    return v.getUint32(0) === QCOW2_MAGIC && v.getUint32(4) >= 2;
  },
  async open(file: BlockDevice, ctx: LayerContext): Promise<Image> {
    // qcow2_do_open's checks (shared with info and check) come before the data file and the
    // backing chain are opened, as in qemu.
    const password = keyPassword(ctx);
    const opened = await openQcow2Metadata(file, { readWrite: !ctx.readOnly, readTables: true, password });
    for (const [kind, text] of opened.log) ctx.log?.(text, kind);
    const info = opened.hdr;
    let l1Table: { offset: number; size: number } | undefined;
    if (ctx.snapshot !== undefined) {
      if (!ctx.readOnly) throw new UsageError('Failed to load snapshot: Device is not readonly', { errno: 'EINVAL' });
      const sn = findSnapshot(opened.snapshots, ctx.snapshot);
      if (sn === undefined) throw new NotFoundError("Failed to load snapshot: Can't find snapshot", { errno: 'ENOENT' });
      l1Table = { offset: sn.l1TableOffset, size: sn.l1Size };
    }
    let dataFile: BlockDevice | undefined;
    if ((info.header.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n) {
      const ext = findExtension(info.extensions, 'data-file');
      // qemu opens the data file by the name as stored: relative names are relative to the
      // working directory, not to the image (unlike backing files).
      if (ext !== undefined) dataFile = await ctx.openFile(ext.name);
    }
    const backing =
      info.backingFile !== undefined && info.backingFile !== ''
        ? await ctx.openBacking(info.backingFile, findExtension(info.extensions, 'backing-format')?.name)
        : undefined;
    return Qcow2Image.open<Image>(file, {
      filename: ctx.filename,
      readOnly: ctx.readOnly,
      dataFile,
      backing,
      opened,
      l1Table,
      log: ctx.log,
      unmap: ctx.unmap,
      holdBitmaps: ctx.holdBitmaps,
      password,
    });
  },
  async info(file: BlockDevice) {
    const meta = await loadQcow2Metadata(file);
    return { info: qcow2ImageInfo(meta), warnings: meta.warnings, sizeBytes: meta.sizeBytes };
  },
  creation: { options: QCOW2_OPTS, create: createQcow2Image, createOnNbd: createQcow2OnNbd, measure: measureQcow2Image },
  check: QCOW2_CHECK,
  writesCompressed: true,
  fastZeroes: true,
};

/** The passphrase of the layer's key secret, looked up when the format needs it. */
function keyPassword(ctx: LayerContext): (() => Uint8Array) | undefined {
  const id = ctx.keySecret;
  return id === undefined ? undefined : () => secretAsUtf8(ctx.secrets, id);
}

/** block_crypto_getlength: a file shorter than its header area has no size. */
function checkPayload(file: BlockDevice, volume: LuksVolume): void {
  if (file.size() < volume.payloadOffset) throw new IoError('Could not refresh total sector count: Input/output error', { errno: 'EIO' });
}

/** The luks format (qemu's block/crypto.c): a LUKS1 volume in the file. */
export const luksFormat: ImageFormat = {
  name: 'luks',
  probe: (first) => hasLuksFormat(first),
  async open(file: BlockDevice, ctx: LayerContext): Promise<Image> {
    if (ctx.snapshot !== undefined) {
      throw new UnsupportedError(
        "Failed to load snapshot: Block format 'luks' used by device '' does not support temporarily loading internal snapshots",
        { errno: 'ENOTSUP' },
      );
    }
    const password = keyPassword(ctx);
    if (password === undefined) throw new UsageError("Parameter 'key-secret' is required for cipher", { errno: 'EINVAL' });
    const pw = password();
    try {
      const volume = await LuksVolume.open(luksHeaderIo(file), pw);
      try {
        checkPayload(file, volume);
      } catch (err) {
        volume.dispose();
        throw err;
      }
      return new LuksImage(ctx.filename, file, volume);
    } finally {
      pw.fill(0);
    }
  },
  async info(file: BlockDevice) {
    const volume = await LuksVolume.open(luksHeaderIo(file), undefined);
    checkPayload(file, volume);
    const size = Math.floor(Math.max(0, file.size() - volume.payloadOffset) / SECTOR) * SECTOR;
    return {
      info: { 'dirty-flag': false, 'virtual-size': size, encrypted: true, 'format-specific': { type: 'luks' as const, data: volume.info() } },
      warnings: [],
    };
  },
  creation: { options: LUKS_OPTS, create: createLuksImage, measure: measureLuks },
};

/** The raw LUKS header area of `file`, for creation and amend. */
export { luksHeaderIo } from './luks-header-io.js';

/** The formats tsimg knows, in probing order. */
export const DEFAULT_FORMATS: readonly ImageFormat[] = [qcow2Format, luksFormat, rawFormat];

/** The format called `name` in `formats`. */
export function findFormat(formats: readonly ImageFormat[], name: string): ImageFormat | undefined {
  return formats.find((f) => f.name === name);
}
