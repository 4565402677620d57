/**
 * qemu's metadata-preallocation judgement for a qcow2 image, which decides whether block status
 * of its data runs is checked against the host file (BDRV_BLOCK_RECURSE).
 */
import { decodeReftableEntry, getRefcount, REFTABLE_ENTRY_SIZE, refcountsPerBlock } from '../format/refcount.js';
import type { Qcow2Image } from './image.js';

/**
 * qemu's qcow2_detect_metadata_preallocation: true when the qcow2 file has clearly more
 * clusters in use (refcount > 0) than blocks allocated on the host — the image was created with
 * preallocation=metadata, or clusters were allocated but only partly written. qemu then asks the
 * host file about every data run (BDRV_BLOCK_RECURSE) and reports holes there as zero. Any
 * failure answers false, as in qemu.
 */
export async function detectMetadataPreallocation(image: Qcow2Image): Promise<boolean> {
  try {
    const cs = image.clusterSize;
    const h = image.header;
    const fileLength = image.file.size();
    const realAllocation = await image.file.allocatedSize();
    if (realAllocation === undefined) return false;
    const realClusters = Math.floor(realAllocation / cs);
    const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
    const endCluster = Math.ceil(fileLength / cs);
    const table = new Uint8Array(h.refcountTableClusters * cs);
    await image.file.read(h.refcountTableOffset, table);
    const tableView = new DataView(table.buffer);
    const entries = table.length / REFTABLE_ENTRY_SIZE;
    const perBlock = refcountsPerBlock(h.clusterBits, h.refcountOrder);
    const block = new Uint8Array(cs);
    let loaded = -1;
    let count = 0;
    for (let i = 0; i < endCluster && count < threshold; i++) {
      const index = Math.floor(i / perBlock);
      if (index >= entries) break; // no refblock covers the rest: refcount 0
      const blockOffset = decodeReftableEntry(tableView, index).offset;
      if (blockOffset === 0) {
        i = (index + 1) * perBlock - 1; // a missing refblock: skip all of its clusters
        continue;
      }
      if (blockOffset % cs !== 0) return false; // qemu: "Refblock offset ... unaligned" → error
      if (loaded !== blockOffset) {
        await image.file.read(blockOffset, block);
        loaded = blockOffset;
      }
      if (getRefcount(block, i % perBlock, h.refcountOrder) !== 0) count++;
    }
    return count >= threshold;
  } catch {
    return false;
  }
}
