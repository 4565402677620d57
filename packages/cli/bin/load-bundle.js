// Loads the CLI's single-file bundle (dist/bundle/main.cjs) as a classic script with V8's code
// cache (dist/bundle/main.cache, written by `npm run build`), so that a command starts without
// parsing and compiling the functions it runs: `tsimg map` of the bench's 8 TiB image takes
// ~0.039 s instead of ~0.050 s. Node 20 has no code cache for ES modules (module.enableCompileCache
// is Node 22), hence the CommonJS bundle run through node:vm.
//
// V8 refuses a cache made by another V8 version or under other V8 flags (cachedDataRejected);
// the bundle then compiles as usual, only slower. The wrapper below must stay byte-identical
// between the build that makes the cache and every run that uses it.
//
// CommonJS (bin/package.json), like the launchers: an ES module entry costs Node ~8 ms more to
// start, and an ES import of node:fs loads every lazy part of it (streams, fs/promises).
'use strict';
const { readFileSync, statSync } = require('node:fs');
const { createRequire } = require('node:module');
const { dirname, join } = require('node:path');
const vm = require('node:vm');

/**
 * True when `bundle` (a path) is missing or older than a package's last compile (`tsc -b` in a
 * source checkout): the launchers then run the compiled modules, so a stale bundle never runs.
 * An installed package has no tsbuildinfo and always takes the bundle.
 */
function bundleIsStale(bundle) {
  const mtime = (path) => {
    try {
      return statSync(path).mtimeMs;
    } catch {
      return undefined;
    }
  };
  const made = mtime(bundle);
  return (
    made === undefined ||
    ['raw', 'qcow2', 'image', 'cli'].some((p) => (mtime(join(__dirname, '..', '..', p, 'tsconfig.tsbuildinfo')) ?? 0) > made)
  );
}

const bundleFile = join(__dirname, '..', 'dist', 'bundle', 'main.cjs');
const cacheFile = join(__dirname, '..', 'dist', 'bundle', 'main.cache');

/**
 * Runs the bundle and returns its exports and the vm.Script (whose createCachedData() the build
 * calls after a warm-up). `useCache: false` compiles without the cache.
 */
function loadBundle({ useCache = true } = {}) {
  const source = readFileSync(bundleFile, 'utf8');
  let cachedData;
  if (useCache) {
    try {
      cachedData = readFileSync(cacheFile);
    } catch {
      // No cache (not built yet, or removed): compile as usual.
    }
  }
  const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
    filename: bundleFile,
    cachedData,
  });
  const module = { exports: {} };
  script.runInThisContext()(module.exports, createRequire(bundleFile), module, bundleFile, dirname(bundleFile));
  return { exports: module.exports, script };
}

module.exports = { bundleIsStale, bundleFile, cacheFile, loadBundle };
