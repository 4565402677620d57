/**
 * qemu's BDRV_O_SNAPSHOT (qemu-nbd -s): the image opened read-only under a temporary qcow2
 * overlay that takes every write, deleted once opened so that nothing is left behind
 * (bdrv_append_temp_snapshot, whose file is also removed at close).
 */
import { mkdtemp, rm } from 'node:fs/promises';

import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createQcow2 } from '@tsimg/qcow2';
import { createFile, FileDevice } from '@tsimg/raw';
import type { Image } from './image.js';
import { openImage, type OpenImageOptions } from './open.js';

/**
 * Opens `image` (already open, read-only) for writing through a temporary qcow2 overlay whose
 * backing file is `name` with the image's format. The base is opened again by the overlay; the
 * caller closes `image` when it no longer needs it.
 */
export async function openTemporaryOverlay(image: Image, name: string, options: Pick<OpenImageOptions, 'onWarning'> = {}): Promise<Image> {
  const dir = await mkdtemp(join(tmpdir(), 'vl.'));
  const path = join(dir, 'overlay.qcow2');
  try {
    await createFile(path);
    const file = await FileDevice.open(path);
    try {
      // A host path is absolute so the overlay finds it; a protocol name (nbd://) is kept.
      const backing = /^[a-z+]+:/.test(name) || name.startsWith('json:') ? name : resolve(name);
      await createQcow2(file, { size: BigInt(image.size()), backingFile: backing, backingFormat: image.format });
    } finally {
      await file.close();
    }
    return await openImage(path, { format: 'qcow2', readOnly: false, onWarning: options.onWarning });
  } finally {
    // Unlinked while open: the overlay lives as long as its open file.
    await rm(dir, { recursive: true, force: true });
  }
}


