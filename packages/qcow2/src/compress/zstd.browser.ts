/**
 * The browser build's zstd (the build picks this over zstd.ts): the WebAssembly build of
 * @bokuweb/zstd-wasm, whose zstd.wasm the build copies next to the bundle.
 */
import { UnsupportedError } from '@tsimg/raw';
import { wasmCodec, type ZstdBackendName, type ZstdCodec } from './zstd-codec.js';

export { type ZstdBackendName, type ZstdCodec, zstdCompressCluster, zstdDecompress } from './zstd-codec.js';

let codec: Promise<ZstdCodec> | undefined;

async function loadWasm(): Promise<ZstdCodec> {
  const wasm = await import('@bokuweb/zstd-wasm');
  await wasm.init();
  return wasmCodec(wasm);
}

/** The WebAssembly codec, loaded once; any `backend` asked for gets it. */
export function loadZstd(_backend: ZstdBackendName | 'auto' = 'auto'): Promise<ZstdCodec> {
  codec ??= loadWasm().catch((err: unknown) => {
    codec = undefined;
    throw new UnsupportedError(`zstd is not available (zstd-wasm): ${(err as Error).message}`, { cause: err });
  });
  return codec;
}
