/**
 * Finding an image in a backing chain by name, as qemu's bdrv_find_backing_image does for
 * `qemu-img commit -b` and `qemu-img rebase -b`.
 */
import fs from 'node:fs';
import type { Image } from './image.js';
import { pathHasProtocol, resolveRelative } from './paths.js';

async function real(path: string): Promise<string | undefined> {
  try {
    return await fs.promises.realpath(path);
  } catch {
    return undefined;
  }
}

/**
 * bdrv_find_backing_image: the image below `top` whose name `name` is. For each image that
 * has a backing image, `name` is taken relative to that image (unless absolute) and compared,
 * both canonicalized, with its backing image's name; a name with a protocol prefix is
 * compared as written. Returns the image and its depth (1: top's backing image).
 */
export async function findBackingImage(top: Image, name: string): Promise<{ image: Image; depth: number } | undefined> {
  let depth = 0;
  for (let cur: Image = top; cur.backing !== undefined; cur = cur.backing) {
    depth++;
    const below = cur.backing;
    if (pathHasProtocol(name) || pathHasProtocol(below.filename)) {
      if (name === below.filename) return { image: below, depth };
      continue;
    }
    const wanted = await real(resolveRelative(cur.filename, name));
    if (wanted === undefined) continue;
    if ((await real(below.filename)) === wanted) return { image: below, depth };
  }
  return undefined;
}
