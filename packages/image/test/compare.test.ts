import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { faultyDevice, MemoryDevice, type BlockDevice, type BlockStatus } from '@tsimg/raw';
import { compareImages, type ChainImage } from '@tsimg/image';
import { COMPARE_CHUNK, firstDifferentSector, firstNonZeroSector } from '../src/compare.js';
import { delegating } from './delegating.js';

const M = 1024 * 1024;

async function mem(size: number, writes: [number, number, number][] = [], pageSize = 4096): Promise<MemoryDevice> {
  const dev = new MemoryDevice({ size, pageSize });
  for (const [offset, length, byte] of writes) await dev.write(offset, new Uint8Array(length).fill(byte));
  return dev;
}

/** Wraps a device so that its zero pages count as unallocated (a qcow2 without backing). */
function sparse(dev: BlockDevice, backing?: ChainImage): ChainImage {
  return Object.assign(Object.create(dev) as BlockDevice, {
    backing,
    async blockStatus(offset: number, length: number): Promise<BlockStatus> {
      const st = await dev.blockStatus(offset, length);
      return st.kind === 'zero' ? { kind: 'unallocated', offset, length: st.length } : st;
    },
    size: () => dev.size(),
    read: (o: number, into: Uint8Array) => dev.read(o, into),
  });
}

describe('sector search helpers', () => {
  it('finds the first differing / non-zero 512-byte block', () => {
    const a = new Uint8Array(10000);
    const b = new Uint8Array(10000);
    expect(firstDifferentSector(a, b, 10000)).toBe(-1);
    b[5000] = 1;
    expect(firstDifferentSector(a, b, 10000)).toBe(9);
    b[9999] = 1; // only the earliest counts
    expect(firstDifferentSector(a, b, 10000)).toBe(9);
    b[5000] = 0;
    expect(firstDifferentSector(a, b, 10000)).toBe(19); // the partial tail block
    expect(firstNonZeroSector(b, 10000)).toBe(19);
    expect(firstNonZeroSector(a, 10000)).toBe(-1);
  });
});

describe('compareImages', () => {
  it('finds identical images without reading ranges both report as zero', async () => {
    const a = await mem(64 * M, [[10 * M, 3, 7]]);
    const b = await mem(64 * M, [[10 * M, 3, 7]]);
    let reads = 0;
    const counted = Object.assign(Object.create(a) as MemoryDevice, {
      read: async (o: number, into: Uint8Array) => {
        reads += into.length;
        return a.read(o, into);
      },
      blockStatus: (o: number, l: number) => a.blockStatus(o, l),
      size: () => a.size(),
    });
    expect(await compareImages(counted, b)).toEqual({ kind: 'identical', sizeMismatch: false });
    expect(reads).toBe(4096);
  });

  it('reports the first different sector, measured from the chunk start like qemu', async () => {
    const a = await mem(8 * M, [[0, 8 * M, 1]]);
    const b = await mem(8 * M, [[0, 8 * M, 1], [5 * M + 700, 1, 2]]);
    expect(await compareImages(a, b)).toEqual({ kind: 'content', offset: 5 * M + 512, sizeMismatch: false });
  });

  it('checks ranges allocated on one side only for zeroes', async () => {
    const a = sparse(await mem(4 * M, [[M, 4096, 0]]));
    const b = await mem(4 * M);
    expect((await compareImages(a, b)).kind).toBe('identical');
    const c = await mem(4 * M, [[3 * M + 1024, 1, 9]]);
    expect(await compareImages(a, c)).toEqual({ kind: 'content', offset: 3 * M + 1024, sizeMismatch: false });
  });

  it('handles different sizes: extra zeroes are fine, extra data is a mismatch', async () => {
    const small = await mem(2 * M, [[0, 100, 1]]);
    const big = await mem(3 * M, [[0, 100, 1]]);
    const warned: string[] = [];
    expect(await compareImages(small, big, { onSizeMismatch: () => warned.push('w') })).toEqual({
      kind: 'identical',
      sizeMismatch: true,
    });
    expect(warned).toEqual(['w']);
    await big.write(2 * M + 4096, new Uint8Array([5]));
    expect(await compareImages(big, small)).toEqual({ kind: 'content', offset: 2 * M + 4096, sizeMismatch: true });
    expect(await compareImages(big, small, { strict: true })).toEqual({ kind: 'strict-size' });
  });

  it('strict mode compares the block status, EOF included', async () => {
    const a = await mem(2 * M, [[0, 2 * M, 1]]);
    expect((await a.blockStatus(0, 2 * M)).length).toBe(2 * M); // one run, reaching EOF
    // The same data reported in 1 MiB runs: the first run does not reach EOF (qemu: mismatch).
    const b = Object.assign(Object.create(a) as MemoryDevice, {
      blockStatus: (o: number, l: number) => a.blockStatus(o, Math.min(l, M - (o % M))),
      size: () => a.size(),
      read: (o: number, into: Uint8Array) => a.read(o, into),
    });
    expect(await compareImages(a, b, { strict: true })).toEqual({ kind: 'strict-status', offset: 0 });
    expect(await compareImages(a, a, { strict: true })).toEqual({ kind: 'identical', sizeMismatch: false });
    const z = sparse(await mem(2 * M));
    const d = await mem(2 * M);
    expect(await compareImages(z, d, { strict: true })).toEqual({ kind: 'strict-status', offset: 0 });
    expect((await compareImages(z, d)).kind).toBe('identical');
  });

  it('reports progress in qemu-sized steps that add up to the larger size', async () => {
    const a = await mem(5 * M, [[0, 5 * M, 1]]);
    const b = await mem(6 * M, [[0, 5 * M, 1]]);
    const steps: number[] = [];
    await compareImages(a, b, { onProgress: (n, base) => (expect(base).toBe(6 * M), steps.push(n)) });
    expect(steps.slice(0, 3)).toEqual([COMPARE_CHUNK, COMPARE_CHUNK, M]);
    expect(steps.reduce((x, y) => x + y, 0)).toBe(6 * M);
  });

  it('returns read and status failures with the side that failed', async () => {
    const a = await mem(M, [[0, M, 1]]);
    const b = faultyDevice(await mem(M, [[0, M, 1]]), { failRead: 1 });
    const r = await compareImages(a, b);
    expect(r).toMatchObject({ kind: 'read-error', side: 2, offset: 0, sizeMismatch: false });
    const broken = Object.assign(Object.create(a) as MemoryDevice, {
      blockStatus: async () => {
        throw new Error('boom');
      },
      size: () => a.size(),
    });
    expect(await compareImages(broken, a)).toMatchObject({ kind: 'status-error', side: 1 });
  });
});

