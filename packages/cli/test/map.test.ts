/**
 * Cross-checks of `tsimg map` against `qemu-img map` (QEMU 7.2): same stdout, same stderr (with
 * "qemu-img" read as "tsimg") and same exit status, human and JSON, over a matrix of images made
 * by qemu-img / qemu-io (data, zero, compressed and unallocated clusters, backing chains with a
 * short backing file, an external data file, partly written clusters, sparse and odd-sized raw
 * files) and over the shared corpus. Needs `npm run build` first.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { corpus } from '../../../test-images/corpus.js';
import { copyWithCorruptL1, describeQemu, expectSameAsQemu, expectSameFailureAsQemu, pokeFile, shIn, tempDir } from '../../../test-images/qemu.js';

let dir = '';
let cleanup = (): void => {};

const sh = (cmd: string, ...args: string[]): void => shIn(dir, cmd, ...args);

/** Both tools with `args` (`map` included), in `cwd`: same stdout, stderr and status. */
function expectSame(args: string[], cwd = dir): void {
  expectSameAsQemu(args, cwd);
}

const IMAGES: string[] = [];

describeQemu('tsimg map vs qemu-img map', () => {
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-map-'));
    const io = (img: string, ...cmds: string[]) => sh('qemu-io', ...cmds.flatMap((c) => ['-c', c]), img);

    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'mixed.qcow2', '8M');
    io('mixed.qcow2', 'write -P 1 0 64k', 'write -z 128k 64k', 'write -c -P 2 256k 64k', 'write -c -P 3 320k 64k',
      'write -P 4 1M 4k', 'write -P 5 2M 1M', 'write -z 7M 1M');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'nocomp.qcow2', '4M');
    io('nocomp.qcow2', 'write -P 1 0 64k', 'write -z 128k 64k', 'write -P 9 3M 512');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'base.qcow2', '2M');
    io('base.qcow2', 'write -P 7 0 1M');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'mid.qcow2', '3M');
    io('mid.qcow2', 'write -P 8 512k 256k', 'write -z 1536k 64k');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', 'top.qcow2', '4M');
    io('top.qcow2', 'write -P 9 64k 64k', 'write -z 2560k 64k');
    sh('qemu-img', 'create', '-q', '-f', 'raw', 'rawbase.raw', '1M');
    pokeFile(join(dir, 'rawbase.raw'), 100000, Buffer.alloc(5000, 1));
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'rawbase.raw', '-F', 'raw', 'overraw.qcow2', '2M');
    io('overraw.qcow2', 'write -P 3 0 4k');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=ext.data', 'ext.qcow2', '2M');
    io('ext.qcow2', 'write -P 1 0 64k', 'write -P 2 1M 128k');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', 'prealloc.qcow2', '1M');
    io('prealloc.qcow2', 'write -P 1 64k 4k');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', 'small.qcow2', '1M');
    io('small.qcow2', 'write -P 1 0 5k', 'write -P 2 300k 1k');
    writeFileSync(join(dir, 'sparse.raw'), '');
    sh('truncate', '-s', '16M', 'sparse.raw');
    pokeFile(join(dir, 'sparse.raw'), 3 * 1024 * 1024, Buffer.alloc(10000, 2));
    pokeFile(join(dir, 'sparse.raw'), 9 * 1024 * 1024 + 123, Buffer.from('data'));
    writeFileSync(join(dir, 'odd.raw'), Buffer.alloc(1000, 5));
    writeFileSync(join(dir, 'empty.raw'), '');
    IMAGES.push('mixed.qcow2', 'nocomp.qcow2', 'base.qcow2', 'mid.qcow2', 'top.qcow2', 'overraw.qcow2', 'ext.qcow2',
      'prealloc.qcow2', 'small.qcow2', 'sparse.raw', 'odd.raw', 'empty.raw');
  });
  afterAll(() => cleanup());

  it('fails on a corrupt L1 entry like qemu-img', () => {
    copyWithCorruptL1(dir, 'nocomp.qcow2', 'corrupt.qcow2');
    expectSameFailureAsQemu(['map', '--output=json', 'corrupt.qcow2'], dir);
    expectSameFailureAsQemu(['map', 'corrupt.qcow2'], dir);
  });

  it('prints the same extents, human and JSON, for every image', () => {
    for (const img of IMAGES) {
      expectSame(['map', img]);
      expectSame(['map', '--output=json', img]);
    }
  });

  it('honours --start-offset and --max-length, including past the end', () => {
    for (const img of ['mixed.qcow2', 'top.qcow2', 'sparse.raw']) {
      expectSame(['map', '--output=json', '--start-offset=100k', '--max-length', '1M', img]);
      expectSame(['map', '-s', '1000', '-l', '3000000', img]);
      expectSame(['map', '--output=json', '-s', '100M', img]);
      expectSame(['map', '-s', '100M', img]);
      expectSame(['map', '--output=json', '-l', '0', img]);
    }
  });

  it('reads the image with an explicit format, and as raw', () => {
    expectSame(['map', '-f', 'qcow2', '--output=json', 'top.qcow2']);
    expectSame(['map', '-f', 'raw', '--output=json', 'nocomp.qcow2']);
    expectSame(['map', '-U', '--output', 'json', 'nocomp.qcow2']);
    expectSame(['map', '--output=json', '--image-opts', 'driver=qcow2,file.filename=top.qcow2']);
    expectSame(['map', '--output=json', '--image-opts', 'driver=raw,file.filename=top.qcow2']);
    expectSame(['map', '--image-opts', 'driver=qcow2,file.filename=missing.qcow2']);
    expectSame(['map', '--image-opts', '-f', 'qcow2', 'driver=qcow2,file.filename=top.qcow2']);
  });

  it('fails like qemu-img', () => {
    expectSame(['map']);
    expectSame(['map', 'a', 'b']);
    expectSame(['map', 'missing.qcow2']);
    expectSame(['map', '--output=xml', 'mixed.qcow2']);
    expectSame(['map', '-s', 'x', 'mixed.qcow2']);
    expectSame(['map', '-l', '-5', 'mixed.qcow2']);
    expectSame(['map', '-s']);
    expectSame(['map', '--bogus', 'mixed.qcow2']);
    expectSame(['map', '-x', 'mixed.qcow2']);
    expectSame(['map', '-f', 'foo', 'mixed.qcow2']);
  });

  it('stops at a compressed cluster in human output with qemu-img\'s message', () => {
    // qemu's stdout is block-buffered when piped, so only the streams are compared, not their order.
    const ours = expectSameAsQemu(['map', 'mixed.qcow2'], dir);
    expect(ours.stderr).toBe('tsimg: File contains external, encrypted or compressed clusters.\n');
    expect(ours.status).toBe(1);
  });

  it('maps a 4 TiB sparse image quickly (no unallocated range is read)', () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'huge.qcow2', '4T');
    sh('qemu-io', '-c', 'write -P 1 3T 64k', 'huge.qcow2');
    const t0 = Date.now();
    expectSame(['map', '--output=json', 'huge.qcow2']);
    expect(Date.now() - t0).toBeLessThan(20_000);
  });
});

describeQemu('tsimg map vs qemu-img map over the corpus', () => {
  it('matches for every corpus image', async () => {
    const { dir: cdir, images } = await corpus();
    for (const img of images) {
      expectSame(['map', '--output=json', img.file], cdir);
      if (!img.huge) expectSame(['map', img.file], cdir);
    }
    // ~400 processes one after another: ~40 s on this 2-core machine, more under load.
  }, 240_000);
});
