#!/usr/bin/env node
// Launcher of `tsimg-nbd` (qemu-nbd's serving side): its bundle made by `npm run build`
// (dist/bundle/nbd.cjs), or the compiled modules when the bundle is stale (load-bundle.js).
// CommonJS (bin/package.json): see load-bundle.js.
'use strict';
const { join } = require('node:path');
const { bundleIsStale } = require('./load-bundle.js');

const bundle = join(__dirname, '..', 'dist', 'bundle', 'nbd.cjs');
if (bundleIsStale(bundle)) void import('../dist/nbd-main.js').then((m) => m.runNbdProcess(process.argv.slice(2)));
else void require(bundle).runNbdProcess(process.argv.slice(2));
