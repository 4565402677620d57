/**
 * Opening an image for `qemu-img check` whatever its format: through the format's own check
 * when it has one, else opened as any image is (a luks volume is unlocked, say) so that the
 * open fails as qemu's bdrv_open would, before "This image format does not support checks".
 */
import type { BlockDevice } from '@tsimg/raw';
import type { CheckOpenContext, CheckSession, ImageFormat } from './image.js';
import { keptOpen } from './kept-open.js';

/**
 * Opens `file` (which stays the caller's to close) as `format` for a check: a session, or
 * undefined when the format has no check. Throws the typed error of the open.
 */
export async function openForCheckAs(format: ImageFormat, file: BlockDevice, ctx: CheckOpenContext): Promise<CheckSession | undefined> {
  if (format.check !== undefined) return format.check.open(file, ctx);
  const img = await format.open(keptOpen(file), {
    filename: ctx.filename,
    readOnly: !ctx.writable,
    unmap: false,
    keySecret: ctx.keySecret,
    secrets: ctx.secrets,
    // Only formats with a check name further files; these open none.
    openFile: (name) => Promise.reject(new Error(`unexpected file '${name}' opened for a check`)),
    openBacking: async () => undefined,
  });
  await img.close();
  return undefined;
}
