/**
 * check of a json: filename that names its format ("driver"): qemu checks the named format,
 * so a raw or bare file node has no check (exit 63) even when the bytes are a qcow2 image.
 * Needs `npm run build` first (it runs bin/tsimg.js).
 */
import { afterAll, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeQemu, run } from '../../../test-images/qemu.js';

const tsimg = fileURLToPath(new URL('../bin/tsimg.js', import.meta.url));

describeQemu('check of json: names with a driver', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsimg-check-json-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'a.qcow2');
  const file = JSON.stringify({ driver: 'file', filename: image });
  const names = [
    `json:{"driver":"raw","file":${file}}`,
    `json:${file}`,
    `json:{"driver":"qcow2","file":${file}}`,
    `json:{"file":${file}}`,
  ];
  it('answers as qemu-img check does', () => {
    run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '1M']);
    for (const name of names) {
      const q = run('qemu-img', ['check', name]);
      const t = run(process.execPath, [tsimg, 'check', name]);
      expect({ name, status: t.status, stdout: t.stdout, stderr: t.stderr.replace(/^tsimg:/gm, 'qemu-img:') }).toEqual({ name, status: q.status, stdout: q.stdout, stderr: q.stderr });
    }
  });
});
