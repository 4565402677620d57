/**
 * Metadata tables the image points at past the end of its file: qemu reads them through
 * bdrv_pread, which fails (EIO) only past BDRV_MAX_LENGTH and otherwise gets zeroes from
 * file-posix past EOF — an L2 table out there is an empty table, also beyond 2^53. qcow2's own
 * checks stay: an unaligned L2 table, an unaligned cluster allocation offset (also under
 * unallocated subclusters of extended L2 entries) mark the image corrupt and fail with EIO.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImage } from '@tsimg/image';
import { describeQemu, expectSameAsQemu, expectSameFailureAsQemu, pokeFile, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';

function be64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
}

/** File offset of the first L1 entry of a qcow2 image. */
function l1Offset(file: string): number {
  return Number(readFileSync(file).readBigUInt64BE(40));
}

describeQemu('metadata past the end of the file', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-past-eof-'));
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', join(dir, 'std.qcow2'), '4M']);
    qemuIo(['-c', 'write -P 0xab 0 64k', '-c', 'write -P 0xcd 3M 64k', join(dir, 'std.qcow2')]);
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=32768,extended_l2=on', join(dir, 'ext.qcow2'), '4M']);
    qemuIo(['-c', 'write -P 0xab 0 64k', join(dir, 'ext.qcow2')]);
  });
  afterAll(() => cleanup());

  /** A copy of std.qcow2 whose first L1 entry is `entry`. */
  function withL1(name: string, entry: bigint): string {
    const f = join(dir, name);
    copyFileSync(join(dir, 'std.qcow2'), f);
    pokeFile(f, l1Offset(f), be64(entry));
    return f;
  }

  for (const [name, entry] of [
    ['l2-past-eof.qcow2', 0x8000_0000_1000_0000n], // 256 MiB: past EOF, a device can read there
    ['l2-past-2-53.qcow2', 0x80f0_0000_0000_0000n], // 2^55 + ...: no device offset, still < BDRV_MAX_LENGTH
  ] as const) {
    it(`an L2 table at ${name}: an empty table, as qemu-img map / convert read it`, async () => {
      withL1(name, entry);
      expectSameAsQemu(['map', '--output=json', name], dir);
      expectSameAsQemu(['convert', '-O', 'raw', name, `${name}.raw`], dir);
      const img = await openImage(join(dir, name), { readOnly: true });
      try {
        // One L2 table maps the whole 4 MiB: all of it now reads as zeroes.
        const buf = new Uint8Array(4 * 1024 * 1024).fill(1);
        await img.read(0, buf);
        expect(buf.every((b) => b === 0)).toBe(true);
      } finally {
        await img.close();
      }
    });
  }

  /** A copy of std.qcow2 whose L2 entry `index` (of the first table) is `entry`. */
  function withL2Entry(name: string, index: number, entry: bigint): string {
    const f = join(dir, name);
    copyFileSync(join(dir, 'std.qcow2'), f);
    const l2 = Number(readFileSync(f).readBigUInt64BE(l1Offset(f)) & 0x00ff_ffff_ffff_fe00n);
    pokeFile(f, l2 + index * 8, be64(entry));
    return f;
  }

  for (const [name, host] of [
    ['data-past-2-53.qcow2', 0x0040_0000_0000_0000n], // 2^54: no device offset, below qemu's 2^56
    ['data-near-2-56.qcow2', 0x00ff_ffff_fff0_0000n],
  ] as const) {
    it(`a data cluster at ${name}: zeroes past the end of the file, as qemu reads it`, () => {
      withL2Entry(name, 1, (1n << 63n) | host);
      expectSameAsQemu(['map', '--output=json', name], dir);
      expectSameAsQemu(['map', name], dir);
      expectSameAsQemu(['convert', '-O', 'raw', name, `${name}.raw`], dir);
      expectSameAsQemu(['compare', name, `${name}.raw`], dir);
    });
  }

  it('an unaligned L2 table past 2^53 is still corrupt (qemu checks alignment, not the offset)', () => {
    withL1('l2-unaligned-far.qcow2', 0x80f0_0000_0000_0200n);
    expectSameFailureAsQemu(['map', '--output=json', 'l2-unaligned-far.qcow2'], dir);
    expectSameFailureAsQemu(['convert', '-O', 'raw', 'l2-unaligned-far.qcow2', 'l2-unaligned-far.raw'], dir);
  });

  /** A copy of ext.qcow2 whose L2 entry `index` (of the first table) is `entry` with bitmap `bitmap`. */
  function withExtEntry(name: string, index: number, entry: bigint, bitmap: bigint): string {
    const f = join(dir, name);
    copyFileSync(join(dir, 'ext.qcow2'), f);
    const l2 = Number(readFileSync(f).readBigUInt64BE(l1Offset(f)) & 0x00ff_ffff_ffff_fe00n);
    pokeFile(f, l2 + index * 16, Buffer.concat([be64(entry), be64(bitmap)]));
    return f;
  }

  it('extended L2: an unaligned host cluster under unallocated subclusters is corrupt, as in qemu', () => {
    withExtEntry('ext-unaligned.qcow2', 5, 0x0000_1234_5678_3000n, 0n);
    expectSameFailureAsQemu(['map', '--output=json', 'ext-unaligned.qcow2'], dir);
    expectSameFailureAsQemu(['convert', '-O', 'raw', 'ext-unaligned.qcow2', 'ext-unaligned.raw'], dir);
  });

  it('extended L2: an aligned host cluster under unallocated subclusters, far past EOF, maps as qemu maps it', () => {
    withExtEntry('ext-unalloc-alloc.qcow2', 5, 0x0000_1234_5678_0000n, 0n);
    expectSameAsQemu(['map', '--output=json', 'ext-unalloc-alloc.qcow2'], dir);
    expectSameAsQemu(['convert', '-O', 'raw', 'ext-unalloc-alloc.qcow2', 'ext-unalloc-alloc.raw'], dir);
  });
});
