/**
 * Emptying an open image (qcow2_make_empty, what qemu-img commit does to the top afterwards):
 * a v3 image without snapshots, bitmaps, LUKS or a data file is reset to a header, a refcount
 * table, one refcount block and an empty L1 table (make_completely_empty); any other image
 * has every cluster discarded.
 */
import { AUTOCLEAR_BITMAPS, CRYPT_LUKS, INCOMPAT_DIRTY } from '../format/types.js';
import { findExtension } from '../format/header.js';
import { REFTABLE_ENTRY_SIZE } from '../format/refcount.js';
import { beforeChange, rewriteHeader, writeFeatureFields } from './header-write.js';
import { newAllocator } from './open.js';
import { flushAll, virtualSize, type EngineState } from './state.js';
import { discardClusters } from './zero-discard.js';
import { CorruptError } from '@tsimg/raw';

/** qcow2_make_empty. */
export async function makeEmpty(s: EngineState): Promise<void> {
  const cs = s.clusterSize;
  const l1Clusters = Math.ceil(s.l1Size / (cs / 8));
  const refcountBlockEntries = (cs * 8) / 2 ** s.header.refcountOrder;
  const bitmaps = findExtension(s.extensions, 'bitmaps');
  const hasBitmaps = bitmaps !== undefined && bitmaps.nbBitmaps > 0 && (s.header.autoclearFeatures & AUTOCLEAR_BITMAPS) !== 0n;
  await beforeChange(s);
  if (
    s.version >= 3 &&
    s.header.nbSnapshots === 0 &&
    !hasBitmaps &&
    3 + l1Clusters <= refcountBlockEntries &&
    s.header.cryptMethod !== CRYPT_LUKS &&
    s.dataFile === undefined
  ) {
    await makeCompletelyEmpty(s, l1Clusters);
    return;
  }
  // The fallback discards every cluster (QCOW2_DISCARD_SNAPSHOT: passed to the file).
  const end = virtualSize(s);
  const step = Math.floor(0x7fff_ffff / cs) * cs;
  for (let offset = 0; offset < end; offset += step) await discardClusters(s, offset, Math.min(step, end - offset), true);
}

/**
 * make_completely_empty, in qemu's order: the caches written and dropped, the dirty bit set
 * (the refcounts are about to be wrong), the L1 table and the clusters after the header zeroed,
 * the header pointed at a one-cluster refcount table at cluster 1 and an L1 table at cluster 3,
 * the refcount block at cluster 2 entered, the first clusters allocated, the image marked clean
 * (qcow2_mark_clean: caches, then the whole header rewritten) and the file truncated.
 */
async function makeCompletelyEmpty(s: EngineState, l1Clusters: number): Promise<void> {
  const cs = s.clusterSize;
  const fail = (err: unknown): never => {
    // As qemu ejects the BDS: the in-memory refcounts no longer match the file.
    s.broken = true;
    throw err;
  };
  await flushAll(s);
  s.l2Cache.clear();
  s.refcountCache.clear();
  s.header.incompatibleFeatures |= INCOMPAT_DIRTY;
  await writeFeatureFields(s);
  try {
    await s.file.writeZeroes(s.l1Offset, l1Clusters * cs);
    s.l1Bytes.fill(0);
    s.protectedMetadata.activeL2.reset([]);
    await s.file.writeZeroes(cs, (2 + l1Clusters) * cs);
    const fields = new Uint8Array(20);
    const v = new DataView(fields.buffer);
    v.setBigUint64(0, BigInt(3 * cs));
    v.setBigUint64(8, BigInt(cs));
    v.setUint32(16, 1);
    await s.file.write(40, fields);
    await s.file.flush();
    s.l1Offset = 3 * cs;
    s.header.l1TableOffset = 3 * cs;
    s.header.refcountTableOffset = cs;
    s.header.refcountTableClusters = 1;
    const entry = new Uint8Array(REFTABLE_ENTRY_SIZE);
    new DataView(entry.buffer).setBigUint64(0, BigInt(2 * cs));
    await s.file.write(cs, entry);
    await s.file.flush();
  } catch (err) {
    fail(err);
  }
  const reftable = new Float64Array(cs / REFTABLE_ENTRY_SIZE);
  reftable[0] = 2 * cs;
  s.protectedMetadata.refblocks.reset([2 * cs]);
  s.allocator = newAllocator(s, reftable);
  const first = await s.allocator.allocClusters(3 * cs + s.l1Size * 8).catch(fail);
  if (first !== 0) fail(new CorruptError('First cluster in emptied image is in use', { errno: 'EIO' }));
  // qcow2_mark_clean
  s.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
  s.markedDirty = false;
  await flushAll(s);
  await rewriteHeader(s, 'Failed to empty the image');
  await s.file.resize((3 + l1Clusters) * cs);
}
