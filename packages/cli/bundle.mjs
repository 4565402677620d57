#!/usr/bin/env node
// Bundles the compiled CLI (dist/main.js and everything it imports from @tsimg/*) into one ES
// module, dist/bundle/main.js, plus the compression worker beside it (compress-pool.ts finds
// the worker next to the module that loads it). Why: Node 20 spends ~30 ms resolving, reading
// and linking the ~60 modules of the unbundled CLI at every start, which is most of what a
// short command like `info` or `map` costs. Native and WebAssembly codecs stay external: they
// are optional dependencies loaded with require() at run time, and may be missing.
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));

await build({
  entryPoints: [here('./dist/main.js'), here('../qcow2/dist/compress-worker.js')],
  outdir: here('./dist/bundle'),
  entryNames: '[name]',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // Keep class and function names: error classes are told apart by name in messages and tests.
  keepNames: true,
  minify: true,
  external: ['fs-ext', 'zstd-napi', 'zstd-napi/*', '@bokuweb/zstd-wasm'],
  logLevel: 'warning',
});
