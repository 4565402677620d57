/**
 * Raw deflate as qcow2's compression_type=zlib stores clusters, with node:zlib set up the way
 * qemu's qcow2_zlib_compress / qcow2_zlib_decompress set up the system zlib.
 */
import { createRequire } from 'node:module';
import type * as Zlib from 'node:zlib';
import { FormatError } from '@tsimg/raw';

type ZlibModule = typeof Zlib;

let zlibModule: Promise<ZlibModule> | undefined;

/**
 * node:zlib, loaded on first use so that CLI start-up does not pay for it. By require() rather
 * than import(): the CLI's bundle runs as a classic script (bin/load-bundle.js), where a
 * dynamic import() has no module loader to call.
 */
export function loadZlib(): Promise<ZlibModule> {
  zlibModule ??= Promise.resolve(createRequire(import.meta.url)('node:zlib') as ZlibModule);
  return zlibModule;
}

/**
 * deflateInit2(strm, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY): level 6,
 * a 4 KiB window, no zlib header. (Node's bundled zlib emits other bytes than the system zlib
 * qemu links; each decodes the other's streams.)
 */
const DEFLATE_OPTIONS = { level: -1, windowBits: 12, memLevel: 9, strategy: 0 } as const;

/**
 * inflateInit2(strm, -12) + one inflate(Z_FINISH) into the cluster buffer, accepting
 * Z_BUF_ERROR: a stream cut short is fine as long as the cluster is full. zlib checks the 4 KiB
 * window only for references reaching back before the current output buffer, and qemu's buffer
 * is the whole cluster, so one output chunk of the whole cluster accepts the same streams.
 * One byte more than the cluster is the bound that shows a stream that would decode to more,
 * without ever decoding more.
 */
function inflateOptions(zlib: ZlibModule, clusterSize: number): Zlib.ZlibOptions {
  return {
    windowBits: 12,
    finishFlush: zlib.constants.Z_SYNC_FLUSH,
    chunkSize: clusterSize + 1,
    maxOutputLength: clusterSize + 1,
  };
}

/** The bytes of a Buffer as a plain Uint8Array, so every codec hands back the same type. */
function plain(buf: Buffer): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** qemu keeps a cluster compressed only when that makes it smaller. */
function keepIfSmaller(compressed: Buffer, clusterSize: number): Uint8Array | undefined {
  return compressed.length < clusterSize ? plain(compressed) : undefined;
}

function checkInflated(out: Buffer, clusterSize: number): Uint8Array {
  if (out.length !== clusterSize) {
    throw new FormatError(
      `Invalid zlib compressed cluster: it decodes to ${out.length > clusterSize ? 'more than' : 'only'} ` +
        `${out.length > clusterSize ? clusterSize : out.length} of ${clusterSize} bytes`,
      { errno: 'EIO' },
    );
  }
  return plain(out);
}

function inflateError(err: unknown, clusterSize: number): FormatError {
  const code = (err as { code?: unknown } | null)?.code;
  const reason =
    code === 'ERR_BUFFER_TOO_LARGE'
      ? `it decodes to more than ${clusterSize} bytes`
      : (err as Error).message;
  return new FormatError(`Invalid zlib compressed cluster: ${reason}`, { errno: 'EIO', cause: err });
}

/** Compresses one cluster on the calling thread; undefined when it would not shrink. */
export function deflateClusterSync(zlib: ZlibModule, cluster: Uint8Array): Uint8Array | undefined {
  return keepIfSmaller(zlib.deflateRawSync(cluster, DEFLATE_OPTIONS), cluster.length);
}

/** Compresses one cluster on libuv's thread pool; undefined when it would not shrink. */
export async function deflateCluster(cluster: Uint8Array): Promise<Uint8Array | undefined> {
  const zlib = await loadZlib();
  const compressed = await new Promise<Buffer>((resolve, reject) => {
    zlib.deflateRaw(cluster, DEFLATE_OPTIONS, (err, out) => (err ? reject(err) : resolve(out)));
  });
  return keepIfSmaller(compressed, cluster.length);
}

/** Decodes one stored cluster on the calling thread to exactly `clusterSize` bytes. */
export function inflateClusterSync(zlib: ZlibModule, data: Uint8Array, clusterSize: number): Uint8Array {
  let out: Buffer;
  try {
    out = zlib.inflateRawSync(data, inflateOptions(zlib, clusterSize));
  } catch (err) {
    throw inflateError(err, clusterSize);
  }
  return checkInflated(out, clusterSize);
}