describe('compareImages looks ahead without reporting out of order', () => {
  /** `dev` with block status failing from `from` on (a corrupt L2 table further on, say). */
  function statusFailsFrom(dev: MemoryDevice, from: number): ChainImage {
    return delegating(dev, {
      async blockStatus(offset: number, length: number): Promise<BlockStatus> {
        if (offset >= from) throw new Error('boom');
        return dev.blockStatus(offset, Math.min(length, from - offset));
      },
    });
  }

  it('a mismatch before a failing read or status further on is what is reported', async () => {
    const data: [number, number, number][] = [[0, 16 * M, 1]];
    const a = await mem(16 * M, data);
    const b = await mem(16 * M, [...data, [5 * M + 512, 1, 2]]);
    // b's 2nd read (2-4 MiB) fails: reported before the mismatch of a chunk read ahead.
    expect(await compareImages(a, faultyDevice(b, { failRead: 2 }))).toMatchObject({ kind: 'read-error', side: 2, offset: 2 * M });
    expect(await compareImages(a, faultyDevice(b, { failRead: 4 }))).toEqual({ kind: 'content', offset: 5 * M + 512, sizeMismatch: false });
    const c = await mem(16 * M, [...data, [M + 512, 1, 2]]);
    expect(await compareImages(a, faultyDevice(c, { failRead: 3 }))).toEqual({ kind: 'content', offset: M + 512, sizeMismatch: false });
    expect(await compareImages(a, statusFailsFrom(c, 6 * M))).toEqual({ kind: 'content', offset: M + 512, sizeMismatch: false });
    expect(await compareImages(a, statusFailsFrom(b, 6 * M))).toEqual({ kind: 'content', offset: 5 * M + 512, sizeMismatch: false });
    expect(await compareImages(a, statusFailsFrom(b, 4 * M))).toMatchObject({ kind: 'status-error', side: 2 });
    expect(await compareImages(a, statusFailsFrom(a, 6 * M))).toMatchObject({ kind: 'status-error', side: 2 });
  });

  it('progress stops at the step that decides', async () => {
    const a = await mem(16 * M, [[0, 16 * M, 1]]);
    const b = await mem(16 * M, [[0, 16 * M, 1], [5 * M, 1, 9]]);
    let done = 0;
    const r = await compareImages(a, b, { onProgress: (n) => (done += n) });
    expect(r).toEqual({ kind: 'content', offset: 5 * M, sizeMismatch: false });
    expect(done).toBe(4 * M);
  });
});

describe('compareImages properties', () => {
  const K = 1024;
  const writes = fc.array(
    fc.tuple(fc.integer({ min: 0, max: 255 * K }), fc.integer({ min: 1, max: 9 * K }), fc.integer({ min: 0, max: 3 })),
    { maxLength: 6 },
  );

  it('answers what a byte-by-byte comparison answers, at 512-byte granularity', async () => {
    await fc.assert(
      fc.asyncProperty(
        writes,
        writes,
        fc.constantFrom(256 * K, 300 * K),
        fc.constantFrom(256 * K, 272 * K),
        fc.boolean(),
        async (w1, w2, size1, size2, sparse1) => {
          const a0 = await mem(size1, w1.map(([o, l, b]) => [Math.min(o, size1 - 1), Math.min(l, size1 - Math.min(o, size1 - 1)), b] as [number, number, number]), 4096);
          const b = await mem(size2, w2.map(([o, l, v]) => [Math.min(o, size2 - 1), Math.min(l, size2 - Math.min(o, size2 - 1)), v] as [number, number, number]), 4096);
          const a = sparse1 ? sparse(a0) : a0;
          const ca = a0.contents();
          const cb = b.contents();
          // The expected answer: the first differing byte in the common part, or the first
          // non-zero byte of the larger image's extra part — reported at its 512-byte block.
          let first = -1;
          const common = Math.min(size1, size2);
          for (let i = 0; i < Math.max(size1, size2); i++) {
            const x = i < size1 ? ca[i]! : 0;
            const y = i < size2 ? cb[i]! : 0;
            if (x !== y) {
              first = i;
              break;
            }
          }
          const r = await compareImages(a, b);
          if (first < 0) {
            expect(r).toEqual({ kind: 'identical', sizeMismatch: size1 !== size2 });
          } else {
            expect(r.kind).toBe('content');
            const at = (r as { offset: number }).offset;
            // qemu counts blocks from the start of the run it compares, which starts on a 4 KiB
            // page here: the reported offset is the difference's 512-byte block.
            expect(at).toBe(first - (first % 512));
            expect((r as { sizeMismatch: boolean }).sizeMismatch).toBe(first >= common);
          }
        },
      ),
      { numRuns: 100 },
    );
  });
});
