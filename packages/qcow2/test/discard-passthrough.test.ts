/**
 * Discard passthrough of guest requests (qemu's pass-discard-request, on when an image is
 * opened with discard=unmap): host clusters that zero writes with may-unmap, or discards, free
 * are dropped from the image file too — so their old bytes are gone. Cross-checked with
 * `qemu-io -d unmap` / `qemu-io -d ignore` doing the same requests on a copy of the same
 * image: the files must be byte-identical either way.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImage } from '@tsimg/image';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';

type Req = { k: 'z'; off: number; len: number } | { k: 'd'; off: number; len: number };

const K = 1024;
const M = 1024 * K;

/** A filled target: plain data, compressed clusters, a zero cluster and a hole. */
function makeFilled(dir: string, name: string, createOpts: string): string {
  const file = join(dir, name);
  const c = qemuImg(['create', '-f', 'qcow2', '-o', createOpts, file, '4M']);
  expect(c.status, c.stderr).toBe(0);
  const w = qemuIo([
    '-c', 'write -P 0x11 0 1M',
    '-c', 'write -c -P 0x22 1M 64k',
    '-c', 'write -c -P 0x23 1088k 64k',
    '-c', 'write -P 0x33 2M 1M',
    '-c', 'write -z 3M 64k',
    file,
  ]);
  expect(w.status, w.stderr).toBe(0);
  return file;
}

/**
 * `unmapOnly`: with discard=ignore qemu's block layer drops discard requests before the qcow2
 * driver sees them, while Qcow2Image.discard always carries them out (it is only called when a
 * discard is meant); so discards are compared with discard=unmap only.
 */
const SCENARIOS: { name: string; reqs: Req[]; unmapOnly?: boolean }[] = [
  { name: 'zero writes over data', reqs: [{ k: 'z', off: 0, len: 512 * K }, { k: 'z', off: 2 * M + 64 * K, len: 128 * K }] },
  { name: 'zero writes over compressed clusters', reqs: [{ k: 'z', off: 1 * M, len: 128 * K }] },
  { name: 'a zero write over everything', reqs: [{ k: 'z', off: 0, len: 4 * M }] },
  { name: 'discards', reqs: [{ k: 'd', off: 256 * K, len: 256 * K }, { k: 'd', off: 1 * M, len: 64 * K }], unmapOnly: true },
  { name: 'a zero write with an unaligned head and tail', reqs: [{ k: 'z', off: 100 * K, len: 300 * K }] },
];

describeQemu('discard passthrough (discard=unmap) matches qemu', () => {
  let work: { dir: string; cleanup: () => void };
  const bases = new Map<string, string>();
  beforeAll(() => {
    work = tempDir('tsimg-unmap-');
    bases.set('64k', makeFilled(work.dir, 'filled.qcow2', 'cluster_size=64k'));
    bases.set('extl2', makeFilled(work.dir, 'filled-extl2.qcow2', 'extended_l2=on,cluster_size=64k'));
  });
  afterAll(() => work.cleanup());

  let n = 0;
  for (const [layout] of [['64k'], ['extl2']] as const) {
    for (const s of SCENARIOS) {
      for (const unmap of s.unmapOnly ? [true] : [true, false]) {
        it(`${layout}: ${s.name}, ${unmap ? 'discard=unmap' : 'discard=ignore'}`, async () => {
          const base = bases.get(layout)!;
          const q = join(work.dir, `q${++n}.qcow2`);
          const t = join(work.dir, `t${n}.qcow2`);
          copyFileSync(base, q);
          copyFileSync(base, t);
          const cmds = s.reqs.flatMap((r) => ['-c', r.k === 'z' ? `write -z -u ${r.off} ${r.len}` : `discard ${r.off} ${r.len}`]);
          // qemu-io's own default is unmap: both modes are spelled out.
          const r = qemuIo(['-d', unmap ? 'unmap' : 'ignore', ...cmds, q]);
          expect(r.status, r.stderr).toBe(0);

          const img = await openImage(t, { readOnly: false, unmap });
          try {
            for (const req of s.reqs) {
              if (req.k === 'z') await img.writeZeroes(req.off, req.len, { mayUnmap: true });
              else await img.discard(req.off, req.len);
            }
          } finally {
            await img.close();
          }
          const qb = readFileSync(q);
          const tb = readFileSync(t);
          expect(tb.length).toBe(qb.length);
          expect(Buffer.compare(tb, qb)).toBe(0);
        });
      }
    }
  }

  it('with unmap the freed clusters of the host file read as zeroes; without, their old bytes stay', async () => {
    const base = bases.get('64k')!;
    const before = readFileSync(base);
    const ids = [join(work.dir, 'with.qcow2'), join(work.dir, 'without.qcow2')];
    for (const [i, unmap] of [true, false].entries()) {
      copyFileSync(base, ids[i]!);
      const img = await openImage(ids[i]!, { readOnly: false, unmap });
      await img.writeZeroes(2 * M, 1 * M, { mayUnmap: true });
      await img.close();
    }
    const count = (b: Buffer): number => b.reduce((a, x) => a + (x === 0x33 ? 1 : 0), 0);
    expect(count(before)).toBe(1 * M);
    expect(count(readFileSync(ids[0]!))).toBe(0);
    expect(count(readFileSync(ids[1]!))).toBe(1 * M);
  });
});
