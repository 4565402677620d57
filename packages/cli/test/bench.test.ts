/**
 * `tsimg bench` against qemu-img 7.2's: the same lines (the run time masked), messages and exit
 * statuses for every option check, and write runs that leave the same guest data (offsets,
 * steps, wrapping, pattern) in copies of one image.
 */
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuAsTsimg, qemuImg, tempDir, tsimg } from '../../../test-images/qemu.js';

const masked = (s: string) => s.replace(/Run completed in \d+\.\d{3} seconds\./, 'Run completed in X seconds.');

describeQemu('tsimg bench matches qemu-img bench', () => {
  let work: { dir: string; cleanup: () => void };
  beforeAll(() => {
    work = tempDir('tsimg-bench-');
    qemuImg(['create', '-q', '-f', 'qcow2', join(work.dir, 'b.qcow2'), '1M']);
    qemuImg(['create', '-q', '-f', 'raw', join(work.dir, 'b.raw'), '1M']);
  });
  afterAll(() => work.cleanup());

  const cases: string[][] = [
    ['-c', '10', 'b.qcow2'],
    ['-c', '10', '-q', 'b.raw'],
    ['-c', '100', '-d', '4', '-s', '512', '-S', '1k', '-o', '4k', 'b.qcow2'],
    ['-c', '10', '-s', '3', 'b.qcow2'],
    ['-c', '10', '-S', '1M', 'b.qcow2'],
    ['-c', '0', 'b.qcow2'],
    ['-c', '10', '-t', 'none', 'b.qcow2'],
    ['-c', '10', '-n', '-t', 'none', 'b.qcow2'],
    ['-c', '10', '-i', 'threads', 'b.qcow2'],
    ['-c', '10', '-f', 'raw', 'b.qcow2'],
    ['-c', '20', '-w', '--flush-interval=8', '-d', '4', 'b.qcow2'],
    ['-c', '20', '-w', '--flush-interval=5', '--no-drain', '-d', '5', 'b.qcow2'],
    ['-c', '10', '-w', '--flush-interval=2', '-d', '4', 'b.qcow2'],
    ['-c', '10', '--flush-interval=8', 'b.qcow2'],
    ['-c', 'x', 'b.qcow2'],
    ['-d', '-1', 'b.qcow2'],
    ['-c', '10', '-o', '1M', 'b.qcow2'],
    // wraps onto 992k, where 64k reach past the end
    ['-w', '-c', '50', '-s', '64k', '-S', '96k', '--flush-interval=64', 'b.raw'],
    ['-c', '10', '-o', '1048064', 'b.qcow2'],
    ['-c', '10', '-n', 'b.qcow2'],
    ['-c', '10', '-i', 'foo', 'b.qcow2'],
    ['-c', '10', '-t', 'foo', 'b.qcow2'],
    ['-c', '10', '--pattern=256', 'b.qcow2'],
    ['-c', '10', '-s', '2G', 'b.qcow2'],
    ['-c', '10', '-s', 'x', 'b.qcow2'],
    ['-c', '10'],
    ['-c', '10', 'nosuch.qcow2'],
    ['-c', '10', '-x', 'b.qcow2'],
    ['-c', '10', '--image-opts', 'driver=qcow2,file.filename=b.qcow2'],
  ];
  it.each(cases.map((c) => [c.join(' '), c] as const))('%s', (_label, args) => {
    const theirs = qemuAsTsimg(qemuImg(['bench', ...args], { cwd: work.dir }));
    const ours = tsimg(['bench', ...args], { cwd: work.dir });
    expect({ ...ours, stdout: masked(ours.stdout) }).toEqual({ ...theirs, stdout: masked(theirs.stdout) });
  });

  it('write runs leave what qemu-img bench leaves', () => {
    const runs = [
      ['-w', '-c', '300', '-d', '7', '-s', '512', '-S', '3k', '-o', '5k', '--pattern=0x5a'],
      ['-w', '-c', '50', '-s', '64k', '-S', '192k', '--pattern=7', '--flush-interval=64'],
    ];
    for (const [i, args] of runs.entries()) {
      for (const fmt of ['qcow2', 'raw']) {
        const q = join(work.dir, `q${i}.${fmt}`);
        const t = join(work.dir, `t${i}.${fmt}`);
        copyFileSync(join(work.dir, `b.${fmt}`), q);
        copyFileSync(join(work.dir, `b.${fmt}`), t);
        expect(qemuImg(['bench', '-f', fmt, ...args, q]).status).toBe(0);
        expect(tsimg(['bench', '-f', fmt, ...args, t]).status).toBe(0);
        const cmp = qemuImg(['compare', '-f', fmt, '-F', fmt, q, t]);
        expect(cmp.stdout + cmp.stderr, `${fmt} ${args.join(' ')}`).toBe('Images are identical.\n');
        expect(qemuImg(['compare', '-f', fmt, '-F', fmt, join(work.dir, `b.${fmt}`), t]).status, 'the run wrote something').toBe(1);
      }
    }
  });
});
