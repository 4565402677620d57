/**
 * checksumImage against a plain reference of blkhash's definition (node:crypto over the raw
 * bytes: SHA-256 of the concatenated SHA-256 of each 64 KiB block, then the length as 8 bytes
 * little endian — blkhash's test/blkhash.py): random sparse contents in memory (with and without
 * worker threads, holes never read), and qemu-made raw, qcow2, compressed, sparse, extended-L2
 * and backing-chain images of one content, which must all give the same value.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CountingDevice, MemoryDevice } from '@tsimg/raw';
import { checksumImage, openImage, RawImage } from '@tsimg/image';
import { describeQemu, must, tempDir } from '../../../test-images/qemu.js';

/** blkhash's definition, straightforwardly. */
function reference(bytes: Uint8Array, blockSize = 64 * 1024): string {
  const outer = createHash('sha256');
  for (let i = 0; i < bytes.length; i += blockSize) outer.update(createHash('sha256').update(bytes.subarray(i, i + blockSize)).digest());
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(bytes.length));
  return outer.update(len).digest('hex');
}

describe('checksumImage', () => {
  it('is blkhash of the guest bytes, reading only data (in memory, random sparse contents)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 9 * 1024 * 1024 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 200_000 }), fc.integer({ min: 0, max: 255 })), { maxLength: 12 }),
        fc.constantFrom(0, 2),
        async (size, writes, threads) => {
          // A raw image counts whole 512-byte sectors (an odd tail reads as zeroes).
          const bytes = new Uint8Array(Math.ceil(size / 512) * 512);
          const dev = new MemoryDevice({ size, pageSize: 4096 });
          for (const [at, len, value] of writes) {
            if (size === 0) break;
            const off = at % size;
            const n = Math.min(len, size - off);
            const data = new Uint8Array(n).fill(value);
            bytes.set(data, off);
            await dev.write(off, data);
          }
          const counted = new CountingDevice(dev);
          const got = await checksumImage(new RawImage('mem', counted), { threads });
          expect(got).toBe(reference(bytes));
          // Only the pages holding writes are read (zero-filled writes count: they are data).
          const pages = new Set<number>();
          for (const [at, len] of writes) {
            if (size === 0) break;
            const off = at % size;
            for (let p = Math.floor(off / 4096); p <= Math.floor((off + Math.min(len, size - off) - 1) / 4096); p++) pages.add(p);
          }
          expect(counted.counts.readBytes).toBeLessThanOrEqual(pages.size * 4096);
        },
      ),
      { numRuns: 25 },
    );
  });

  it('knows the value of an empty image and of a zero image', async () => {
    expect(await checksumImage(new RawImage('e', new MemoryDevice()), { threads: 0 })).toBe(reference(new Uint8Array(0)));
    const size = 3 * 65536 + 1024;
    expect(await checksumImage(new RawImage('z', new MemoryDevice({ size })), { threads: 1 })).toBe(reference(new Uint8Array(size)));

  });
});

/** blkhash's own test vectors (test/blkhash-test.c): extents of a byte, '-' for a hole. */
const BLKHASH_VECTORS: [string, [string, number][], string][] = [
  ['block_data', [['A', 65536]], '2e3a5f57d5e726ee5de62db1a85ff816f4fa6ea4627807d9a51bdc4c883e165e'],
  ['block_data_zero', [['\0', 65536]], '8ab067ab7939a3d4f40cbb118956c07c06aeae2d075d6e0a2ebbb94bd42832af'],
  ['block_zero', [['-', 65536]], '8ab067ab7939a3d4f40cbb118956c07c06aeae2d075d6e0a2ebbb94bd42832af'],
  ['partial_block_data', [['A', 32768]], '9467334d6d7668a2f06898185b5cddc78cdfbd962f50c6bf250101f03a0e54dc'],
  ['partial_block_zero', [['-', 32768]], '842d185f0ff348b0d689e184bddc47f69a19032a6934c89b879479f1e86f9d56'],
  ['sparse', [['-', 8 * 65536]], '722ac11a3a81034edf196aa3ee68d1a2e345cd0838b0c78c2ce2fb015d4d817d'],
  ['sparse_large', [['-', 1 << 30]], 'c6d6562c3074a2caa0ceea3e1f460f3af678c792ed05e64157eb51e68ae5260d'],
  ['sparse_unaligned', [['-', 8 * 65536], ['-', 32768]], 'e623a5702b1feb08fbb3d18e35bbb7ec10146b8cd1bcff811200a3948c78c55c'],
  ['zero', [['\0', 8 * 65536]], '722ac11a3a81034edf196aa3ee68d1a2e345cd0838b0c78c2ce2fb015d4d817d'],
];

describe('checksumImage and blkhash test vectors', () => {
  it.each(BLKHASH_VECTORS)('%s', async (_name, extents, want) => {
    const dev = new MemoryDevice({ pageSize: 4096 });
    let pos = 0;
    for (const [byte, len] of extents) {
      if (byte !== '-') await dev.write(pos, new Uint8Array(len).fill(byte.charCodeAt(0)));
      pos += len;
    }
    await dev.resize(pos);
    expect(await checksumImage(new RawImage('v', dev))).toBe(want);
  });
});

describeQemu('checksumImage on qemu-made images', () => {
  let dir = '';
  let cleanup = (): void => {};
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-checksum-'));
    const img = (n: string) => join(dir, n);
    must('qemu-img', ['create', '-f', 'qcow2', img('base.qcow2'), '12M']);
    must('qemu-io', ['-c', 'write -P 0x11 0 300k', '-c', 'write -P 0x22 4M 64k', '-c', 'write -z 5M 1M', img('base.qcow2')]);
    must('qemu-img', ['create', '-f', 'qcow2', '-b', img('base.qcow2'), '-F', 'qcow2', img('top.qcow2'), '12M']);
    must('qemu-io', ['-c', 'write -P 0x33 100k 64k', '-c', 'write -P 0x44 11M 4k', '-c', 'write -z 0 4k', img('top.qcow2')]);
    must('qemu-img', ['convert', '-O', 'raw', img('top.qcow2'), img('flat.raw')]);
    must('qemu-img', ['convert', '-S', '0', '-O', 'raw', img('top.qcow2'), img('full.raw')]);
    must('qemu-img', ['convert', '-O', 'qcow2', img('top.qcow2'), img('flat.qcow2')]);
    must('qemu-img', ['convert', '-c', '-O', 'qcow2', img('top.qcow2'), img('comp.qcow2')]);
    must('qemu-img', ['convert', '-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=128k', img('top.qcow2'), img('ext.qcow2')]);
  });
  afterAll(() => cleanup());

  it('gives every format, compression and allocation of one content the same value', async () => {
    const want = reference(new Uint8Array(readFileSync(join(dir, 'full.raw'))));
    for (const name of ['top.qcow2', 'flat.raw', 'full.raw', 'flat.qcow2', 'comp.qcow2', 'ext.qcow2']) {
      const image = await openImage(join(dir, name), { readOnly: true });
      try {
        expect([name, await checksumImage(image)]).toEqual([name, want]);
      } finally {
        await image.close();
      }
    }
  });
});
