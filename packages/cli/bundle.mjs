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
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const requireHere = createRequire(import.meta.url);
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

// Node built-ins that only some commands use are loaded at their first use, not at start-up:
// required at the top of the bundle, node:http, https, net, crypto, stream and worker_threads (with tls and the
// streams they pull in) cost every command ~25 ms (`tsimg info` 0.065 s against 0.040 s). Each
// import of one becomes a Proxy that requires the module on the first property read; esbuild's
// interop reads `__esModule` and the own keys at import time (it defines a getter per name),
// which the Proxy answers without loading.
// The sources keep their plain imports (the browser build maps them to its shims).
const LAZY_BUILTINS = ['node:http', 'node:https', 'node:net', 'node:crypto', 'node:stream', 'node:stream/promises', 'node:worker_threads'];
const lazyBuiltins = {
  name: 'lazy-builtins',
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (args) =>
      LAZY_BUILTINS.includes(args.path) && args.namespace !== 'lazy-builtin' ? { path: args.path, namespace: 'lazy-builtin' } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'lazy-builtin' }, (args) => ({
      loader: 'js',
      // The names are this Node's (the build runs on the Node that runs the bundle, like its code cache).
      contents: `const names = ${JSON.stringify(Object.keys(requireHere(args.path)))};
let m;
module.exports = new Proxy({}, {
  get(_, key) {
    if (key === '__esModule') return undefined;
    m ??= require(${JSON.stringify(args.path)});
    return m[key];
  },
  ownKeys: () => names,
  getOwnPropertyDescriptor: (_, key) => (names.includes(key) ? { configurable: true, enumerable: true, writable: true, value: undefined } : undefined),
});`,
    }));
  },
};

// tsimg (main.cjs) and tsimg-nbd (nbd.cjs, bin/tsimg-nbd.js; its entry is runNbdProcess).
for (const [entry, out] of [['main', 'main'], ['nbd-main', 'nbd']]) {
  await build({
    ...shared,
    entryPoints: [here(`./dist/${entry}.js`)],
    outfile: here(`./dist/bundle/${out}.cjs`),
    format: 'cjs',
    plugins: [lazyBuiltins],
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
