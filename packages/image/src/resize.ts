/**
 * resizeImage: changing the virtual size of an open image of any format, as qemu-img resize
 * does through blk_truncate (exact): the generic checks here, the format's own work through
 * its {@link Image.truncate}.
 */
import { BDRV_MAX_LENGTH, IoError, ReadOnlyError, UnsupportedError, UsageError } from '@tsimg/raw';
import type { Image, TruncateOptions } from './image.js';

/**
 * Options for {@link resizeImage}. A `check` replaces its own refusals (size, shrink,
 * preallocation only when growing) with the caller's, run where qemu-img runs them.
 */
export interface ResizeImageOptions extends TruncateOptions {
  /**
   * Allow the image to shrink (qemu-img's `--shrink`): everything past the new end is lost.
   * Without it a smaller size is refused before anything changes.
   */
  shrink?: boolean;
}

/**
 * Resizes `image` (opened writable; for qemu's locks open it with `resize: true`) to `size`
 * bytes. Growing may preallocate the new area (`off`, `metadata`, `falloc`, `full`, as the
 * format supports them); shrinking needs `shrink` and cannot preallocate. Errors are qemu's
 * (e.g. qcow2's "The new size must be a multiple of 512").
 *
 * @example
 * ```ts
 * const img = await openImage('disk.qcow2', { readOnly: false, resize: true });
 * try {
 *   await resizeImage(img, img.size() + 2 ** 30, { preallocation: 'metadata' });
 * } finally {
 *   await img.close();
 * }
 * ```
 */
export async function resizeImage(image: Image, size: number, options: ResizeImageOptions = {}): Promise<void> {
  const preallocation = options.preallocation ?? 'off';
  if (image.readOnly) throw new ReadOnlyError('Image is read-only', { errno: 'EACCES' });
  const check = options.check ?? ((): void => checkResize(image.size(), size, preallocation, options.shrink === true));
  const truncateOptions: TruncateOptions = { preallocation, warn: options.warn, check };
  if (image.truncate !== undefined) {
    await image.truncate(size, truncateOptions);
    return;
  }
  check();
  if (preallocation !== 'off') {
    throw new UnsupportedError(`Unsupported preallocation mode '${preallocation}'`, { errno: 'ENOTSUP' });
  }
  await image.resize(size);
}

/** img_resize's refusals, and bdrv_co_truncate's limits, for `size` on an image of `current` bytes. */
function checkResize(current: number, size: number, preallocation: string, shrink: boolean): void {
  // Sizes past 2^53 arrive rounded; the formats refuse them (qemu's limits are lower anyway).
  if (!Number.isInteger(size)) throw new UsageError(`invalid size ${size}`, { errno: 'EINVAL' });
  if (size < 0) throw new UsageError('Image size cannot be negative', { errno: 'EINVAL' });
  if (size <= current && preallocation !== 'off') {
    throw new UsageError('Preallocation can only be used for growing images', { errno: 'EINVAL' });
  }
  if (size < current && !shrink) {
    throw new UsageError('Shrinking an image deletes all data beyond its new end: pass the shrink option', { errno: 'EINVAL' });
  }
  if (size > BDRV_MAX_LENGTH) throw new IoError(`offset(${size}) exceeds maximum(${BDRV_MAX_LENGTH})`, { errno: 'EIO' });
}
