/**
 * Cross-checks of `tsimg resize` against `qemu-img resize` (QEMU 7.2), continued from
 * resize.test.ts: backing files (the new area zeroed where the backing file would show), external
 * data files, snapshots, compressed clusters, raw files with each preallocation mode, and the
 * command line: qemu's argument quirks (the size is taken off the end first), its refusals,
 * messages and exit statuses. Files must stay byte-identical. Needs `npm run build` first.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu } from '../../../test-images/qemu.js';
import { ResizeBench } from './resize-harness.js';

let bench: ResizeBench;
const expectAllSame = (setup: string, argLists: string[][]): void => bench.expectAllSame(setup, argLists);

/**
 * Sets the in-use flag of every bitmap in `file`'s directory (its one extension of type
 * 0x23852875 after the 104-byte v3 header), as a qemu that died with the image open leaves it.
 */
function markBitmapsInUse(file: string): void {
  const fd = openSync(file, 'r+');
  try {
    const head = Buffer.alloc(4096);
    readSync(fd, head, 0, head.length, 0);
    let off = head.readUInt32BE(100);
    while (head.readUInt32BE(off) !== 0x23852875) off += 8 + Math.ceil(head.readUInt32BE(off + 4) / 8) * 8;
    const count = head.readUInt32BE(off + 8);
    const dirOffset = Number(head.readBigUInt64BE(off + 24));
    const dir = Buffer.alloc(Number(head.readBigUInt64BE(off + 16)));
    readSync(fd, dir, 0, dir.length, dirOffset);
    let e = 0;
    for (let i = 0; i < count; i++) {
      dir.writeUInt32BE(dir.readUInt32BE(e + 12) | 1, e + 12);
      e += Math.ceil((24 + dir.readUInt16BE(e + 18) + dir.readUInt32BE(e + 20)) / 8) * 8;
    }
    writeSync(fd, dir, 0, dir.length, dirOffset);
  } finally {
    closeSync(fd);
  }
}

const WRITE_SOME = "qemu-io -c 'write -P 1 0 300k' -c 'write -P 3 900k 5k' a.qcow2";

