/**
 * The question "which persistent bitmaps does this source image carry?", asked of any image
 * through an optional method rather than by testing its format class, so that the generic
 * commands (measure) stay format-blind.
 */
import type { Image } from '@tsimg/image';
import { AUTOCLEAR_BITMAPS, findExtension, loadBitmapDirectory, Qcow2Image, type MeasureBitmap } from '@tsimg/qcow2';

/**
 * The capability an image format offers when its images can carry persistent bitmaps (each
 * with its name and granularity in bytes):
 * undefined when this image cannot (qcow2 v2), else every bitmap qemu would load — none when
 * the autoclear bit says a program without bitmap support touched the image.
 */
export interface HasPersistentBitmaps {
  listBitmaps(): Promise<MeasureBitmap[] | undefined>;
}

function hasPersistentBitmaps(image: Image): image is Image & HasPersistentBitmaps {
  return typeof (image as Partial<HasPersistentBitmaps>).listBitmaps === 'function';
}

/**
 * The persistent bitmaps qemu would load from `image`, or undefined when its format has none
 * (raw, qcow2 v2): `measure` then prints no "bitmaps size" line.
 */
export async function sourceBitmaps(image: Image): Promise<MeasureBitmap[] | undefined> {
  if (hasPersistentBitmaps(image)) return image.listBitmaps();
  // house: replaced when Image gains listBitmaps — until Qcow2Image implements the method
  // above, its answer is computed here from the image's header, exactly as it will be there.
  if (!(image instanceof Qcow2Image) || image.header.version < 3) return undefined;
  const ext = findExtension(image.extensions, 'bitmaps');
  if (ext === undefined || (image.header.autoclearFeatures & AUTOCLEAR_BITMAPS) === 0n) return [];
  const entries = await loadBitmapDirectory(image.file, ext, image.clusterSize, image.size());
  return entries.map((e) => ({ name: e.name, granularity: 2 ** e.granularityBits }));
}
