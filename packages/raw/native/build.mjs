#!/usr/bin/env node
// Builds the optional native module build/Release/tsimg_fs.node (native/tsimg_fs.c) with
// node-gyp, as @tsimg/raw's `install` script. It never fails the install: without the module
// FileDevice still works, but cannot lock images (it says so) and has no fallocate or block
// device ioctls (it falls back to writing zeroes). A failed build prints a loud warning.
//
// No network is needed: node-gyp is told to use the headers of the Node that runs this script
// (<prefix>/include/node, shipped by Debian's and nodesource's nodejs packages and by the
// official tarballs) instead of downloading them. Set TSIMG_SKIP_NATIVE=1 to skip the build.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const pkgDir = fileURLToPath(new URL('..', import.meta.url));
const warn = (msg) => process.stderr.write(`\n!!! @tsimg/raw: ${msg}\n!!! tsimg will run without image locking, fallocate and block-device sizes.\n\n`);

function main() {
  if (process.platform !== 'linux') {
    console.log(`@tsimg/raw: native module not built (${process.platform} is not Linux).`);
    return;
  }
  if (process.env.TSIMG_SKIP_NATIVE) {
    warn('TSIMG_SKIP_NATIVE is set: the native module was not built.');
    return;
  }
  const gyp = findNodeGyp();
  if (gyp === undefined) {
    warn('node-gyp not found (it ships with npm): the native module was not built.');
    return;
  }
  const args = [gyp, 'rebuild'];
  const nodedir = localHeaders();
  if (nodedir !== undefined) args.push(`--nodedir=${nodedir}`);
  const r = spawnSync(process.execPath, args, { cwd: pkgDir, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) {
    process.stderr.write(r.stdout ?? '');
    process.stderr.write(r.stderr ?? '');
    warn(`building the native module failed (node-gyp exit ${r.status ?? r.signal}${nodedir ? '' : '; no local Node headers found'}).`);
    return;
  }
  // Loading it here catches a module that builds but cannot run (a wrong ABI or a missing symbol).
  try {
    const binding = createRequire(import.meta.url)(path.join(pkgDir, 'build', 'Release', 'tsimg_fs.node'));
    if (binding.ABI !== 1) throw new Error(`unexpected ABI ${binding.ABI}`);
    console.log(`@tsimg/raw: native module built (OFD locks ${binding.probeOfd() === 1 ? 'available' : 'unavailable'}).`);
  } catch (err) {
    warn(`the native module was built but does not load: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** npm's bundled node-gyp: npm names it in npm_config_node_gyp; else found beside npm itself. */
function findNodeGyp() {
  const candidates = [process.env.npm_config_node_gyp];
  if (process.env.npm_execpath) {
    candidates.push(path.join(path.dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  }
  const prefix = path.dirname(path.dirname(process.execPath));
  candidates.push(path.join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  return candidates.find((c) => c !== undefined && c !== '' && fs.existsSync(c));
}

/** The running Node's own headers (<prefix>/include/node), if installed, for --nodedir. */
function localHeaders() {
  const prefix = path.dirname(path.dirname(process.execPath));
  const ok = ['node_api.h', 'common.gypi'].every((f) => fs.existsSync(path.join(prefix, 'include', 'node', f)));
  return ok ? prefix : undefined;
}

main();
