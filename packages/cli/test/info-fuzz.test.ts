/**
 * Damaged-image cross-check: a qemu-made qcow2 (backing file, snapshot, bitmap) with 1-3 random
 * bytes changed in its header, extensions, snapshot table or bitmap directory. Whatever qemu-img
 * info makes of each mutant — output, error message, exit status — tsimg info must make too.
 * Seeded, so a failure names a reproducible case.
 *
 * Needs `npm run build` first (spawns packages/cli/bin/tsimg.js).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { asTsimg, describeQemu, must, qemuImg, tempDir, tsimg } from '../../../test-images/qemu.js';

process.env.TZ = 'UTC';

let dir = '';
let cleanup = (): void => {};
let src = new Uint8Array(0);
let regions: Array<[number, number]> = [];

beforeAll(() => {
  ({ dir, cleanup } = tempDir('tsimg-info-fuzz-'));
  const img = join(dir, 'src.qcow2');
  must('qemu-img', ['create', '-f', 'raw', join(dir, 'base.raw'), '4M']);
  must('qemu-img', ['create', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', img]);
  must('qemu-img', ['snapshot', '-c', 's1', img]);
  must('qemu-img', ['bitmap', '--add', img, 'b0']);
  src = new Uint8Array(readFileSync(img));
  const v = new DataView(src.buffer);
  const snapshots = Number(v.getBigUint64(64));
  let bitmapDir = 0;
  for (let i = 112; i < 4096; i += 4) {
    if (v.getUint32(i) === 0x23852875) {
      bitmapDir = Number(v.getBigUint64(i + 24));
      break;
    }
  }
  regions = [[0, 112], [112, 1024], [snapshots, snapshots + 80], [bitmapDir, bitmapDir + 32]];
});

afterAll(() => cleanup());

/** A small deterministic PRNG (LCG), so every run builds the same mutants. */
function lcg(seed: number): () => number {
  let s = seed;
  return () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
}

describeQemu('tsimg info on damaged images matches qemu-img info', () => {
  const CASES = 40;
  for (let n = 0; n < CASES; n++) {
    it(`mutant ${n}`, () => {
      const rnd = lcg(1000 + n);
      const buf = src.slice();
      const k = 1 + Math.floor(rnd() * 3);
      for (let j = 0; j < k; j++) {
        const [a, b] = regions[Math.floor(rnd() * regions.length)]!;
        const off = a + Math.floor(rnd() * (b - a));
        buf[off] = rnd() < 0.5 ? Math.floor(rnd() * 256) : buf[off]! ^ (1 << Math.floor(rnd() * 8));
      }
      const name = `m${n}.qcow2`;
      writeFileSync(join(dir, name), buf);
      for (const args of [['info', name], ['info', '--output=json', name]]) {
        const q = qemuImg(args, { cwd: dir });
        const t = tsimg(args, { cwd: dir });
        expect({ stdout: t.stdout, stderr: t.stderr, status: t.status }).toEqual({
          stdout: q.stdout,
          stderr: asTsimg(q.stderr),
          status: q.status,
        });
      }
    });
  }
});
