#!/usr/bin/env node
// Launcher of `tsimg-nbd` (qemu-nbd's serving side): its bundle made by `npm run build`
// (dist/bundle/nbd.cjs), or the compiled modules when the bundle is stale (load-bundle.js).
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { bundleIsStale } from './load-bundle.js';

const bundle = fileURLToPath(new URL('../dist/bundle/nbd.cjs', import.meta.url));
const { runNbdProcess } = bundleIsStale(bundle) ? await import('../dist/nbd-main.js') : createRequire(import.meta.url)(bundle);
void runNbdProcess(process.argv.slice(2));
