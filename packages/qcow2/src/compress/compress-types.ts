/** The compression types of qcow2 and the argument checks every codec backend shares. */
import { UnsupportedError, UsageError } from '@tsimg/raw';

/** The compression_type values of the qcow2 header (0 = zlib, 1 = zstd). */
export type CompressionType = 'zlib' | 'zstd';

// qcow2 cluster sizes are 512 B (cluster_bits 9) to 2 MiB (cluster_bits 21).
const MIN_CLUSTER = 512;
const MAX_CLUSTER = 2 * 1024 * 1024;

/** Throws UnsupportedError unless `type` is a compression type qcow2 defines. */
export function checkCompressionType(type: CompressionType): void {
  if (type !== 'zlib' && type !== 'zstd') throw new UnsupportedError(`Unknown compression type '${String(type)}'`);
}

/** Throws UsageError unless `clusterSize` is a qcow2 cluster size (512 B..2 MiB). */
export function checkClusterSize(clusterSize: number): void {
  if (!Number.isInteger(clusterSize) || clusterSize < MIN_CLUSTER || clusterSize > MAX_CLUSTER) {
    throw new UsageError(`Invalid cluster size ${clusterSize}: must be between ${MIN_CLUSTER} and ${MAX_CLUSTER}`);
  }
}
