/**
 * Cross-checks of `tsimg measure` against `qemu-img measure` (QEMU 7.2): sizes with every
 * creation option that changes the figures, image sources (allocation, backing chains, bitmaps,
 * snapshots), human and JSON output, and the error messages and exit statuses. Needs
 * `npm run build` first.
 */
import { afterAll, beforeAll, it } from 'vitest';
import { corpus } from '../../../test-images/corpus.js';
import { copyWithCorruptL1, describeQemu, expectSameAsQemu, expectSameFailureAsQemu, shIn, tempDir } from '../../../test-images/qemu.js';

let dir = '';
let cleanup = (): void => {};

const sh = (cmd: string, ...args: string[]): void => shIn(dir, cmd, ...args);

/** Both tools' `measure` with `args`, in `cwd`: same stdout, stderr and status. */
function expectSame(args: string[], cwd = dir): void {
  expectSameAsQemu(['measure', ...args], cwd);
}

describeQemu('tsimg measure vs qemu-img measure', () => {
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-measure-'));
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'src.qcow2', '100M');
    sh('qemu-io', '-c', 'write -P 1 0 1M', '-c', 'write -z 2M 1M', '-c', 'write -c -P 2 5M 256k', '-c', 'write -P 3 50M 3k', 'src.qcow2');
    sh('qemu-img', 'bitmap', '--add', 'src.qcow2', 'b1');
    sh('qemu-img', 'bitmap', '--add', '-g', '512', 'src.qcow2', 'a-longer-bitmap-name');
    sh('qemu-img', 'snapshot', '-c', 'snap1', 'src.qcow2');
    sh('qemu-io', '-c', 'write -P 4 10M 2M', 'src.qcow2');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'v2.qcow2', '10M');
    sh('qemu-io', '-c', 'write -P 1 0 100k', 'v2.qcow2');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'src.qcow2', '-F', 'qcow2', 'over.qcow2', '120M');
    sh('qemu-io', '-c', 'write -P 5 110M 64k', 'over.qcow2');
    sh('qemu-img', 'convert', '-O', 'raw', 'src.qcow2', 'src.raw');
  });
  afterAll(() => cleanup());

  it('fails on a corrupt L1 entry like qemu-img', () => {
    copyWithCorruptL1(dir, 'src.qcow2', 'corrupt.qcow2');
    expectSameFailureAsQemu(['measure', '-O', 'qcow2', 'corrupt.qcow2'], dir);
  });

  it('measures sizes with every option that changes the result', () => {
    const sizes = ['0', '512', '1000', '1M', '1G', '1.5G', '2T', '7.99999E', '9223372036854775807'];
    const opts = [
      undefined,
      'cluster_size=512',
      'cluster_size=2M,refcount_bits=64',
      'refcount_bits=1,cluster_size=4k',
      'extended_l2=on',
      'extended_l2=on,cluster_size=16k',
      'compat=0.10',
      'preallocation=metadata',
      'preallocation=full',
      'preallocation=falloc,extended_l2=on',
      'backing_file=x,lazy_refcounts=on,compression_type=zstd',
    ];
    for (const size of sizes) {
      expectSame(['--size', size]);
      expectSame(['-O', 'raw', '--output=json', '--size', size]);
      for (const o of opts) expectSame(['-O', 'qcow2', '--size', size, ...(o ? ['-o', o] : [])]);
    }
    expectSame(['-O', 'qcow2', '--output=json', '--size', '1G', '-o', 'cluster_size=64k', '-o', 'cluster_size=4k']);
  });

  it('measures image sources: allocation, chains, bitmaps, snapshots', () => {
    for (const src of ['src.qcow2', 'v2.qcow2', 'over.qcow2', 'src.raw']) {
      expectSame(['-O', 'qcow2', src]);
      expectSame(['-O', 'qcow2', '--output=json', '-o', 'cluster_size=4k', src]);
      expectSame(['-O', 'qcow2', '-o', 'compat=0.10', src]);
      expectSame(['-O', 'qcow2', '-o', 'backing_file=b', src]);
      expectSame(['-O', 'raw', src]);
    }
    expectSame(['-O', 'qcow2', '-f', 'raw', 'src.qcow2']);
    expectSame(['-O', 'qcow2', '-o', 'size=4P', 'src.qcow2']);
    expectSame(['-O', 'qcow2', '-o', 'size=1G', 'src.qcow2']);
    expectSame(['-O', 'qcow2', '--image-opts', 'driver=qcow2,file.filename=src.qcow2']);
    expectSame(['-O', 'qcow2', '--image-opts']);
    expectSame(['-O', 'qcow2', '-l', 'snap1', 'src.qcow2']);
    expectSame(['-O', 'qcow2', '-l', '1', 'src.qcow2']);
    expectSame(['-O', 'qcow2', '-l', 'snapshot.name=snap1', 'src.qcow2']);
    expectSame(['-O', 'qcow2', '-l', 'nope', 'src.qcow2']);
    expectSame(['-O', 'qcow2', '-l', 'x', 'src.raw']);
  });

  it('fails like qemu-img', () => {
    const cases = [
      [],
      ['-f', 'qcow2'],
      ['src.qcow2', '--size', '1G'],
      ['a', 'b'],
      ['--size', '1x'],
      ['--size', '-1'],
      ['--size', '8E'],
      ['--output=xml', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'size=5M'],
      ['-O', 'qcow2', '--size', '1G', '-o', 'cluster_size=3k'],
      ['-O', 'qcow2', '--size', '1G', '-o', 'cluster_size=512,extended_l2=on'],
      ['-O', 'qcow2', '--size', '1G', '-o', 'compat=0.10,refcount_bits=8'],
      ['-O', 'qcow2', '--size', '1G', '-o', 'compat=v2'],
      ['-O', 'qcow2', '--size', '1G', '-o', 'refcount_bits=3'],
      ['-O', 'qcow2', '--size', '1G', '-o', 'preallocation=bogus'],
      ['-O', 'qcow2', '--size', '1G', '-o', 'bogus=1'],
      ['-O', 'qcow2', '--size', '1G', '-o', 'cluster_size=abc'],
      ['-O', 'qcow2', '--size', '1G', '-o', 'refcount_bits=16k'],
      ['-O', 'qcow2', '--size', '1G', '-o', 'extended_l2=maybe'],
      ['-O', 'qcow2', '--size', '1G', '-o', ','],
      ['-O', 'qcow2', '--size', '4P'],
      ['-O', 'raw', '--size', '1G', '-o', 'cluster_size=64k'],
      ['-O', 'vmdk', '--size', '1G'],
      ['-O', 'http', '--size', '1G'],
      ['-O', 'foo', '--size', '1G'],
      ['-O', 'luks', '--size', '1G'],
      ['missing.qcow2'],
    ];
    for (const c of cases) expectSame(c);
  });

  it('matches over the corpus', async () => {
    const { dir: cdir, images } = await corpus();
    for (const img of images) {
      expectSame(['-O', 'qcow2', '--output=json', img.file], cdir);
      expectSame(['-O', 'qcow2', '-o', 'cluster_size=2M', img.file], cdir);
    }
  });
});
