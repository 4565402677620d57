/**
 * "Creating" an image on an NBD export, as qemu's bdrv_co_create_opts_simple does for protocol
 * drivers that cannot create: the export is opened, must already be large enough (NBD nodes
 * cannot grow), and its first sector is zeroed so no old header is probed afterwards.
 */
import { errorWithCode, TsimgError, UsageError } from '@tsimg/raw';
import type { NbdAddress } from './address.js';
import { NbdClient } from './client.js';

/** Prepares the export at `addr` to take a raw image of `size` bytes; qemu's messages. */
export async function createOnNbd(addr: NbdAddress, size: number): Promise<void> {
  let dev: NbdClient;
  try {
    dev = await NbdClient.connect(addr, { readOnly: false });
  } catch (err) {
    if (!(err instanceof TsimgError)) throw err;
    throw errorWithCode(err.code, `Protocol driver 'nbd' does not support image creation, and opening the image failed: ${err.message}`, {
      cause: err,
      errno: err.errno,
    });
  }
  try {
    // create_file_fallback_truncate: nbd_co_truncate's refusal when the export is smaller.
    if (dev.size() < size) throw new UsageError('Cannot grow NBD nodes', { errno: 'EINVAL' });
    // create_file_fallback_zero_first_sector
    const clear = Math.min(dev.size(), 512);
    if (clear > 0) await dev.writeZeroes(0, clear, { mayUnmap: true });
  } finally {
    await dev.close();
  }
}
