/**
 * The small committed qcow2 fixtures (test-images/fixtures/, made by qemu-img with
 * make-fixtures.mjs): the library reads each to its recorded SHA-256 — no qemu needed. With qemu,
 * the recorded hashes are also checked against qemu-img's own reading.
 */
import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { openImage } from '@tsimg/image';
import { describeQemu, qemuImg, tempDir } from './qemu.js';

interface Fixture {
  file: string;
  format: 'qcow2';
  description: string;
  virtualSize: number;
  backing?: string;
  sha256: string;
}

const dir = fileURLToPath(new URL('./fixtures/', import.meta.url));
const { fixtures } = JSON.parse(readFileSync(join(dir, 'fixtures.json'), 'utf8')) as { fixtures: Fixture[] };
const cases = fixtures.map((f) => [f.file, f] as const);

describe('committed qcow2 fixtures', () => {
  it('are small', () => {
    for (const f of fixtures) expect(statSync(join(dir, f.file)).size, f.file).toBeLessThan(16 * 1024);
  });

  it.each(cases)('%s reads to its recorded SHA-256', async (_, f) => {
    const img = await openImage(join(dir, f.file), { format: f.format, readOnly: true });
    try {
      expect(img.size()).toBe(f.virtualSize);
      const data = new Uint8Array(f.virtualSize);
      await img.read(0, data);
      expect(createHash('sha256').update(data).digest('hex')).toBe(f.sha256);
    } finally {
      await img.close();
    }
  });
});

describeQemu('committed qcow2 fixtures vs qemu', () => {
  it.each(cases)('%s: qemu-img check is clean and qemu reads the recorded SHA-256', (_, f) => {
    const path = join(dir, f.file);
    expect(qemuImg(['check', '-f', f.format, path]).status).toBe(0);
    const t = tempDir('tsimg-fixture-');
    try {
      const out = join(t.dir, 'out.raw');
      const r = qemuImg(['convert', '-U', '-f', f.format, '-O', 'raw', path, out]);
      expect(r.stderr).toBe('');
      expect(createHash('sha256').update(readFileSync(out)).digest('hex')).toBe(f.sha256);
    } finally {
      t.cleanup();
    }
  });
});
