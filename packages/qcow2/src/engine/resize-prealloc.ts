/**
 * The preallocation paths of growing an image (qcow2_co_truncate): `metadata` maps the new
 * range to host clusters without writing data (preallocate_co), and `falloc` / `full` without
 * a data file reserve a contiguous data area after new refcount structures at the end of the
 * file and map the new range onto it, in qemu's order so the file is laid out as qemu lays it.
 */
import { INT_MAX, IoError, TsimgError, truncateWithPreallocation, UnsupportedError, errorWithCode, strerror } from '@tsimg/raw';
import type { L2Meta } from './cow.js';
import { markDirtyIfLazy } from './header-write.js';
import { dataDevice, type EngineState } from './state.js';
import { allocHostOffset, linkL2, performCow } from './write.js';

/** How a growing resize preallocates (qemu's PreallocMode). */
export type ResizePreallocation = 'off' | 'metadata' | 'falloc' | 'full';

/** qemu's error_setg_errno: `context: strerror(errno)`, keeping the error's class. */
export function errnoContext(err: unknown, context: string): unknown {
  if (!(err instanceof TsimgError)) return err;
  return errorWithCode(err.code, `${context}: ${strerror(err.errno ?? 'EIO')}`, { cause: err, errno: err.errno });
}

/** error_prepend: `prefix` before the error's own message. */
export function prependContext(err: unknown, prefix: string): unknown {
  if (!(err instanceof TsimgError)) return err;
  return errorWithCode(err.code, `${prefix}${err.message}`, { cause: err, errno: err.errno });
}

/** qcow2_alloc_cluster_link_l2 with its COW (qcow2_handle_l2meta with link_l2). */
async function linkWithCow(s: EngineState, m: L2Meta): Promise<void> {
  await performCow(s, m);
  await markDirtyIfLazy(s);
  await linkL2(s, m);
}

/**
 * preallocate_co: maps guest `[offset, end)` to host clusters (in place where they are ours)
 * without writing data, then extends the data file to the last byte mapped — with `mode`'s
 * preallocation for `falloc` / `full` (an external data file), a plain truncate for `metadata`.
 */
export async function preallocateMapping(s: EngineState, offset: number, end: number, mode: ResizePreallocation): Promise<void> {
  const cs = s.clusterSize;
  let bytes = end - offset;
  let host = 0;
  let cur = 0;
  while (bytes > 0) {
    cur = Math.min(bytes, Math.floor(INT_MAX / cs) * cs);
    let mapped;
    try {
      mapped = await allocHostOffset(s, offset, cur);
    } catch (err) {
      throw errnoContext(err, 'Allocating clusters failed');
    }
    cur = mapped.bytes;
    host = mapped.host;
    try {
      for (const m of mapped.metas) await linkWithCow(s, { ...m, prealloc: true });
    } catch (err) {
      throw errnoContext(err, 'Mapping clusters failed');
    }
    bytes -= cur;
    offset += cur;
  }
  // The file must hold every mapped cluster, or reads after its end would fail.
  const dev = dataDevice(s);
  if (host + cur > Math.ceil(dev.size() / 512) * 512) {
    await truncateWithPreallocation(dev, BigInt(host + cur), mode === 'metadata' || mode === 'off' ? 'off' : mode);
  }
}

/**
 * The `falloc` / `full` path of qcow2_co_truncate without a data file: refcount structures for
 * the new data clusters (and the L2 tables that will map them) are built after the last used
 * cluster, the data clusters right after them, the file grown over them with `mode`, and the
 * new guest range `[oldLength, size)` linked to them slice by slice. `zeroWrite` (a backing
 * file reaches past the old end) makes the new clusters read as data, i.e. zeroes. Returns
 * whether the zero-write request is satisfied.
 */
export async function preallocateClusters(
  s: EngineState,
  oldLength: number,
  size: number,
  mode: 'falloc' | 'full',
  zeroWrite: boolean,
): Promise<boolean> {
  const geo = s.geo;
  const cs = geo.clusterSize;
  const alloc = s.allocator!;
  let oldFileSize = Math.ceil(s.file.size() / 512) * 512; // bdrv_getlength: whole sectors
  const last = await alloc.lastUsedCluster(oldFileSize);
  oldFileSize = (last + 1) * cs;
  let nbNew = (Math.ceil(size / cs) - Math.floor(oldLength / cs));
  // An overestimate: the L2 tables may land anywhere, they only must not need new refblocks.
  const nbL2 = Math.ceil(nbNew / geo.l2Entries) + 1;
  let start: number;
  try {
    start = await alloc.refcountArea(oldFileSize, nbNew + nbL2, true, 0, 0);
  } catch (err) {
    throw errnoContext(err, 'Failed to resize refcount structures');
  }
  let got: number;
  try {
    got = await alloc.allocClustersAt(start, nbNew);
  } catch (err) {
    throw errnoContext(err, 'Failed to allocate data clusters');
  }
  if (got !== nbNew) throw new IoError('Failed to allocate data clusters: the new area is not free', { errno: 'EIO' });
  try {
    // A grown file reads as zeroes, which is what a zero-write request asks for.
    await truncateWithPreallocation(s.file, BigInt(start + nbNew * cs), mode);
  } catch (err) {
    await alloc.freeClusters(start, nbNew * cs).catch(() => undefined);
    throw prependContext(err, 'Failed to resize underlying file: ');
  }
  let host = start;
  let guest = oldLength;
  while (nbNew > 0) {
    const index = Math.floor((guest % geo.l2Span) / cs);
    const n = Math.min(nbNew, geo.l2Entries - index);
    const cowStart = guest % cs;
    guest -= cowStart;
    const m: L2Meta = {
      guestStart: guest,
      hostStart: host,
      nbClusters: n,
      cowStartFrom: 0,
      cowStartTo: cowStart,
      cowEndFrom: n * cs,
      cowEndTo: n * cs,
      keepOld: false,
      prealloc: !zeroWrite,
    };
    try {
      await linkWithCow(s, m);
    } catch (err) {
      await alloc.freeClusters(host, nbNew * cs).catch(() => undefined);
      throw errnoContext(err, 'Failed to update L2 tables');
    }
    guest += n * cs;
    host += n * cs;
    nbNew -= n;
  }
  return zeroWrite;
}

/** qcow2_co_truncate's first check: the modes a qcow2 image can grow with. */
export function checkPreallocation(mode: string): asserts mode is ResizePreallocation {
  if (mode !== 'off' && mode !== 'metadata' && mode !== 'falloc' && mode !== 'full') {
    throw new UnsupportedError(`Unsupported preallocation mode '${mode}'`, { errno: 'ENOTSUP' });
  }
}
