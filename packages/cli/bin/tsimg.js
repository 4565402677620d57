#!/usr/bin/env node
// Thin launcher: the compiled CLI lives in dist/ so start-up never transpiles.
import { main } from '../dist/main.js';
main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
