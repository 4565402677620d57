#!/usr/bin/env node
// The browser build: web/lib.ts (raw + qcow2 + image as one ES module, dist/tsimg.js) and the
// page's script (dist/app.js), bundled by esbuild for platform=browser from the TypeScript
// sources. A module `x.ts` with a sibling `x.browser.ts` is replaced by it (no host files, no
// worker threads, codecs of the platform); node:fs/promises and the few node: modules in STUBS
// get stubs (canonical names only; encryption and NBD refuse when used); any other node:
// import on the browser path fails the build, and so does a bundle naming Node's Buffer. Code
// loaded with import() (zstd, and pako where DecompressionStream lacks 'deflate-raw') goes to
// chunks of its own; zstd.wasm is copied beside the zstd chunk, which loads it from there.
// Prints each file's size.
import { build } from 'esbuild';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = dirname(here);
const out = join(here, 'dist');
mkdirSync(out, { recursive: true });

/** node: modules the browser path may import, with the shim it gets and who may import it. */
const STUBS = {
  'node:fs': { file: 'node-fs.ts', importers: ['packages/image/src/open.ts', 'packages/image/src/backing-chain.ts'] },
  'node:crypto': { file: 'node-crypto.ts', importers: ['packages/qcow2/src/crypto/'] },
  'node:net': { file: 'node-net.ts', importers: ['packages/image/src/nbd/client.ts'] },
};

/** @type {import('esbuild').Plugin} */
const browserVariants = {
  name: 'tsimg-browser',
  setup(b) {
    // @tsimg/image is what web/lib.ts has of it (its index also names Node-only modules: NBD
    // server, checksums over worker threads, streams), also for the CLI modules the page reuses.
    b.onResolve({ filter: /^@tsimg\/image$/ }, () => ({ path: join(here, 'lib.ts') }));
    b.onResolve({ filter: /^@tsimg\/(raw|qcow2|cli)$/ }, (args) => ({ path: join(root, 'packages', args.path.slice(7), 'src', 'index.ts') }));
    b.onResolve({ filter: /^\.\.?\// }, (args) => {
      if (!args.importer.endsWith('.ts')) return undefined;
      const base = resolve(args.resolveDir, args.path).replace(/\.js$/, '');
      if (!args.importer.endsWith('.browser.ts') || !args.importer.startsWith(`${base}.`)) {
        if (existsSync(`${base}.browser.ts`)) return { path: `${base}.browser.ts` };
      }
      if (existsSync(`${base}.ts`)) return { path: `${base}.ts` };
      return undefined;
    });
    b.onResolve({ filter: /^node:/ }, (args) => {
      if (args.path === 'node:fs/promises') return { path: join(here, 'shims', 'node-fs-promises.ts') };
      // Stubs that refuse when called: canonical names (node:fs, from the open path only),
      // encryption and NBD (see the shims). Any other node: import fails the build.
      const stub = STUBS[args.path];
      if (stub !== undefined && stub.importers.some((i) => relative(root, args.importer).startsWith(i))) return { path: join(here, 'shims', stub.file) };
      return { errors: [{ text: `${args.path} imported on the browser path by ${relative(root, args.importer)}` }] };
    });
  },
};

const common = {
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  keepNames: true,
  sourcemap: true,
  plugins: [browserVariants],
  logLevel: 'warning',
  metafile: true,
};

// Code split: what a module loads with import() only where a browser needs it (pako, where
// DecompressionStream('deflate-raw') is missing) is a chunk of its own, not in the entry.
rmSync(join(out, 'chunks'), { recursive: true, force: true });
const split = { splitting: true, outdir: out, chunkNames: 'chunks/[name]-[hash]' };
const results = await Promise.all([
  build({ ...common, ...split, entryPoints: { tsimg: join(here, 'lib.ts') } }),
  build({ ...common, ...split, entryPoints: { app: join(here, 'app.ts') } }),
]);
const wasm = join(dirname(createRequire(import.meta.url).resolve('@bokuweb/zstd-wasm')), '..', 'web', 'zstd.wasm');
// zstd-wasm's glue (a chunk: the codec imports it on the first zstd cluster) looks for the
// wasm beside itself.
copyFileSync(wasm, join(out, 'chunks', 'zstd.wasm'));
rmSync(join(out, 'zstd.wasm'), { force: true });

// Node's Buffer is no browser global (and polyfilling it is what the size rule forbids): a
// bundle that names it would fail where the code runs, so the build fails instead.
for (const r of results) {
  for (const file of Object.keys(r.metafile.outputs)) {
    if (!file.endsWith('.js')) continue;
    const m = /(?<![\w$])Buffer(?![\w$])/.exec(readFileSync(resolve(file), 'utf8'));
    if (m !== null) throw new Error(`${relative(root, file)} names Node's Buffer (at ${m.index}): use Uint8Array helpers (@tsimg/raw byte-compare) on the browser path`);
  }
}

const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
const sizes = new Map(results.flatMap((r) => Object.entries(r.metafile.outputs)).filter(([file]) => !file.endsWith('.map')).map(([file, o]) => [relative(root, resolve(file)), o.bytes]));
for (const [file, bytes] of sizes) console.log(`${file}: ${kib(bytes)}${file.includes('/chunks/') ? ' (a chunk, loaded when needed)' : ''}`);
console.log(`web/dist/chunks/zstd.wasm: ${kib(statSync(join(out, 'chunks', 'zstd.wasm')).size)} (loaded on the first zstd cluster)`);
