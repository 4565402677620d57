/**
 * Cross-checks of `tsimg compare` against `qemu-img compare` (QEMU 7.2): messages, exit statuses
 * (0 identical, 1 different, 2 open error, 3 block-status error, 4 read error), strict mode,
 * size mismatches, `-q` and the `-p` progress line, over qemu-made image pairs of different
 * formats and allocation. Needs `npm run build` first.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { corpus } from '../../../test-images/corpus.js';
import { copyWithCorruptL1, describeQemu, expectSameAsQemu, expectSameFailureAsQemu, pokeFile, shIn, tempDir } from '../../../test-images/qemu.js';

let dir = '';
let cleanup = (): void => {};

const sh = (cmd: string, ...args: string[]): void => shIn(dir, cmd, ...args);

/** Both tools' `compare` with `args`, in `cwd`: same stdout, stderr and status; returns tsimg's. */
function expectSame(args: string[], cwd = dir) {
  return expectSameAsQemu(['compare', ...args], cwd);
}

describeQemu('tsimg compare vs qemu-img compare', () => {
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-compare-'));
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'base.qcow2', '6M');
    sh('qemu-io', '-c', 'write -P 5 0 1M', '-c', 'write -P 6 2M 512k', 'base.qcow2');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', '8M');
    sh('qemu-io', '-c', 'write -P 7 512k 1M', '-c', 'write -z 3M 64k', '-c', 'write -c -P 9 4M 128k', 'top.qcow2');
    sh('qemu-img', 'convert', '-O', 'raw', 'top.qcow2', 'top.raw');
    sh('qemu-img', 'convert', '-O', 'qcow2', 'top.qcow2', 'flat.qcow2');
    sh('qemu-img', 'convert', '-c', '-O', 'qcow2', 'top.qcow2', 'comp.qcow2');
    sh('cp', 'top.raw', 'diff.raw');
    pokeFile(join(dir, 'diff.raw'), 4_200_000, Buffer.from('Q'));
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'empty8.qcow2', '8M');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'empty10.qcow2', '10M');
    sh('qemu-img', 'create', '-q', '-f', 'raw', 'big.raw', '10M');
    sh('cp', 'top.raw', 'tail.raw');
    sh('truncate', '-s', '10M', 'tail.raw');
    pokeFile(join(dir, 'tail.raw'), 9 * 1024 * 1024 + 777, Buffer.from('Z'));
    sh('cp', 'top.raw', 'pad.raw');
    sh('truncate', '-s', '10M', 'pad.raw');
  });
  afterAll(() => cleanup());

  it('exits 3 when block status fails (a corrupt L1 entry)', () => {
    copyWithCorruptL1(dir, 'flat.qcow2', 'corrupt.qcow2');
    expectSameFailureAsQemu(['compare', 'corrupt.qcow2', 'flat.qcow2'], dir);
    expectSameFailureAsQemu(['compare', 'flat.qcow2', 'corrupt.qcow2'], dir);
  });

  it('agrees on identical and different pairs of any formats', () => {
    const pairs = [
      ['top.qcow2', 'top.raw'],
      ['top.raw', 'top.qcow2'],
      ['top.qcow2', 'flat.qcow2'],
      ['top.qcow2', 'comp.qcow2'],
      ['top.qcow2', 'diff.raw'],
      ['comp.qcow2', 'diff.raw'],
      ['base.qcow2', 'top.qcow2'],
      ['empty8.qcow2', 'top.qcow2'],
      ['empty8.qcow2', 'empty8.qcow2'],
    ];
    for (const [a, b] of pairs) {
      expectSame([a!, b!]);
      expectSame(['-s', a!, b!]);
      expectSame(['-q', a!, b!]);
    }
    expect(expectSame(['top.qcow2', 'diff.raw']).stdout).toBe('Content mismatch at offset 4199936!\n');
    expectSame(['-f', 'qcow2', '-F', 'raw', 'top.qcow2', 'top.raw']);
    expectSame(['-f', 'raw', 'top.qcow2', 'top.raw']);
    expectSame(['--image-opts', 'driver=qcow2,file.filename=top.qcow2', 'driver=raw,file.filename=top.raw']);
    expectSame(['--image-opts', '-F', 'raw', 'top.qcow2', 'top.raw']);
  });

  it('handles size mismatches: a zero tail is identical, data in it is not', () => {
    for (const [a, b] of [
      ['empty8.qcow2', 'empty10.qcow2'],
      ['top.raw', 'pad.raw'],
      ['pad.raw', 'top.qcow2'],
      ['top.qcow2', 'tail.raw'],
      ['tail.raw', 'top.raw'],
      ['top.qcow2', 'big.raw'],
    ]) {
      expectSame([a!, b!]);
      expectSame(['-s', a!, b!]);
    }
  });

  it('prints the same progress line with -p', () => {
    const r = expectSame(['-p', 'top.qcow2', 'tail.raw']);
    expect(r.stdout.startsWith('    (0.00/100%)\r')).toBe(true);
    expectSame(['-p', 'top.qcow2', 'top.raw']);
    expectSame(['-p', '-q', 'top.qcow2', 'top.raw']);
    expectSame(['-p', 'top.qcow2', 'diff.raw']);
  });

  it('fails like qemu-img, with exit status 2 when an image cannot be opened', () => {
    expectSame(['top.qcow2', 'missing.qcow2']);
    expectSame(['missing.qcow2', 'top.qcow2']);
    expectSame(['-F', 'foo', 'top.qcow2', 'top.raw']);
    expectSame(['-T', 'bogus', 'top.qcow2', 'top.raw']);
    expectSame(['-T', 'off', 'top.qcow2', 'top.raw']);
    expectSame(['top.qcow2']);
    expectSame(['-x', 'a', 'b']);
    expectSame(['--strict', 'a', 'b']);
  });

  it('agrees over the corpus (each image against its raw copy, and against itself strictly)', async () => {
    const { dir: cdir, images } = await corpus();
    for (const img of images) {
      if (img.huge || img.format !== 'qcow2') continue;
      const raw = join(dir, `${img.file}.raw`);
      execFileSync('qemu-img', ['convert', '-O', 'raw', join(cdir, img.file), raw]);
      expectSame([img.file, raw], cdir);
      expectSame(['-s', img.file, raw], cdir);
      expectSame(['-s', img.file, img.file], cdir);
    }
    // ~50 images x 3 comparisons, each spawning both tools: minutes on a busy 2-core machine
  }, 300_000);
});
