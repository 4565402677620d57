import { describe, expect, it } from 'vitest';
import { MemoryDevice } from '@tsimg/raw';
import { measure, type MappedImage } from '@tsimg/image';
import { measureRaw } from '../src/measure.js';
import { measureQcow2 } from '@tsimg/qcow2';
import { qcow2BitmapsSize, qcow2CalcPreallocSize } from '../../qcow2/src/measure.js';
import { qcow2RefcountMetadataSize } from '../../qcow2/src/format/refcount.js';
import { describeQemu, qemuImg } from '../../../test-images/qemu.js';

const G = 1024n ** 3n;
const T = 1024n ** 4n;

/** A MemoryDevice as a one-layer chain image (its pages are its data, the rest reads zero). */
async function memImage(size: number, writes: [number, number][]): Promise<MappedImage> {
  const dev = Object.assign(new MemoryDevice({ size, pageSize: 4096 }), { filename: 'mem' });
  for (const [offset, length] of writes) await dev.write(offset, new Uint8Array(length).fill(1));
  return dev;
}

describe('qcow2 size math (figures from qemu-iotests 178 and 190)', () => {
  it('fully allocated sizes', () => {
    expect(qcow2CalcPreallocSize(0n, 65536, 4, false)).toBe(196608n);
    expect(qcow2CalcPreallocSize(G, 65536, 4, false)).toBe(1074135040n);
    expect(qcow2CalcPreallocSize(2n * T, 65536, 4, false)).toBe(2199359062016n);
    expect(qcow2CalcPreallocSize(2n * T, 2 * 1024 * 1024, 4, false)).toBe(2199042129920n);
    expect(qcow2CalcPreallocSize(G, 65536, 4, true)).toBe(1074266112n);
  });

  it('refcount metadata converges, and the generous variant reserves more', () => {
    const plain = qcow2RefcountMetadataSize(16384n, 65536, 4);
    expect(plain.bytes).toBe(131072n);
    expect(plain.refblocks).toBe(1n);
    expect(qcow2RefcountMetadataSize(16384n, 65536, 4, true).bytes).toBeGreaterThanOrEqual(plain.bytes);
  });

  it('bitmap sizes (190: 2 TiB image, bitmaps of 512 B and 2 MiB granularity)', () => {
    const bitmaps = [
      { name: 'b1', granularity: 512 },
      { name: 'b2', granularity: 2 * 1024 * 1024 },
    ];
    expect(qcow2BitmapsSize(bitmaps, 2n * T, 65536)).toBe(537198592n);
    expect(qcow2BitmapsSize(bitmaps, 2n * T, 2 * 1024 * 1024)).toBe(545259520n);
    expect(qcow2BitmapsSize([], 2n * T, 65536)).toBe(0n);
  });
});

