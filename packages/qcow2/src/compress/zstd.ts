/**
 * zstd for qcow2 compressed clusters behind one small interface, with two interchangeable
 * backends loaded on first use (never at CLI start-up): zstd-napi (native, an optional
 * dependency that may fail to build) and @bokuweb/zstd-wasm (always installable).
 */
import { UnsupportedError } from '@tsimg/raw';
import { createRequire } from 'node:module';
import { wasmCodec, type ZstdBackendName, type ZstdCodec } from './zstd-codec.js';

export { type ZstdBackendName, type ZstdCodec, zstdCompressCluster, zstdDecompress } from './zstd-codec.js';

const require = createRequire(import.meta.url);

/**
 * The part of zstd-napi's `binding` module we use, declared here rather than imported as a type:
 * the package is optional, and the build must not need it to be installed. `zstd-napi/binding`
 * is the package's documented low-level entry (its index points readers to it), and the only
 * one that decompresses into a caller's buffer with a bound: the high-level Decompressor
 * allocates whatever a frame's header claims, or grows without limit for a frame without a
 * content size, which a hostile image could use to exhaust memory.
 */
interface ZstdNapiBinding {
  CCtx: new () => {
    reset(directive: number): void;
    compressStream2(dst: Uint8Array, src: Uint8Array, end: number): [number, number, number];
  };
  DCtx: new () => {
    reset(directive: number): void;
    decompress(dst: Uint8Array, src: Uint8Array): number;
  };
  ResetDirective: { sessionOnly: number };
  EndDirective: { end: number };
}

function loadNapi(): ZstdCodec {
  const binding = require('zstd-napi/binding') as ZstdNapiBinding;
  // One context per loaded codec; a codec instance lives in one thread and calls are synchronous.
  const cctx = new binding.CCtx();
  const dctx = new binding.DCtx();
  // Output of compress(), reused: the frame is copied out of it.
  let scratch = Buffer.alloc(0);
  return {
    name: 'zstd-napi',
    compress(src, capacity) {
      // The same call qemu makes: the default parameters, one ZSTD_e_end pass into a buffer of
      // `capacity` bytes; anything left to flush means the frame did not fit.
      cctx.reset(binding.ResetDirective.sessionOnly);
      if (scratch.length < capacity) scratch = Buffer.allocUnsafeSlow(capacity);
      const dst = scratch.subarray(0, capacity);
      const [remaining, produced] = cctx.compressStream2(dst, src, binding.EndDirective.end);
      if (remaining !== 0) return undefined;
      return new Uint8Array(dst.buffer, dst.byteOffset, produced).slice();
    },
    decompressInto(frame, dst) {
      dctx.reset(binding.ResetDirective.sessionOnly);
      return dctx.decompress(dst, frame);
    },
  };
}

async function loadWasm(): Promise<ZstdCodec> {
  const wasm = require('@bokuweb/zstd-wasm') as typeof import('@bokuweb/zstd-wasm');
  await wasm.init();
  return wasmCodec(wasm);
}

const loaded = new Map<ZstdBackendName | 'auto', Promise<ZstdCodec>>();

/**
 * The zstd codec: `backend` names one, `'auto'` (default) takes zstd-napi when it loads and the
 * WebAssembly build otherwise. Loaded once per thread; the first call pays the load.
 */
export function loadZstd(backend: ZstdBackendName | 'auto' = 'auto'): Promise<ZstdCodec> {
  let codec = loaded.get(backend);
  if (codec === undefined) {
    codec = loadBackend(backend);
    loaded.set(backend, codec);
    // A failed load is not cached, so a later call can try again.
    codec.catch(() => loaded.delete(backend));
  }
  return codec;
}

async function loadBackend(backend: ZstdBackendName | 'auto'): Promise<ZstdCodec> {
  try {
    if (backend === 'zstd-napi') return loadNapi();
    if (backend === 'zstd-wasm') return await loadWasm();
    try {
      return loadNapi();
    } catch {
      // zstd-napi is optional: without a native build, the WebAssembly one does the same work.
      return await loadWasm();
    }
  } catch (err) {
    throw new UnsupportedError(`zstd is not available (${backend}): ${(err as Error).message}`, {
      cause: err,
    });
  }
}
