/**
 * Worker thread of compress-pool.ts: compresses the clusters it is sent with the one codec the
 * pool chose, and answers each with the compressed bytes or undefined.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as zlib from 'node:zlib';
import type { CompressionType } from './compress.js';
import { deflateClusterSync } from './deflate.js';
import { loadZstd, zstdCompressCluster, type ZstdBackendName } from './zstd.js';

/** What the pool passes as workerData. */
export interface CompressWorkerConfig {
  type: CompressionType;
  /** The zstd backend the pool's thread loaded, so every thread writes the same bytes. */
  zstdBackend?: ZstdBackendName;
}

/** A cluster to compress; `id` comes back in the reply. */
export interface CompressRequest {
  id: number;
  cluster: Uint8Array;
}

/** The answer to one request: `result` undefined means "store it uncompressed". */
export type CompressReply =
  | { id: number; ok: true; result: Uint8Array | undefined }
  | { id: number; ok: false; message: string; code?: string };

const port = parentPort;
if (port === null) throw new Error('compress-worker.js runs only as a worker thread of compress-pool.js');
const config = workerData as CompressWorkerConfig;

// The codec is loaded before the first message is read, so no request waits on a half-loaded one.
const compress: (cluster: Uint8Array) => Uint8Array | undefined =
  config.type === 'zstd'
    ? await (async () => {
        const codec = await loadZstd(config.zstdBackend ?? 'auto');
        return (cluster: Uint8Array) => zstdCompressCluster(codec, cluster);
      })()
    : (cluster) => deflateClusterSync(zlib, cluster);

port.on('message', ({ id, cluster }: CompressRequest) => {
  let reply: CompressReply;
  const transfer: ArrayBuffer[] = [];
  try {
    const compressed = compress(cluster);
    let result: Uint8Array | undefined;
    if (compressed !== undefined) {
      // A buffer of its own, so handing it over cannot detach memory anything else here uses
      // (zlib's results may be views of a shared pool).
      result = new Uint8Array(compressed.length);
      result.set(compressed);
      transfer.push(result.buffer as ArrayBuffer);
    }
    reply = { id, ok: true, result };
  } catch (err) {
    const code = (err as { code?: unknown } | null)?.code;
    reply = { id, ok: false, message: (err as Error).message, code: typeof code === 'string' ? code : undefined };
  }
  port.postMessage(reply, transfer);
});
