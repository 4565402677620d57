/**
 * Changing an open image's version (amend's compat): qemu 7.2's qcow2_upgrade (v2 → v3: the
 * snapshot table rewritten with v3's extra data, then the header) and qcow2_downgrade (v3 →
 * v2: its refusals, zero clusters expanded, the v3-only features dropped, then the header).
 */
import { TsimgError, UnsupportedError, errorWithCode } from '@tsimg/raw';
import { decodeL1Entry, decodeL2Entry } from '../format/l2-entry.js';
import { snapshotDiskSize, snapshotVmStateSize } from '../format/snapshot.js';
import { INCOMPAT_COMPRESSION, INCOMPAT_DIRTY } from '../format/types.js';
import { markClean, rewriteHeaderSynced } from './header-write.js';
import type { StatusCallback } from './refcount-order.js';
import { writeSnapshots } from './snapshot-table.js';
import { tableView, virtualSize, type EngineState } from './state.js';
import { expandZeroClusters } from './zero-expand.js';

/** Bytes of extra data v3 requires of a snapshot entry (the 64-bit VM state and disk sizes). */
const V3_SNAPSHOT_EXTRA = 16;

/** Sets the version in memory and writes the header; restores the old one if that fails. */
async function switchVersion(s: EngineState, version: 2 | 3): Promise<void> {
  const old = s.header.version;
  s.header.version = version;
  s.version = version;
  try {
    await rewriteHeaderSynced(s);
  } catch (err) {
    s.header.version = old;
    s.version = old;
    throw err;
  }
}

/** qcow2_upgrade to v3. */
export async function upgrade(s: EngineState, status: StatusCallback): Promise<void> {
  status(0, 2);
  if (s.snapshots.some((sn) => sn.extraDataSize < V3_SNAPSHOT_EXTRA)) {
    try {
      await writeSnapshots(s, s.snapshots);
    } catch (err) {
      throw withContext(err, 'Failed to update the snapshot table');
    }
  }
  status(1, 2);
  if (s.header.headerLength < 112) s.header.headerLength = 112;
  await switchVersion(s, 3);
  status(2, 2);
}

/** qcow2_has_compressed_clusters over the active layer. */
async function hasCompressedClusters(s: EngineState): Promise<boolean> {
  for (let i = 0; i < s.l1Size; i++) {
    const { l2Offset } = decodeL1Entry(s.l1, i * 8);
    if (l2Offset === 0) continue;
    const view = tableView(await s.l2Cache.get(l2Offset));
    for (let j = 0; j < s.geo.l2Entries; j++) {
      if (decodeL2Entry(view, j * s.geo.entrySize, s.geo).kind === 'compressed') return true;
    }
  }
  return false;
}

/** qcow2_downgrade to v2, with qemu's refusals and messages. */
export async function downgrade(s: EngineState, status: StatusCallback): Promise<void> {
  const h = s.header;
  if (h.refcountOrder !== 4) throw new UnsupportedError('compat=0.10 requires refcount_bits=16', { errno: 'ENOTSUP' });
  if (s.geo.dataFile) throw new UnsupportedError('Cannot downgrade an image with a data file', { errno: 'ENOTSUP' });
  const size = BigInt(virtualSize(s));
  for (const sn of s.snapshots) {
    if (snapshotVmStateSize(sn) > 0xffff_ffffn || snapshotDiskSize(sn, virtualSize(s)) !== size) {
      throw new UnsupportedError('Internal snapshots prevent downgrade of image', { errno: 'ENOTSUP' });
    }
  }
  if ((h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n) {
    try {
      await markClean(s);
    } catch (err) {
      throw withContext(err, 'Failed to make the image clean');
    }
  }
  const incompatible = h.incompatibleFeatures & ~INCOMPAT_COMPRESSION;
  if (incompatible !== 0n) {
    throw new UnsupportedError(`Cannot downgrade an image with incompatible features 0x${incompatible.toString(16)} set`, {
      errno: 'ENOTSUP',
    });
  }
  // Compatible features can be dropped; lazy refcounts were made good by cleaning the image.
  h.compatibleFeatures = 0n;
  h.autoclearFeatures = 0n;
  s.lazy = false;
  try {
    await expandZeroClusters(s, status);
  } catch (err) {
    throw withContext(err, 'Failed to turn zero into data clusters');
  }
  if ((h.incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n) {
    if (await hasCompressedClusters(s)) {
      throw new UnsupportedError('Cannot downgrade an image with zstd compression type and existing compressed clusters', {
        errno: 'ENOTSUP',
      });
    }
    h.incompatibleFeatures &= ~INCOMPAT_COMPRESSION;
    h.compressionType = 0;
  }
  try {
    await switchVersion(s, 2);
  } catch (err) {
    throw withContext(err, 'Failed to update the image header');
  }
}

/** error_setg_errno's "<context>: <strerror>" around an I/O failure; other errors pass. */
export function withContext(err: unknown, context: string): unknown {
  if (!(err instanceof TsimgError) || err.errno === undefined) return err;
  return errorWithCode(err.code, `${context}: ${err.message}`, { cause: err, errno: err.errno });
}
