/**
 * Rebuilding the refcount structure from the in-memory refcount table, as qemu 7.2's
 * rebuild_refcount_structure does (so the new refcount blocks and table land on the same
 * clusters as with qemu): refcount blocks are slices of the IMRT written into clusters the IMRT
 * says are free, then the refcount table is placed, its clusters accounted for (repeating while
 * the table grows), written, and finally the header is switched to it. The old structure is
 * left as leaked clusters for the following leak repair.
 *
 * Crash safety: nothing the image currently uses is overwritten; the header update comes last,
 * after a flush, and is itself flushed.
 */
import { type CheckImage, preWriteOverlapCheck } from './check-state.js';
import { type Imrt, type RefcountPass, CheckAbort } from './check-refcounts.js';

/** alloc_clusters_imrt: finds `count` free clusters from `state.firstFree` on, growing the IMRT. */
function allocClustersImrt(img: CheckImage, imrt: Imrt, count: number, state: { firstFree: number }): number {
  let cluster = state.firstFree;
  let firstGap = true;
  let contiguous = 0;
  for (; cluster < imrt.size && contiguous < count; cluster++) {
    if (!imrt.get(cluster)) {
      contiguous++;
      if (firstGap) {
        state.firstFree = cluster;
        firstGap = false;
      }
    } else if (contiguous) {
      contiguous = 0;
    }
  }
  if (contiguous < count) imrt.resize(cluster + count - contiguous);
  cluster -= contiguous;
  for (let i = 0; i < count; i++) imrt.set(cluster + i, 1);
  return cluster * img.clusterSize;
}

/** The reftable under construction (offsets as numbers; 0 = no block). */
interface Reftable {
  entries: number[];
}

/** rebuild_refcounts_write_refblocks: writes the refblocks covering [first, end). Returns whether the reftable grew. */
async function writeRefblocks(p: RefcountPass, first: number, end: number, rt: Reftable): Promise<boolean> {
  const { img, imrt } = p;
  const cs = img.clusterSize;
  const perBlock = 2 ** img.refcountBlockBits;
  const state = { firstFree: 0 };
  let grown = false;
  for (let cluster = first; cluster < end; cluster++) {
    if (!imrt.get(cluster)) continue;
    const index = Math.floor(cluster / perBlock);
    const start = index * perBlock;
    let offset: number;
    if (rt.entries.length > index && rt.entries[index]) {
      offset = rt.entries[index]!;
    } else {
      if (state.firstFree < start) state.firstFree = start;
      offset = allocClustersImrt(img, imrt, 1, state);
      const blockCluster = offset / cs;
      if (blockCluster >= end) end = blockCluster + 1;
      if (rt.entries.length <= index) {
        const n = Math.ceil(((index + 1) * 8) / cs) * (cs / 8);
        while (rt.entries.length < n) rt.entries.push(0);
        grown = true;
      }
      rt.entries[index] = offset;
    }
    if (!(await preWriteOverlapCheck(img, 0, offset, cs))) {
      img.log('ERROR writing refblock: Input/output error', 'report');
      throw new CheckAbort('EIO');
    }
    // The IMRT buffer is a whole number of clusters, so this slice is always complete.
    await img.file.write(offset, imrt.buf.slice(index * cs, index * cs + cs));
    cluster = start + perBlock - 1;
  }
  return grown;
}

/** rebuild_refcount_structure. */
export async function rebuildRefcountStructure(p: RefcountPass): Promise<void> {
  const { img, imrt } = p;
  const cs = img.clusterSize;
  img.refblockCache.clear();
  img.dirtyRefblocks.clear();
  const rt: Reftable = { entries: [] };
  try {
    await writeRefblocks(p, 0, imrt.size, rt);
    let offset = -1;
    let clusters = 0;
    let changed: boolean;
    do {
      clusters = Math.ceil((rt.entries.length * 8) / cs);
      offset = allocClustersImrt(img, imrt, clusters, { firstFree: 0 });
      const startCluster = offset / cs;
      changed = await writeRefblocks(p, startCluster, startCluster + clusters, rt);
    } while (changed);
    const table = new Uint8Array(rt.entries.length * 8);
    const v = new DataView(table.buffer);
    rt.entries.forEach((e, i) => v.setBigUint64(i * 8, BigInt(e)));
    if (!(await preWriteOverlapCheck(img, 0, offset, table.length))) {
      img.log('ERROR writing reftable: Input/output error', 'report');
      throw new CheckAbort('EIO');
    }
    await img.file.write(offset, table);
    await img.file.flush();
    const hdr = new Uint8Array(12);
    const hv = new DataView(hdr.buffer);
    hv.setBigUint64(0, BigInt(offset));
    hv.setUint32(8, clusters);
    await img.file.write(48, hdr);
    await img.file.flush();
    img.reftable = table;
    img.reftableOffset = offset;
    img.reftableSize = rt.entries.length;
    img.header.refcountTableOffset = offset;
    img.header.refcountTableClusters = clusters;
  } catch (err) {
    p.res.checkErrors++;
    if (err instanceof CheckAbort) throw err;
    img.log(`ERROR writing refcount structure: ${(err as Error).message}`, 'report');
    throw new CheckAbort('EIO');
  }
}
