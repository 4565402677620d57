/**
 * Preallocation during create: qemu's preallocate_co (L2 tables and data clusters linked in
 * guest order, through qcow2_alloc_host_offset) for `metadata` and for images with a data file,
 * and the falloc/full branch of qcow2_co_truncate (one refcount area, then every data cluster)
 * — replayed on the in-memory layout.
 */
import { BDRV_REQUEST_MAX_BYTES, BDRV_SECTOR_SIZE, INT_MAX, truncateWithPreallocation } from '@tsimg/raw';
import type { ResolvedQcow2CreateOptions } from './create-options.js';
import type { Layout } from './layout.js';
import { drainL2, type CreateTarget, type ZeroFill } from './output.js';

/** One creation run: the options, the layout, and the devices it ends up in. */
export interface CreateRun {
  readonly o: ResolvedQcow2CreateOptions;
  readonly lay: Layout;
  readonly file: CreateTarget;
  readonly dataFile?: CreateTarget;
  /** The virtual size as a number. */
  readonly size: number;
}

/** qemu's "no offset yet" (INV_OFFSET). */
const INV = -1;

/** What one qcow2_alloc_host_offset call did. */
interface HostAllocation {
  hostOffset: number;
  bytes: number;
  metas: { guest: number; host: number; nbClusters: number }[];
}

/** qcow2_alloc_host_offset on a fresh image (no copied clusters, no in-flight requests). */
function allocHostOffset(run: CreateRun, offset: number, bytes: number): HostAllocation {
  const lay = run.lay;
  const cs = lay.cs;
  let start = offset;
  let remaining = bytes;
  let clusterOffset = INV;
  let hostOffset = INV;
  let cur = 0;
  const metas: HostAllocation['metas'] = [];
  for (;;) {
    if (hostOffset === INV && clusterOffset !== INV) hostOffset = clusterOffset;
    start += cur;
    remaining -= cur;
    if (clusterOffset !== INV) clusterOffset += cur;
    if (remaining === 0) break;
    cur = remaining;
    // handle_copied: only looks up (and so allocates) the L2 table
    lay.l2For(start);
    // handle_alloc
    const into = start % cs;
    let nb = Math.ceil((into + cur) / cs);
    nb = Math.min(nb, lay.l2Size - (Math.floor(start / cs) % lay.l2Size), Math.floor(BDRV_REQUEST_MAX_BYTES / cs));
    let alloc: number;
    if (run.dataFile) {
      alloc = start - into;
    } else if (clusterOffset === INV) {
      alloc = lay.allocClusters(nb * cs);
    } else {
      alloc = clusterOffset - (clusterOffset % cs);
      nb = lay.allocClustersAt(alloc, nb);
    }
    if (nb === 0) break;
    const nbBytes = Math.min(cur + into, nb * cs);
    clusterOffset = alloc + into;
    cur = Math.min(cur, nbBytes - into);
    metas.push({ guest: start - into, host: alloc, nbClusters: Math.ceil((into + cur) / cs) });
  }
  return { hostOffset, bytes: bytes - remaining, metas };
}

/** preallocate_co(0, size): L2 tables and data clusters, then the file length. */
export async function preallocateMetadata(run: CreateRun, mode: 'metadata' | 'falloc' | 'full'): Promise<void> {
  const lay = run.lay;
  let offset = 0;
  let bytes = run.size;
  let last: HostAllocation | undefined;
  while (bytes) {
    const want = Math.min(bytes, Math.floor(INT_MAX / lay.cs) * lay.cs);
    last = allocHostOffset(run, offset, want);
    for (const m of last.metas) lay.link(m.guest, m.host, m.nbClusters);
    bytes -= last.bytes;
    offset += last.bytes;
    await drainL2(lay, run.file, false);
  }
  if (!last) return;
  // qemu 7.2 extends the file to the end of the last allocated subcluster (measured: a
  // 1001 KiB image with 64 KiB clusters ends on a cluster boundary, its data file at 1 MiB;
  // with extended L2 entries both end on a 2 KiB boundary)
  const sub = run.o.extendedL2 ? lay.cs / 32 : lay.cs;
  const end = Math.ceil((last.hostOffset + last.bytes) / sub) * sub;
  if (run.dataFile) {
    const length = Math.ceil(run.dataFile.size() / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE;
    if (end > length) await truncateData(run, end, mode);
  } else {
    const length = Math.ceil(lay.fileLength / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE;
    if (end > length) lay.truncate(end);
  }
}

/** The data file's part of qcow2_co_truncate / preallocate_co. */
export async function truncateData(run: CreateRun, length: number, mode: 'off' | 'metadata' | 'falloc' | 'full'): Promise<void> {
  await truncateWithPreallocation(run.dataFile!, BigInt(length), mode === 'metadata' ? 'off' : mode);
}

/** The falloc/full branch of qcow2_co_truncate (no data file). */
export async function preallocateFull(run: CreateRun, mode: 'falloc' | 'full'): Promise<ZeroFill> {
  const lay = run.lay;
  const cs = lay.cs;
  let oldFileSize = Math.ceil(lay.fileLength / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE;
  const lastCluster = lay.lastCluster(oldFileSize);
  if ((lastCluster + 1) * cs < oldFileSize) {
    lay.truncate((lastCluster + 1) * cs);
  }
  oldFileSize = Math.ceil(oldFileSize / cs) * cs;
  let nbData = Math.ceil(run.size / cs);
  const nbL2 = Math.ceil(nbData / (cs / lay.l2EntrySize)) + 1;
  const allocationStart = lay.refcountArea(oldFileSize, nbData + nbL2, true, 0, 0);
  lay.allocClustersAt(allocationStart, nbData);
  const newFileSize = allocationStart + nbData * cs;
  lay.fileLength = Math.max(lay.fileLength, newFileSize);
  let host = allocationStart;
  let guest = 0;
  while (nbData) {
    const nb = Math.min(nbData, lay.l2Size - (Math.floor(guest / cs) % lay.l2Size));
    lay.link(guest, host, nb);
    guest += nb * cs;
    host += nb * cs;
    nbData -= nb;
    await drainL2(lay, run.file, false);
  }
  return { start: allocationStart, end: newFileSize, mode };
}
