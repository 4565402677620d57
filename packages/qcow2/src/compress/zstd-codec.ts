/**
 * The zstd codec interface and what qcow2 does with one, whichever library backs it (zstd.ts
 * loads zstd-napi or the WebAssembly build in Node, zstd.browser.ts the WebAssembly build in a
 * browser): frames in and out of compressed clusters, bounded to one cluster.
 */
import { FormatError } from '@tsimg/raw';
import { locateZstdFrame } from './zstd-frame.js';

// ZSTD_CLEVEL_DEFAULT: qemu never sets a level, so its frames are level 3.
const ZSTD_LEVEL = 3;

/** What wasmCodec needs of @bokuweb/zstd-wasm (its Node and its web build alike), initialised. */
export interface ZstdWasmModule {
  compress(src: Uint8Array, level: number): Uint8Array;
  decompress(src: Uint8Array, options: { defaultHeapSize: number }): Uint8Array;
}

/** The codec over an initialised @bokuweb/zstd-wasm. */
export function wasmCodec(wasm: ZstdWasmModule): ZstdCodec {
  return {
    name: 'zstd-wasm',
    compress(src, capacity) {
      // Only ZSTD_compress is exported; it writes the same frame parameters as qemu's call.
      const frame = wasm.compress(src, ZSTD_LEVEL);
      return frame.length <= capacity ? frame : undefined;
    },
    decompressInto(frame, dst) {
      // The library sizes its output from the frame's content size when present (the caller
      // checked it against dst), else from defaultHeapSize: never beyond dst.
      const out = wasm.decompress(frame, { defaultHeapSize: dst.length });
      if (out.length > dst.length) throw new Error(`frame decodes to ${out.length} bytes, room for ${dst.length}`);
      dst.set(out);
      return out.length;
    },
  };
}

/** Names of the zstd backends, in order of preference. */
export type ZstdBackendName = 'zstd-napi' | 'zstd-wasm';

/** What compress.ts needs from a zstd library. */
export interface ZstdCodec {
  readonly name: ZstdBackendName;
  /**
   * One frame of `src` at the default level 3 with default frame parameters (content size
   * written, no checksum), as qemu's ZSTD_compressStream2(..., ZSTD_e_end) makes it; undefined
   * when the frame would need more than `capacity` bytes.
   */
  compress(src: Uint8Array, capacity: number): Uint8Array | undefined;
  /**
   * Decodes exactly one complete frame (already located by locateZstdFrame) into `dst` and
   * returns the number of bytes written; throws when the frame is corrupt or would need more
   * room than `dst` has.
   */
  decompressInto(frame: Uint8Array, dst: Uint8Array): number;
}

/**
 * Compresses one cluster as qemu does: into an output buffer one byte smaller than the cluster,
 * so undefined means the frame would not have been smaller than the cluster.
 */
export function zstdCompressCluster(codec: ZstdCodec, cluster: Uint8Array): Uint8Array | undefined {
  return codec.compress(cluster, cluster.length - 1);
}

function fail(reason: string, cause?: unknown): never {
  throw new FormatError(`Invalid zstd compressed cluster: ${reason}`, { errno: 'EIO', cause });
}

/**
 * Decodes qcow2 zstd cluster data: frames one after another until exactly `clusterSize` bytes
 * came out (qemu's qcow2_zstd_decompress accepts several frames too), ignoring what follows.
 * Output beyond `clusterSize` is refused before anything is decoded where the frame says its
 * size, and by the bounded output buffer otherwise.
 */
export function zstdDecompress(codec: ZstdCodec, data: Uint8Array, clusterSize: number): Uint8Array {
  const out = new Uint8Array(clusterSize);
  let filled = 0;
  let pos = 0;
  while (filled < clusterSize) {
    if (pos >= data.length) fail(`frames end after ${filled} of ${clusterSize} bytes`);
    const frame = locateZstdFrame(data, pos);
    const start = pos;
    pos = frame.end;
    if (frame.kind === 'skippable') continue;
    const room = clusterSize - filled;
    if (frame.contentSize !== undefined && frame.contentSize > room) {
      fail(`frame content size ${frame.contentSize} exceeds the ${room} bytes left in the cluster`);
    }
    try {
      filled += codec.decompressInto(data.subarray(start, frame.end), out.subarray(filled, filled + room));
    } catch (err) {
      fail(`${(err as Error).message} in frame at byte ${start}`, err);
    }
  }
  return out;
}
