/**
 * The launcher's single-file bundle (packages/cli/bundle.mjs, bin/load-bundle.js): it loads with
 * V8 accepting its code cache, and runs the same commands as the unbundled dist/.
 * Needs `npm run build` first, as every test that runs the tsimg command.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const loader = fileURLToPath(new URL('../bin/load-bundle.js', import.meta.url));
const distMain = fileURLToPath(new URL('../dist/main.js', import.meta.url));

function node(script: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('CLI bundle', () => {
  it('is built with a code cache that V8 accepts', () => {
    const r = node(`
      import { loadBundle, cacheFile } from ${JSON.stringify(loader)};
      import { existsSync } from 'node:fs';
      const { exports, script } = loadBundle();
      console.log(JSON.stringify({ cache: existsSync(cacheFile), rejected: script.cachedDataRejected, main: typeof exports.main }));
    `);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ cache: true, rejected: false, main: 'function' });
  });

  it('answers as dist/main.js does', () => {
    expect(existsSync(distMain)).toBe(true);
    const run = (how: string) =>
      node(`
        const lines = [];
        const io = { stdout: (t) => lines.push(t), stderr: (t) => lines.push('E:' + t), isTTY: false };
        const { main } = ${how};
        const codes = [];
        for (const argv of [['--version'], ['info'], ['nosuch'], ['measure', '--size', '1G', '-O', 'qcow2'], ['create', '-f', 'qcow2', '/nonexistent-dir/x.qcow2', '1G']]) {
          codes.push(await main(argv, io));
        }
        console.log(JSON.stringify({ codes, lines }));
      `);
    const bundled = run(`(await import(${JSON.stringify(loader)})).loadBundle().exports`);
    const plain = run(`await import(${JSON.stringify(distMain)})`);
    expect(bundled.stderr).toBe('');
    expect(bundled.stdout).toBe(plain.stdout);
    expect(JSON.parse(bundled.stdout).codes).toEqual([0, 1, 1, 0, 1]);
  });
});
