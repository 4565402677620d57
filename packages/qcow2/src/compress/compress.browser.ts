/**
 * The browser build's compressed-cluster codecs (the build picks this over compress.ts): raw
 * deflate through the platform's DecompressionStream / CompressionStream('deflate-raw') — or
 * through pako (deflate-pako.ts, loaded on first need) where the platform lacks them — zstd
 * through the WebAssembly build. The same contract as compress.ts: exactly one cluster out,
 * never more decoded than a cluster.
 */
import { FormatError } from '@tsimg/raw';
import { checkClusterSize, checkCompressionType, type CompressionType } from './compress-types.js';
import { loadZstd, zstdCompressCluster, zstdDecompress } from './zstd.js';

export { checkClusterSize, checkCompressionType, type CompressionType } from './compress-types.js';

/**
 * Pushes `data` through a (de)compression stream and collects at most `limit + 1` output bytes;
 * what the stream says after that many bytes (junk after the end, a cut stream) is ignored, as
 * zlib's inflate into a cluster-sized buffer ignores it in qemu.
 */
async function transform(stream: TransformStream<Uint8Array, Uint8Array>, data: Uint8Array, limit: number): Promise<{ out: Uint8Array; length: number; error?: unknown }> {
  const writer = stream.writable.getWriter();
  writer.write(data).catch(() => undefined);
  writer.close().catch(() => undefined);
  const reader = stream.readable.getReader();
  const out = new Uint8Array(limit + 1);
  let length = 0;
  try {
    while (length <= limit) {
      const { done, value } = await reader.read();
      if (done) break;
      const n = Math.min(value.length, out.length - length);
      out.set(value.subarray(0, n), length);
      length += n;
    }
  } catch (error) {
    return { out, length, error };
  } finally {
    reader.cancel().catch(() => undefined);
  }
  return { out, length };
}

/**
 * The platform's raw deflate stream of `kind`, or undefined where there is none or it refuses
 * 'deflate-raw' (older browsers know only 'deflate' and 'gzip', and throw a TypeError).
 */
function platformStream(kind: 'DecompressionStream' | 'CompressionStream'): TransformStream<Uint8Array, Uint8Array> | undefined {
  const Stream = (globalThis as { [k in typeof kind]?: new (format: string) => TransformStream<Uint8Array, Uint8Array> })[kind];
  if (typeof Stream !== 'function') return undefined;
  try {
    return new Stream('deflate-raw');
  } catch {
    return undefined;
  }
}

/** See compress.ts: exactly `clusterSize` bytes, or a FormatError (errno EIO). */
export async function decompressCluster(type: CompressionType, data: Uint8Array, clusterSize: number): Promise<Uint8Array> {
  checkCompressionType(type);
  checkClusterSize(clusterSize);
  if (type === 'zstd') return zstdDecompress(await loadZstd(), data, clusterSize);
  const stream = platformStream('DecompressionStream');
  const { out, length, error } =
    stream !== undefined ? await transform(stream, data, clusterSize) : (await import('./deflate-pako.js')).inflateRawLimited(data, clusterSize);
  if (length === clusterSize) return out.subarray(0, clusterSize);
  const reason = length > clusterSize ? `it decodes to more than ${clusterSize} bytes` : error !== undefined ? (error as Error).message : `it decodes to only ${length} of ${clusterSize} bytes`;
  throw new FormatError(`Invalid zlib compressed cluster: ${reason}`, { errno: 'EIO', cause: error });
}

/** See compress.ts; the platform's deflate level and window may make other (valid) bytes than qemu's. */
export async function compressCluster(type: CompressionType, cluster: Uint8Array): Promise<Uint8Array | undefined> {
  checkCompressionType(type);
  checkClusterSize(cluster.length);
  if (type === 'zstd') return zstdCompressCluster(await loadZstd(), cluster);
  const stream = platformStream('CompressionStream');
  if (stream === undefined) {
    const out = (await import('./deflate-pako.js')).deflateRawCluster(cluster);
    return out.length < cluster.length ? out : undefined;
  }
  const { out, length } = await transform(stream, cluster, cluster.length);
  return length < cluster.length ? out.slice(0, length) : undefined;
}
