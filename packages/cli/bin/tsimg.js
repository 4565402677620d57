#!/usr/bin/env node
// Thin launcher. It runs the single-file bundle of the CLI (dist/bundle, made by `npm run
// build`) with V8's code cache (load-bundle.js): ~40 ms less start-up than the ~60 modules of
// dist/. In a source checkout the bundle is skipped when a package was recompiled after it was
// made (`tsc -b` alone), so a stale bundle never runs; an installed package has no tsbuildinfo
// and always takes the bundle. CommonJS (bin/package.json): see load-bundle.js.
'use strict';
const { bundleFile, bundleIsStale, loadBundle } = require('./load-bundle.js');

// runProcess defers SIGINT/SIGTERM while a command writes an image (src/interrupt.ts).
if (bundleIsStale(bundleFile)) void import('../dist/main.js').then((m) => m.runProcess(process.argv.slice(2)));
else void loadBundle().exports.runProcess(process.argv.slice(2));
