/**
 * The browser build's compression pool (the build picks this over compress-pool.ts): no worker
 * threads, each cluster is compressed when asked, on the page's thread.
 */
import { UsageError } from '@tsimg/raw';
import { compressCluster } from './compress.js';
import { checkCompressionType, type CompressionType } from './compress-types.js';

export type { CompressPool, CompressPoolOptions } from './compress-pool.js';
import type { CompressPool, CompressPoolOptions } from './compress-pool.js';

/** A pool of no threads: compress() compresses at once. */
export function createCompressPool(type: CompressionType, options: CompressPoolOptions = {}): CompressPool {
  checkCompressionType(type);
  if (options.threads !== undefined && (!Number.isInteger(options.threads) || options.threads < 0)) throw new UsageError(`Invalid thread count ${options.threads}`);
  return {
    type,
    threads: 0,
    compress: (cluster) => compressCluster(type, cluster),
    close: async () => undefined,
  };
}
