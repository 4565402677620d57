/**
 * Resizing an open image, a port of qcow2_co_truncate (with the part of bdrv_co_truncate that
 * decides to zero the new area): growing the L1 table and preallocating as asked
 * (resize-prealloc.ts), or discarding what lies beyond the new end, shrinking the tables and the
 * file; then the header's size. Persistent bitmaps are carried over around it (resize-bitmaps.ts).
 */
import { BDRV_MAX_LENGTH, IoError, LimitError, TsimgError, UnsupportedError, UsageError } from '@tsimg/raw';
import { QCOW_MAX_L1_SIZE } from '../format/types.js';
import { checkBitmapsForResize, truncateHeldBitmaps } from './held-bitmaps.js';
import { beforeChange } from './header-write.js';
import { growL1, shrinkL1 } from './l1-table.js';
import {
  checkPreallocation, errnoContext, preallocateClusters, preallocateMapping, type ResizePreallocation,
} from './resize-prealloc.js';
import { flushAll, virtualSize, type EngineState } from './state.js';
import { writeGuest } from './write.js';
import { discardClusters, zeroize } from './zero-discard.js';

export type { ResizePreallocation } from './resize-prealloc.js';

/** Options of a resize (qemu's bdrv_co_truncate arguments). */
export interface ResizeOptions {
  /** How the new area is preallocated when growing (default `off`). */
  preallocation?: ResizePreallocation;
  /** Receives qemu's warnings (e.g. a file tail that could not be cut off). */
  warn?: (message: string) => void;
  /**
   * The caller's refusals (qemu-img resize's checks), run after the bitmaps were loaded as
   * qemu's read-write open loads them; a throw fails the resize, the bitmaps are stored again.
   */
  check?: () => void;
}

/**
 * qemu-img resize's work on an open image: the caller's refusals, the truncate, and the held
 * bitmaps resized with the image (the close stores them, as qemu's does).
 */
export async function resize(s: EngineState, size: number, options: ResizeOptions = {}): Promise<void> {
  options.check?.();
  if (!Number.isInteger(size) || size < 0) throw new UsageError(`invalid size ${size}`, { errno: 'EINVAL' });
  await truncate(s, size, options);
  truncateHeldBitmaps(s, virtualSize(s));
}

/** qcow2_co_truncate (exact), with bdrv_co_truncate's checks and zero-write decision. */
async function truncate(s: EngineState, size: number, options: ResizeOptions): Promise<void> {
  const prealloc = options.preallocation ?? 'off';
  if (size > BDRV_MAX_LENGTH) throw new IoError(`offset(${size}) exceeds maximum(${BDRV_MAX_LENGTH})`, { errno: 'EIO' });
  checkPreallocation(prealloc);
  if (size % 512 !== 0) throw new UsageError('The new size must be a multiple of 512', { errno: 'EINVAL' });
  if (s.version < 3 && s.header.nbSnapshots > 0) {
    throw new UnsupportedError("Can't resize a v2 image which has snapshots", { errno: 'ENOTSUP' });
  }
  checkBitmapsForResize(s);
  const old = virtualSize(s);
  // bdrv_co_truncate: a backing file reaching past the old end must not show through.
  const zeroWrite = size > old && s.backing !== undefined && s.backing.size() > old;
  await beforeChange(s);
  const newL1Size = Math.ceil(size / s.geo.l2Span);
  if (!Number.isSafeInteger(size) && newL1Size <= QCOW_MAX_L1_SIZE / 8) {
    // Only large clusters get that far; offsets are numbers here, exact to 2^53 bytes.
    throw new LimitError('tsimg handles images up to 2^53 bytes', { errno: 'EFBIG' });
  }
  let mode = prealloc;
  if (size < old) {
    if (mode !== 'off') throw new UsageError("Preallocation can't be used for shrinking an image", { errno: 'EINVAL' });
    await shrink(s, size, old, newL1Size, options.warn);
  } else {
    try {
      await growL1(s, newL1Size, true);
    } catch (err) {
      throw errnoContext(err, 'Failed to grow the L1 table');
    }
    // data-file-raw images keep their metadata preallocated, so the data file reads the same.
    if (s.dataRaw && mode === 'off') mode = 'metadata';
  }
  let zeroPending = zeroWrite;
  if (mode === 'off') {
    if (s.dataFile !== undefined) await s.dataFile.resize(size);
  } else if (mode === 'metadata' || s.dataFile !== undefined) {
    await preallocateMapping(s, old, size, mode);
  } else if (await preallocateClusters(s, old, size, mode, zeroWrite)) {
    zeroPending = false;
  }
  if (zeroPending) await zeroNewArea(s, old, size);
  if (mode !== 'off') {
    try {
      await flushAll(s);
    } catch (err) {
      throw errnoContext(err, 'Failed to flush the preallocated area to disk');
    }
  }
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(size));
  try {
    await s.file.write(24, b);
    // The device has taken the new size: if the flush fails, it still reaches the disk with a
    // later flush, so the image must not go on believing in the old size.
    s.header.size = size;
    await s.file.flush();
  } catch (err) {
    throw errnoContext(err, 'Failed to update the image size');
  }
}

/**
 * The end of qcow2_co_truncate for a zero-write request: zero flags from the first subcluster
 * boundary on, explicit zeroes for the unaligned head.
 */
async function zeroNewArea(s: EngineState, old: number, size: number): Promise<void> {
  const scs = s.geo.subclusterSize;
  const zeroStart = Math.ceil(old / scs) * scs;
  if (size > zeroStart) {
    try {
      // The zero flag needs v3; v2 could only discard, which would show the backing file.
      if (s.version < 3) throw new UnsupportedError('Operation not supported', { errno: 'ENOTSUP' });
      await zeroize(s, zeroStart, size - zeroStart, false);
    } catch (err) {
      throw errnoContext(err, 'Failed to zero out new clusters');
    }
  }
  if (zeroStart > old) {
    try {
      await writeGuest(s, old, new Uint8Array(Math.min(zeroStart, size) - old));
    } catch (err) {
      throw errnoContext(err, 'Failed to zero out the new area');
    }
  }
}

/** The shrinking half: the clusters past the end go, then the tables, then the file's tail. */
async function shrink(s: EngineState, size: number, old: number, newL1Size: number, warn?: (message: string) => void): Promise<void> {
  const cs = s.clusterSize;
  const start = Math.ceil(size / cs) * cs;
  try {
    if (start < old) await discardClusters(s, start, old - start, true);
  } catch (err) {
    throw errnoContext(err, 'Failed to discard cropped clusters');
  }
  try {
    await shrinkL1(s, newL1Size);
  } catch (err) {
    throw errnoContext(err, 'Failed to reduce the number of L2 tables');
  }
  const alloc = s.allocator!;
  try {
    await alloc.shrinkReftable();
  } catch (err) {
    throw errnoContext(err, 'Failed to discard unused refblocks');
  }
  const fileSize = Math.ceil(s.file.size() / 512) * 512; // bdrv_getlength counts whole sectors
  let last: number;
  try {
    last = await alloc.lastUsedCluster(fileSize);
  } catch (err) {
    throw errnoContext(err, 'Failed to find the last cluster');
  }
  if ((last + 1) * cs < fileSize) {
    try {
      // Everything written so far must reach the file before its tail goes away.
      await flushAll(s);
      await s.file.resize((last + 1) * cs);
    } catch (err) {
      if (!(err instanceof TsimgError)) throw err;
      warn?.(`Failed to truncate the tail of the image: ${err.message}`);
    }
  }
}
