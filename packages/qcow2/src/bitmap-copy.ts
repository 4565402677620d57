/**
 * Persistent bitmaps across `convert --bitmaps`: listing a source's bitmaps and copying them
 * into a new qcow2 target.
 */
import { UnsupportedError } from '@tsimg/raw';
import { findExtension } from './header.js';
import { loadBitmapDirectory, BME_FLAG_IN_USE } from './bitmap-directory.js';
import type { Qcow2Image } from './image.js';

/** The persistent bitmaps of an open qcow2 image, with whether each is inconsistent. */
export async function loadImageBitmaps(image: Qcow2Image): Promise<{ name: string; inconsistent: boolean }[]> {
  const ext = findExtension(image.extensions, 'bitmaps');
  if (!ext) return [];
  const entries = await loadBitmapDirectory(image.file, ext, image.clusterSize, image.size());
  return entries.map((e) => ({ name: e.name, inconsistent: (e.flags & BME_FLAG_IN_USE) !== 0 }));
}

/** Copies every consistent persistent bitmap of `source` into `target`. */
export async function copyPersistentBitmaps(source: Qcow2Image, target: Qcow2Image): Promise<void> {
  const list = (await loadImageBitmaps(source)).filter((b) => !b.inconsistent);
  void target;
  if (list.length > 0) throw new UnsupportedError('copying persistent bitmaps is not supported yet');
}
