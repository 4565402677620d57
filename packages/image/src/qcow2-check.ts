/**
 * `qemu-img check` of a qcow2 layer: the image opened for qcow2_co_check (openForCheck of
 * @tsimg/qcow2, below the engine), its external data file and backing chain opened as bdrv_open
 * opens them for the check, and after a repair what closing qemu's read/write node does.
 */
import {
  AUTOCLEAR_BITMAPS, type CheckImage, checkImage, finishRepair, findExtension, INCOMPAT_DATA_FILE, openForCheck, Qcow2Image, secretAsUtf8,
} from '@tsimg/qcow2';
import { type BlockDevice, FileDevice, FormatError } from '@tsimg/raw';
import { checkHttpBaseDirectory } from './http-location.js';
import type { CheckOpenContext, CheckSession, FormatCheck } from './image.js';
import { keptOpen } from './kept-open.js';
import { resolveRelative } from './paths.js';
import { dataFileLock, openingPermissions } from './permissions.js';

async function backingName(img: CheckImage): Promise<string> {
  const h = img.header;
  const bytes = new Uint8Array(h.backingFileSize);
  if (h.backingFileSize > 0) await img.file.read(h.backingFileOffset, bytes);
  return new TextDecoder().decode(bytes);
}

/**
 * qemu-img check -r opens the image read/write, so its persistent bitmaps are loaded and marked
 * in use at the open and stored anew at the close, after the repair (no allocation comes
 * between: the marking is in place). The check works below the engine, so an engine open
 * and close of the repaired file does that part. (Images with an external data file keep
 * their bitmaps as they are.)
 */
async function storeBitmapsAgain(file: BlockDevice, img: CheckImage, filename: string): Promise<void> {
  const h = img.header;
  if (h.version < 3 || (h.autoclearFeatures & AUTOCLEAR_BITMAPS) === 0n || (h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n) return;
  if (findExtension(img.extensions, 'bitmaps') === undefined) return;
  // The check's caller closes the file itself afterwards.
  const engine = await Qcow2Image.open(keptOpen(file), { filename, readOnly: false });
  await engine.close();
}

/** Opens the data file and the backing chain the check needs, into `held`. */
async function openChildren(img: CheckImage, ctx: CheckOpenContext, held: BlockDevice[]): Promise<void> {
  const { path, node, onWarning } = ctx;
  const finalLocks: (() => void)[] = [];
  const dataFileExt = img.dataFile ? findExtension(img.extensions, 'data-file') : undefined;
  if (dataFileExt) {
    // qemu opens the external data file too; its failure fails the open
    const df = await FileDevice.open(resolveRelative(path, dataFileExt.name), { readOnly: !ctx.writable, lock: dataFileLock(openingPermissions(node)), onWarning });
    held.push(df); // held, as qemu holds its data child, until the check ends
    finalLocks.push(() => df.setPermissions(dataFileLock(node)));
  }
  const info = img.header.backingFileOffset > 0 ? await backingName(img) : undefined;
  if (info !== undefined && info !== '') {
    // img_open opens the whole chain: a missing or broken backing file fails the check too.
    const fmtName = findExtension(img.extensions, 'backing-format')?.name;
    const bfmt = fmtName === 'raw' || fmtName === 'qcow2' ? fmtName : undefined;
    // A json:-named curl node has no directory for a relative name (qemu fails the open).
    if (ctx.http !== undefined) checkHttpBaseDirectory(ctx.http, info);
    const backingPath = resolveRelative(path, info);
    // A read-only top's permissions are what qemu gives a backing child of a check (its
    // user shares everything): read, sharing read and write-unchanged on a qcow2 file.
    const backing = await ctx.openBacking(backingPath, bfmt).catch((err: unknown) => {
      // openImage words its errors for a top-level image ("Could not open 'b': reason");
      // qemu names a backing file's failure once, after "Could not open backing file: ".
      let msg = err instanceof Error ? err.message : String(err);
      const prefix = `Could not open '${backingPath}': `;
      if (msg.startsWith(prefix)) msg = msg.slice(prefix.length);
      throw new FormatError(`Could not open backing file: ${msg}`, { cause: err });
    });
    held.push(backing);
  }
  for (const update of finalLocks) update(); // as openImage's second step
}

/** Opens `file` for qcow2_co_check; see the module comment. */
async function openQcow2Check(file: BlockDevice, ctx: CheckOpenContext): Promise<CheckSession> {
  const keySecret = ctx.keySecret;
  const password = keySecret === undefined ? undefined : () => secretAsUtf8(ctx.secrets, keySecret);
  const img = await openForCheck(file, ctx.log, ctx.writable, password);
  const held: BlockDevice[] = [];
  const close = async (): Promise<void> => {
    for (const dev of held.splice(0).reverse()) await dev.close().catch(() => undefined);
  };
  try {
    await openChildren(img, ctx, held);
  } catch (err) {
    await close();
    throw err;
  }
  return {
    check: (fix) => checkImage(img, fix),
    finishRepair: async () => {
      await finishRepair(img).catch(() => undefined);
      await storeBitmapsAgain(file, img, ctx.filename).catch(() => undefined);
    },
    close,
  };
}

/** qcow2's check (qcow2_co_check). */
export const QCOW2_CHECK: FormatCheck = { open: openQcow2Check };