describeQemu('tsimg resize vs qemu-img resize: chains, data files, raw, command line', () => {
  beforeAll(() => {
    bench = new ResizeBench('tsimg-resize-cli-');
  });
  afterAll(() => bench.cleanup());

  it('zeroes what a longer backing file would show in the new area', () => {
    const backing = "qemu-img create -f qcow2 b.qcow2 4M && qemu-io -c 'write -P 7 0 4M' b.qcow2";
    for (const [opts, size] of [['', '1M'], ['', '1000k'], ['extended_l2=on,', '1000k']] as const) {
      expectAllSame(`${backing} && qemu-img create -f qcow2 -o ${opts}backing_file=b.qcow2,backing_fmt=qcow2 o.qcow2 ${size} && qemu-io -c 'write -P 2 900k 6k' o.qcow2`, [
        ['o.qcow2', '+1M'],
        ['o.qcow2', '8M'],
        ['--preallocation=metadata', 'o.qcow2', '3M'],
        ['--preallocation=falloc', 'o.qcow2', '3M'],
        ['--preallocation=full', 'o.qcow2', '5M'],
        ['--shrink', 'o.qcow2', '512k'],
      ]);
    }
    // A shorter backing file needs no zeroes; a raw one is zeroed over like a qcow2 one.
    expectAllSame('qemu-img create -f qcow2 b.qcow2 1M && qemu-img create -f qcow2 -b b.qcow2 -F qcow2 o.qcow2 4M', [
      ['o.qcow2', '8M'],
      ['--shrink', 'o.qcow2', '512k'],
    ]);
    expectAllSame('qemu-img create -f raw b.raw 4M && qemu-img create -f qcow2 -b b.raw -F raw o.qcow2 1M', [
      ['o.qcow2', '8M'],
      ['--preallocation=falloc', 'o.qcow2', '8M'],
    ]);
    // v2 cannot store zero clusters: qemu's "Failed to zero out new clusters".
    expectAllSame('qemu-img create -f qcow2 b.qcow2 4M && qemu-img create -f qcow2 -o compat=0.10,backing_file=b.qcow2,backing_fmt=qcow2 o.qcow2 1M', [
      ['o.qcow2', '+1M'],
      ['--preallocation=metadata', 'o.qcow2', '3M'],
    ]);
  });

  it('resizes external data files with the image', () => {
    for (const raw of ['off', 'on']) {
      expectAllSame(`qemu-img create -f qcow2 -o data_file=d.raw,data_file_raw=${raw} a.qcow2 1M && ${WRITE_SOME}`, [
        ['a.qcow2', '+1M'],
        ['--shrink', 'a.qcow2', '100K'],
        ['--preallocation=metadata', 'a.qcow2', '3M'],
        ['--preallocation=falloc', 'a.qcow2', '3M'],
        ['--preallocation=full', 'a.qcow2', '3M'],
        ['--preallocation=metadata', 'a.qcow2', '+1001k'],
      ]);
    }
    // An exact resize cuts a data file that is longer than the image, even to the same size.
    expectAllSame('qemu-img create -f qcow2 -o data_file=d.raw a.qcow2 1M && truncate -s 5M d.raw', [
      ['a.qcow2', '+0'],
      ['a.qcow2', '2M'],
    ]);
  });

  it('keeps snapshots and compressed clusters as qemu does', () => {
    expectAllSame(`qemu-img create -f qcow2 a.qcow2 1M && ${WRITE_SOME} && qemu-img snapshot -c s1 a.qcow2 && qemu-io -c 'write -P 2 0 900k' a.qcow2`, [
      ['a.qcow2', '+1M'],
      ['--shrink', 'a.qcow2', '100K'],
      ['--preallocation=metadata', 'a.qcow2', '3M'],
    ]);
    // v2 images with snapshots cannot be resized.
    expectAllSame('qemu-img create -f qcow2 -o compat=0.10 a.qcow2 1M && qemu-img snapshot -c s1 a.qcow2', [
      ['a.qcow2', '+1M'],
      ['--shrink', 'a.qcow2', '100K'],
    ]);
    expectAllSame("qemu-img create -f qcow2 a.qcow2 1M && qemu-io -c 'write -c -P 1 0 64k' -c 'write -c -P 2 512k 64k' -c 'write -c -P 3 960k 64k' a.qcow2", [
      ['--shrink', 'a.qcow2', '100K'],
      ['--shrink', 'a.qcow2', '600k'],
    ]);
  });

  it('stores persistent bitmaps again at the new size, as qemu does when it closes the image', () => {
    const bitmaps =
      "qemu-img create -f qcow2 a.qcow2 1M && qemu-io -c 'write -P 1 0 64k' a.qcow2 && qemu-img bitmap --add a.qcow2 bm0 && " +
      "qemu-img bitmap --add -g 512 --disable a.qcow2 bm1 && qemu-io -c 'write -P 2 128k 64k' -c 'write -P 3 900k 4k' a.qcow2";
    expectAllSame(bitmaps, [
      ['a.qcow2', '+1M'],
      ['--shrink', 'a.qcow2', '512k'],
      ['--preallocation=metadata', 'a.qcow2', '3M'],
      ['--preallocation=falloc', 'a.qcow2', '3M'],
      ['a.qcow2', '5G'],
      ['a.qcow2', '+0'],
      // Refused after the open, as qemu-img refuses: qemu still stores the bitmaps again.
      ['a.qcow2', '+1000'],
      ['a.qcow2', '-512k'],
      ['a.qcow2', '-2M'],
      ['--preallocation=full', 'a.qcow2', '1M'],
      ['a.qcow2', '9223372036854775296'],
    ]);
    // A bitmap left in use (inconsistent) makes qemu refuse the resize.
    const src = bench.fixture('qemu-img create -f qcow2 a.qcow2 1M && qemu-img bitmap --add a.qcow2 bm0');
    markBitmapsInUse(join(src, 'a.qcow2'));
    expect(bench.expectSameResize(src, ['a.qcow2', '2M']).stderr).toContain("Bitmap 'bm0' is inconsistent and cannot be used");
  });

  it('resizes raw files with each preallocation mode', () => {
    expectAllSame('echo hello > r.raw && truncate -s 1000 r.raw', [
      ['r.raw', '+1M'],
      ['-f', 'raw', 'r.raw', '+1M'],
      ['-f', 'raw', 'r.raw', '+0'],
      ['-f', 'raw', 'r.raw', '1025'],
      ['-f', 'raw', 'r.raw', '1000'],
      ['-f', 'raw', '--shrink', 'r.raw', '100'],
      ['--preallocation=full', '-f', 'raw', 'r.raw', '1M'],
      ['--preallocation=falloc', '-f', 'raw', 'r.raw', '2M'],
      ['--preallocation=metadata', '-f', 'raw', 'r.raw', '3M'],
      ['-f', 'raw', 'r.raw', '7E'],
      ['-f', 'raw', 'r.raw', '1P'],
      ['--image-opts', 'driver=raw,file.filename=r.raw', '5M'],
      ['--image-opts', 'file.filename=r.raw', '5M'],
    ]);
    expectAllSame('touch e.raw', [['-f', 'raw', 'e.raw', '1M'], ['-f', 'raw', '--preallocation=falloc', 'e.raw', '1M'], ['e.raw', '1M']]);
  });

  it('parses the command line and refuses what qemu-img refuses, with its messages', () => {
    expectAllSame('qemu-img create -f qcow2 a.qcow2 1M', [
      [],
      ['a.qcow2'],
      ['-f'],
      ['-q', '-q'],
      ['nonexist', '1M'],
      ['-f', 'foo', 'a.qcow2', '1M'],
      ['-z', 'a.qcow2', '1M'],
      ['--bogus', 'a.qcow2', '1M'],
      ['--preallocation=bad', 'a.qcow2', '2M'],
      ['--preallocation', 'a.qcow2', '2M'],
      ['a.qcow2', 'b', '2M'],
      ['--shrink'],
      ['a.qcow2', '--shrink'],
      ['a.qcow2', 'abc'],
      ['a.qcow2', '1.5'],
      ['a.qcow2', '+-1M'],
      ['a.qcow2', '99999999999999999999'],
      ['a.qcow2', '18446744073709551615'],
      ['a.qcow2', '-1M'],
      ['a.qcow2', '-512K'],
      ['a.qcow2', '0'],
      ['a.qcow2', '-8E'],
      ['a.qcow2', '+8E'],
      ['a.qcow2', '9E'],
      ['a.qcow2', '7E'],
      ['a.qcow2', '9223372036854775296'],
      ['a.qcow2', '+1000'],
      ['a.qcow2', '1023'],
      ['a.qcow2', '+1M', '--'],
      ['a.qcow2', '--', '+1M'],
      ['--', 'a.qcow2', '+1M'],
      ['a.qcow2', '-0'],
      ['a.qcow2', '0x500000'],
      ['a.qcow2', '6.5M'],
      ['-q', 'a.qcow2', '7M'],
      ['--shr', '--pre=full', 'a.qcow2', '2M'],
      ['--preallocation=metadata', '--shrink', 'a.qcow2', '512K'],
      ['--sh', 'a.qcow2', '-1k'],
      ['-U', 'a.qcow2', '2M'],
      ['--image-opts', '-f', 'qcow2', 'a.qcow2', '4M'],
      ['--image-opts', 'driver=qcow2,file.filename=a.qcow2', '8M'],
      ['--image-opts', 'a.qcow2', '5M'],
      ['--object', 'secret,id=s0,data=x', 'a.qcow2', '+1M'],
      ['-f', 'raw', 'a.qcow2', '+1M'],
      ['-fraw', '-q', 'a.qcow2', '2M'],
    ]);
    // A backing file or data file that cannot be opened fails the open; so does a corrupt
    // image; a dirty one (lazy refcounts) is repaired first.
    expectAllSame('qemu-img create -f qcow2 -u -b nope.qcow2 -F qcow2 a.qcow2 1M', [['a.qcow2', '2M']]);
    expectAllSame('qemu-img create -f qcow2 -o data_file=d.raw a.qcow2 1M && rm d.raw', [['a.qcow2', '2M']]);
    const setIncompatible = (bits: string): string => `printf '\\000\\000\\000\\000\\000\\000\\000\\00${bits}' | dd of=a.qcow2 bs=1 seek=72 conv=notrunc`;
    const corrupt = bench.fixture(`qemu-img create -f qcow2 a.qcow2 1M && ${setIncompatible('2')}`);
    expect(bench.expectSameResize(corrupt, ['a.qcow2', '2M']).stderr).toMatch(/corrupt/);
    expectAllSame(`qemu-img create -f qcow2 -o lazy_refcounts=on a.qcow2 1M && ${WRITE_SOME} && ${setIncompatible('1')}`, [['a.qcow2', '2M']]);
  });
});
