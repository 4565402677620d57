#!/usr/bin/env node
// Makes dist/bundle/main.cache: loads the bundle without a cache, runs the commands people run
// most on small scratch images (so that their functions are compiled), and saves V8's code cache
// of everything compiled by then. Run by bundle.mjs; the scratch files are removed.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cacheFile, loadBundle } from './bin/load-bundle.js';

const { exports: cli, script } = loadBundle({ useCache: false });
const dir = mkdtempSync(join(tmpdir(), 'tsimg-cache-'));
const silent = { stdout: () => {}, stderr: () => {}, isTTY: false };
const at = (name) => join(dir, name);
try {
  // A raw image with data, zeroes and holes.
  const raw = Buffer.alloc(4 << 20);
  for (let i = 0; i < 1 << 20; i++) raw[i] = (i * 7) & 0xff;
  raw.fill(0x61, 3 << 20, (3 << 20) + 65536);
  writeFileSync(at('a.raw'), raw);
  const runs = [
    ['create', '-q', '-f', 'qcow2', at('new.qcow2'), '64M'],
    ['convert', '-O', 'qcow2', at('a.raw'), at('a.qcow2')],
    ['convert', '-c', '-O', 'qcow2', at('a.raw'), at('c.qcow2')],
    ['convert', '-O', 'raw', at('c.qcow2'), at('b.raw')],
    ['convert', '-O', 'raw', at('a.qcow2'), at('d.raw')],
    ['info', at('a.qcow2')],
    ['info', '--output=json', at('c.qcow2')],
    ['map', at('a.qcow2')],
    ['map', '--output=json', at('a.qcow2')],
    ['check', at('a.qcow2')],
    ['compare', at('a.qcow2'), at('c.qcow2')],
    ['measure', '-O', 'qcow2', at('a.raw')],
  ];
  for (const argv of runs) {
    const code = await cli.main(argv, silent);
    if (code !== 0) throw new Error(`tsimg ${argv.join(' ')} exited with ${code} while warming the code cache`);
  }
  writeFileSync(cacheFile, script.createCachedData());
} finally {
  rmSync(dir, { recursive: true, force: true });
}
