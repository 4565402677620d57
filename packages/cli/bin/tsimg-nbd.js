#!/usr/bin/env node
// Launcher of `tsimg-nbd` (qemu-nbd's serving side): the bundle made by `npm run build`
// (dist/bundle/nbd.cjs), or the compiled modules when a package was recompiled after the bundle
// was made (a source checkout after `tsc -b`), as bin/tsimg.js decides.
import { statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const mtime = (path) => {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return undefined;
  }
};
const bundle = new URL('../dist/bundle/nbd.cjs', import.meta.url);
const made = mtime(bundle);
const stale =
  made === undefined ||
  ['raw', 'qcow2', 'image', 'cli'].some((p) => (mtime(new URL(`../../${p}/tsconfig.tsbuildinfo`, import.meta.url)) ?? 0) > made);
const { runNbdProcess } = stale ? await import('../dist/nbd-main.js') : createRequire(import.meta.url)(fileURLToPath(bundle));
void runNbdProcess(process.argv.slice(2));
