#!/usr/bin/env node
// Thin launcher. It runs the single-file bundle of the CLI (dist/bundle/main.js, made by
// `npm run build`), which starts ~30 ms faster than the ~60 modules of dist/. In a source
// checkout the bundle is skipped when a package was recompiled after it was made (`tsc -b`
// alone), so a stale bundle never runs; an installed package has no tsbuildinfo and always
// takes the bundle.
import { statSync } from 'node:fs';

const bundle = new URL('../dist/bundle/main.js', import.meta.url);
const mtime = (url) => {
  try {
    return statSync(url).mtimeMs;
  } catch {
    return undefined;
  }
};
const made = mtime(bundle);
const stale =
  made === undefined ||
  ['raw', 'qcow2', 'cli'].some((p) => (mtime(new URL(`../../${p}/tsconfig.tsbuildinfo`, import.meta.url)) ?? 0) > made);
const { main } = await import(stale ? '../dist/main.js' : bundle.href);
main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
