/**
 * `tsimg snapshot` against qemu-img 7.2 on more image layouts (snapshot-harness.ts compares
 * every step and the images byte for byte, dates masked): small clusters with wide refcounts,
 * compressed clusters, a backing file, a snapshot table that spans several clusters, and
 * snapshots of another disk size than the image's.
 */
import { afterAll, beforeAll, it } from 'vitest';

import { join } from 'node:path';
import { describeQemu, must, tempDir } from '../../../test-images/qemu.js';
import { makeBackingImage, multiLevelCase, runBoth, type Step } from './snapshot-harness.js';

describeQemu('tsimg snapshot: more layouts, the same images as qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-snapshot-layouts-'));
    makeBackingImage(dir);
  });
  afterAll(() => cleanup());

  for (const c of [
    { name: '512-byte clusters, 64-bit refcounts', options: 'cluster_size=512,refcount_bits=64' },
    { name: 'compressed clusters (zstd)', options: 'compression_type=zstd', compressed: true },
    { name: 'backing file', options: 'backing_file=bk.qcow2,backing_fmt=qcow2' },
  ]) {
    it(`multi-level sequence, ${c.name}`, () => multiLevelCase(dir, c));
  }

  it('a snapshot table over several clusters, names with odd bytes, the last one deleted', async () => {
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', join(dir, 'many.qcow2'), '1M']);
    const steps: Step[] = [];
    for (let i = 0; i < 12; i++) steps.push({ snap: ['-c', `snapshot-with-a-long-name-${i}`] });
    steps.push({ snap: ['-c', 'ünïcödé-name'] }, { snap: ['-c', 'x'.repeat(300)] }, { snap: ['-l'] });
    for (let i = 11; i >= 0; i -= 2) steps.push({ snap: ['-d', `snapshot-with-a-long-name-${i}`] });
    steps.push({ snap: ['-l'] });
    await runBoth(dir, 'many.qcow2', steps);
  });

  for (const [what, size] of [['grown', '8M'], ['shrunk', '2M']] as const) {
    it(`applying a snapshot of another disk size (image ${what} since) resizes as qemu does`, async () => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'sized.qcow2'), '4M']);
      must('qemu-io', ['-c', 'write -P 1 0 3M', join(dir, 'sized.qcow2')]);
      must('qemu-img', ['snapshot', '-c', 's', join(dir, 'sized.qcow2')]);
      must('qemu-img', ['resize', '-q', ...(size === '2M' ? ['--shrink'] : []), join(dir, 'sized.qcow2'), size]);
      await runBoth(dir, 'sized.qcow2', [{ io: ['write -P 2 1M 64k'] }, { snap: ['-a', 's'] }, { snap: ['-l'] }]);
    });
  }

  it('deleting every snapshot leaves the header as qemu leaves it', async () => {
    must('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'one.qcow2'), '1M']);
    must('qemu-io', ['-c', 'write -P 7 0 192k', join(dir, 'one.qcow2')]);
    await runBoth(dir, 'one.qcow2', [{ snap: ['-c', 'a'] }, { io: ['write -P 8 64k 64k'] }, { snap: ['-c', 'b'] }, { snap: ['-d', 'a'] }, { snap: ['-d', 'b'] }]);
  });
});

