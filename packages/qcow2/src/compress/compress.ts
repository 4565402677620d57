/**
 * Compressed-cluster codecs of qcow2: the header's compression_type picks raw deflate ('zlib',
 * deflate.ts) or zstd (zstd.ts); both codec libraries load on first use.
 */
import { checkClusterSize, checkCompressionType, type CompressionType } from './compress-types.js';
import { deflateCluster, inflateClusterSync, loadZlib } from './deflate.js';
import { loadZstd, zstdCompressCluster, zstdDecompress } from './zstd.js';

export { checkClusterSize, checkCompressionType, type CompressionType } from './compress-types.js';

/**
 * Decompresses one stored compressed cluster. `data` is the bytes qcow2 stores (may be followed
 * by padding up to the sector boundary, or by the next cluster's data). Returns exactly
 * clusterSize bytes or throws FormatError (errno EIO, as qemu fails the read); never decodes more
 * than clusterSize bytes, so hostile data costs at most one cluster of memory.
 */
export async function decompressCluster(
  type: CompressionType,
  data: Uint8Array,
  clusterSize: number,
): Promise<Uint8Array> {
  checkCompressionType(type);
  checkClusterSize(clusterSize);
  // On this thread: inflate costs half the CPU of node's async zlib (576 vs 290 MB/s per
  // CPU-second measured, 64 KiB clusters), whose per-call stream set-up dominates.
  if (type === 'zlib') return inflateClusterSync(await loadZlib(), data, clusterSize);
  return zstdDecompress(await loadZstd(), data, clusterSize);
}

/**
 * Compresses one cluster as qemu does (zlib: raw deflate level 6 with a 4 KiB window; zstd: one
 * level-3 frame with its content size and no checksum); undefined when the result would not be
 * smaller than the cluster (qemu then writes it uncompressed). Bulk callers: see
 * createCompressPool in compress-pool.ts.
 */
export async function compressCluster(
  type: CompressionType,
  cluster: Uint8Array,
): Promise<Uint8Array | undefined> {
  checkCompressionType(type);
  checkClusterSize(cluster.length);
  // On libuv's pool: one call blocks nothing, several run in parallel (bulk writers use
  // createCompressPool, which costs less CPU per cluster and leaves libuv's threads to file I/O).
  if (type === 'zlib') return deflateCluster(cluster);
  return zstdCompressCluster(await loadZstd(), cluster);
}
