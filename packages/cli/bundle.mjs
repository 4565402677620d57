#!/usr/bin/env node
// Bundles the compiled CLI (dist/main.js and everything it imports from @tsimg/*) into one
// CommonJS file, dist/bundle/main.cjs, plus the compression worker beside it (compress-pool.ts
// finds the worker next to the module that loads it), then makes V8's code cache for it
// (bundle-cache.mjs). Why: Node 20 spends ~30 ms resolving, reading and linking the ~60
// modules of the unbundled CLI at every start, and ~10 ms more compiling what a command runs —
// most of what a short command like `info` or `map` costs. Native and WebAssembly codecs stay
// external: they are optional dependencies loaded with require() at run time, and may be missing.
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const shared = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  // Keep class and function names: error classes are told apart by name in messages and tests.
  keepNames: true,
  minify: true,
  external: ['fs-ext', 'zstd-napi', 'zstd-napi/*', '@bokuweb/zstd-wasm'],
  logLevel: 'warning',
};

// tsimg (main.cjs) and tsimg-nbd (nbd.cjs, bin/tsimg-nbd.js; its entry is runNbdProcess).
for (const [entry, out] of [['main', 'main'], ['nbd-main', 'nbd']]) {
  await build({
    ...shared,
    entryPoints: [here(`./dist/${entry}.js`)],
    outfile: here(`./dist/bundle/${out}.cjs`),
    format: 'cjs',
    // import.meta.url of the sources (worker and native module lookups) becomes the bundle's URL.
    define: { 'import.meta.url': '__tsimgBundleUrl' },
    banner: { js: 'var __tsimgBundleUrl=require("node:url").pathToFileURL(__filename).href;' },
  });
}
// The worker runs as its own ES module (new Worker(url)), outside the bundle.
await build({
  ...shared,
  entryPoints: [here('../qcow2/dist/compress/compress-worker.js')],
  outfile: here('./dist/bundle/compress-worker.js'),
  format: 'esm',
});

// The code cache is made in a process of its own, started like `tsimg` is (no extra flags),
// since V8 only accepts a cache made under the same flags.
const r = spawnSync(process.execPath, [here('./bundle-cache.mjs')], { stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);
