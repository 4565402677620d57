/**
 * `tsimg snapshot` against qemu-img 7.2: the same command sequences (snapshots taken, applied
 * and deleted in any order, with qemu-io writes between them) run through qemu-img on one copy
 * of an image and through tsimg on another (snapshot-harness.ts), and every error case with
 * qemu's message and exit status. More layouts: snapshot-layouts.test.ts.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeQemu, must, qemuAsTsimg, qemuImg, shIn, tempDir, tsimg } from '../../../test-images/qemu.js';
import { makeBackingImage, maskDates, multiLevelCase } from './snapshot-harness.js';

describeQemu('tsimg snapshot: the same images as qemu-img snapshot', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-snapshot-'));
    makeBackingImage(dir);
  });
  afterAll(() => cleanup());

  for (const c of [
    { name: 'v3, lazy refcounts', options: 'compat=1.1,lazy_refcounts=on' },
    { name: 'v2', options: 'compat=0.10' },
    { name: 'extended L2', options: 'extended_l2=on' },
  ]) {
    it(`multi-level sequence, ${c.name}`, () => multiLevelCase(dir, c));
  }

  it('refcount_bits=1: every create fails as in qemu, leaking the same clusters', () => {
    const img = join(dir, 'rc1.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=1', img, '1M']);
    must('qemu-io', ['-c', 'write -P 1 0 128k', img]);
    const q = join(dir, 'q.qcow2');
    const t = join(dir, 't.qcow2');
    copyFileSync(img, q);
    copyFileSync(img, t);
    const theirs = qemuAsTsimg(qemuImg(['snapshot', '-c', 'x', q]));
    expect(theirs.stderr).toContain('-22 (Invalid argument)');
    expect(tsimg(['snapshot', '-c', 'x', t])).toEqual(theirs);
    expect(readFileSync(t).equals(readFileSync(q))).toBe(true);
  });

});

describeQemu('tsimg snapshot: messages and exit statuses as qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-snapshot-msg-'));
    must('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'r.raw'), '1M']);
    shIn(dir, 'qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=d.raw', 'df.qcow2', '1M');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'a.qcow2'), '1M']);
    must('qemu-img', ['snapshot', '-c', 's', join(dir, 'a.qcow2')]);
    must('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'bm.qcow2'), '1M']);
    must('qemu-img', ['snapshot', '-c', 's', join(dir, 'bm.qcow2')]);
    must('qemu-img', ['bitmap', '--add', join(dir, 'bm.qcow2'), 'b0']);
  });
  afterAll(() => cleanup());

  // Commands that leave the images as they were (failures, or no change at all).
  const cases: string[][] = [
    ['-l', 'r.raw'],
    ['-c', 'x', 'r.raw'],
    ['-a', 'x', 'r.raw'],
    ['-d', 'x', 'r.raw'],
    ['-l', 'df.qcow2'],
    ['-c', 'x', 'df.qcow2'],
    ['-a', 'x', 'df.qcow2'],
    ['-d', 'x', 'df.qcow2'],
    ['-a', 'nope', 'a.qcow2'],
    ['-d', 'nope', 'a.qcow2'],
    ['-d', '1', 'a.qcow2'],
    ['-a', 's', 'bm.qcow2'],
    ['-l', '-c', 'x', 'a.qcow2'],
    ['-U', '-c', 'x', 'a.qcow2'],
    ['-U', '-l', 'a.qcow2'],
    ['-l', 'a.qcow2'],
    ['a.qcow2'],
    ['-l'],
    ['-c'],
    ['-x', 'a.qcow2'],
    ['-l', 'a.qcow2', 'b.qcow2'],
    ['-l', 'missing.qcow2'],
    ['-c', 'x', 'missing.qcow2'],
    ['--image-opts', '-l', 'driver=qcow2,file.filename=a.qcow2'],
    ['-q', '-a', 'nope', 'a.qcow2'],
  ];
  for (const args of cases) {
    it(args.join(' '), () => {
      const theirs = maskDates(qemuAsTsimg(qemuImg(['snapshot', ...args], { cwd: dir })));
      expect(maskDates(tsimg(['snapshot', ...args], { cwd: dir }))).toEqual(theirs);
    });
  }

  it('persistent bitmaps stay valid across create and delete (qemu rewrites them; tsimg leaves them)', () => {
    copyFileSync(join(dir, 'bm.qcow2'), join(dir, 'bm2.qcow2'));
    expect(tsimg(['snapshot', '-c', 'more', 'bm2.qcow2'], { cwd: dir }).status).toBe(0);
    expect(tsimg(['snapshot', '-d', 's', 'bm2.qcow2'], { cwd: dir }).status).toBe(0);
    expect(qemuImg(['check', 'bm2.qcow2'], { cwd: dir }).stdout).toContain('No errors were found on the image.');
    const info = JSON.parse(qemuImg(['info', '--output=json', 'bm2.qcow2'], { cwd: dir }).stdout) as {
      'format-specific': { data: { bitmaps: { name: string; flags: string[] }[] } };
    };
    expect(info['format-specific'].data.bitmaps).toEqual([{ name: 'b0', flags: ['auto'], granularity: 65536 }]);
    expect(qemuImg(['snapshot', '-l', 'bm2.qcow2'], { cwd: dir }).stdout).toMatch(/^2 +more /m);
  });

  it('-f names the format (later qemu-img; 7.2 refuses the option)', () => {
    expect(tsimg(['snapshot', '-f', 'raw', '-c', 'x', 'r.raw'], { cwd: dir })).toEqual({
      stdout: '',
      stderr: "tsimg: Could not create snapshot 'x': -95 (Operation not supported)\n",
      status: 1,
    });
    const listed = tsimg(['snapshot', '-f', 'qcow2', '-l', 'a.qcow2'], { cwd: dir });
    expect(listed.status).toBe(0);
    expect(listed.stdout).toContain('Snapshot list:');
  });
});

