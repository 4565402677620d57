/**
 * A persistent dirty bitmap of an image as an NBD `qemu:dirty-bitmap:NAME` context (qemu-nbd's
 * -B): its bits read from the image, and read again after the export has written (a write
 * marks the image's enabled bitmaps dirty), with qemu's refusals when it cannot be exported.
 */
import { NotFoundError, UsageError } from '@tsimg/raw';
import type { Image, SourceBitmap } from '../image.js';
import type { NbdBitmap } from './export.js';

/** The run of equal bits starting at bit `first` (below `limit`), and whether they are set. */
function bitRun(data: Uint8Array, first: number, limit: number): { bits: number; set: boolean } {
  const bit = (i: number): boolean => ((data[i >>> 3] ?? 0) & (1 << (i & 7))) !== 0;
  const set = bit(first);
  const whole = set ? 0xff : 0x00;
  let i = first + 1;
  while (i < limit) {
    if ((i & 7) === 0) {
      // Whole bytes of the same bits at a time.
      let byte = i >>> 3;
      while (byte < data.length && data[byte] === whole && (byte + 1) * 8 <= limit) byte++;
      if (byte * 8 > i) {
        i = byte * 8;
        continue;
      }
    }
    if (bit(i) !== set) break;
    i++;
  }
  return { bits: Math.min(i, limit) - first, set };
}

/** The bitmap's status at `offset` from its serialized bits (bit k covers granule k). */
export function bitmapStatus(bm: SourceBitmap, offset: number, length: number): { length: number; dirty: boolean } {
  const g = 2 ** bm.granularityBits;
  const first = Math.floor(offset / g);
  const lastBit = Math.ceil((offset + length) / g);
  const run = bitRun(bm.data, first, lastBit);
  const end = Math.min(offset + length, (first + run.bits) * g);
  return { length: end - offset, dirty: run.set };
}

/**
 * The bitmap `name` of `image` for an export; refuses (as qemu's nbd_export_create and
 * bdrv_dirty_bitmap_check) a bitmap that is missing or inconsistent.
 */
export async function imageBitmapContext(image: Image, name: string): Promise<NbdBitmap> {
  const load = async (): Promise<SourceBitmap> => {
    const bm = image.readBitmap === undefined ? undefined : await image.readBitmap(name);
    if (bm === undefined) throw new NotFoundError(`Bitmap '${name}' is not found`);
    return bm;
  };
  let bits = await load();
  if (bits.inconsistent) {
    const err = new UsageError(`Bitmap '${name}' is inconsistent and cannot be used`, { errno: 'EINVAL' });
    throw Object.assign(err, { hint: 'Try block-dirty-bitmap-remove to delete this bitmap from disk' });
  }
  let stale = false;
  return {
    name,
    async status(offset, length) {
      if (stale) {
        stale = false;
        bits = await load();
      }
      return bitmapStatus(bits, offset, length);
    },
    dirtied() {
      stale = true;
    },
  };
}