describe('measureQcow2 / measureRaw', () => {
  it('measures sizes with options', async () => {
    expect(await measureQcow2({ size: G })).toEqual({ required: 393216n, fullyAllocated: 1074135040n });
    expect(await measureQcow2({ size: G }, { preallocation: 'full' })).toEqual({
      required: 1074135040n,
      fullyAllocated: 1074135040n,
    });
    expect(await measureRaw({ size: 1000 })).toEqual({ required: 1024n, fullyAllocated: 1024n });
    expect(await measure('raw', { size: (1n << 63n) - 1n })).toEqual({ required: 1n << 63n, fullyAllocated: 1n << 63n });
  });

  it('refuses what qemu refuses, with its messages', async () => {
    await expect(measureQcow2({ size: G }, { clusterSize: 3072 })).rejects.toThrow(
      'Cluster size must be a power of two between 512 and 2048k',
    );
    await expect(measureQcow2({ size: G }, { clusterSize: 512, extendedL2: true })).rejects.toThrow(
      'Extended L2 entries are only supported with cluster sizes of at least 16384 bytes',
    );
    await expect(measureQcow2({ size: G }, { compat: 'v2' })).rejects.toThrow("Invalid compatibility level: 'v2'");
    await expect(measureQcow2({ size: G }, { compat: '0.10', refcountBits: 8 })).rejects.toThrow(
      /require compatibility level 1.1/,
    );
    await expect(measureQcow2({ size: G }, { refcountBits: 3 })).rejects.toThrow(/power of two/);
    await expect(measureQcow2({ size: G }, { preallocation: 'bogus' })).rejects.toThrow('invalid parameter value: bogus');
    await expect(measureQcow2({ size: 4n * 1024n ** 5n })).rejects.toThrow(/image size is too large/);
    await expect(measure('vmdk', { size: G })).rejects.toThrow("Block driver 'vmdk' does not support size measurement");
  });

  it('counts allocated clusters of a source image, each data run rounded to target clusters', async () => {
    // 1 byte of data in the first 4 KiB page, and a page straddling the 64 KiB boundary.
    const img = await memImage(1024 * 1024, [[0, 1], [60 * 1024, 8 * 1024]]);
    const r = await measure('qcow2', { image: img });
    // qemu's loop: the run at 0 is extended to the end of its cluster (swallowing [60k, 64k)),
    // the next query starts at 64k and finds [64k, 68k), again one cluster.
    const clusters = 2n * 65536n;
    const full = qcow2CalcPreallocSize(1024n * 1024n, 65536, 4, false);
    expect(r).toEqual({ required: full - 1024n * 1024n + clusters, fullyAllocated: full });
    // With a backing file the whole image counts; bitmaps appear when the source has them.
    expect((await measure('qcow2', { image: img }, { hasBackingFile: true })).required).toBe(full);
    expect((await measure('qcow2', { image: img, bitmaps: [] })).bitmaps).toBe(0n);
    expect((await measure('qcow2', { image: img, bitmaps: [] }, { compat: '0.10' })).bitmaps).toBeUndefined();
    expect(await measureRaw({ image: img })).toEqual({ required: 1048576n, fullyAllocated: 1048576n });
  });
});

describeQemu('measure --size cross-checks with qemu-img', () => {
  const sizes = ['0', '1', '512', '1000', '65536', '1M', '123456789', '1G', '1.5G', '2T', '100T', '1P'];
  const optionSets: [string, Parameters<typeof measureQcow2>[1]][] = [
    ['', {}],
    ['cluster_size=512', { clusterSize: 512 }],
    ['cluster_size=4k,refcount_bits=1', { clusterSize: 4096, refcountBits: 1 }],
    ['cluster_size=2M,refcount_bits=64', { clusterSize: 2 * 1024 * 1024, refcountBits: 64 }],
    ['extended_l2=on', { extendedL2: true }],
    ['extended_l2=on,cluster_size=16k', { extendedL2: true, clusterSize: 16384 }],
    ['compat=0.10', { compat: '0.10' }],
    ['preallocation=metadata', { preallocation: 'metadata' }],
    ['preallocation=falloc,cluster_size=128k', { preallocation: 'falloc', clusterSize: 131072 }],
    ['refcount_bits=8,cluster_size=1M', { refcountBits: 8, clusterSize: 1024 * 1024 }],
  ];
  const parseSize = (s: string): bigint => {
    const m = /^([0-9.]+)([MGTP]?)$/.exec(s)!;
    const mul = { '': 1, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 }[m[2] as '' | 'M' | 'G' | 'T' | 'P'];
    return BigInt(Math.round(Number(m[1]) * mul));
  };
  for (const [opt, options] of optionSets) {
    it(`-O qcow2 ${opt || '(defaults)'} over ${sizes.length} sizes`, async () => {
      for (const size of sizes) {
        const args = ['measure', '--output=json', '-O', 'qcow2', '--size', size];
        if (opt) args.push('-o', opt);
        const q = qemuImg(args);
        let ours: string;
        try {
          const r = await measureQcow2({ size: parseSize(size) }, options);
          ours = `{"required":${r.required},"fully-allocated":${r.fullyAllocated}}`;
        } catch (err) {
          ours = `error: ${(err as Error).message}`;
        }
        const theirs =
          q.status === 0 ? JSON.stringify(JSON.parse(q.stdout)) : `error: ${q.stderr.trim().replace(/^qemu-img: /, '')}`;
        expect(ours, `${size} ${opt}`).toBe(theirs);
      }
    });
  }
});
