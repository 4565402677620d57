/**
 * The forward qcow2 layout (planQcow2Stream): for random options and random sets of data and
 * compressed clusters, the file written front to back (metadata, then each cluster at its host
 * offset, strictly ascending) is clean for the check library and reads back what was put in.
 * The qemu-img cross-checks of the same writer are in packages/cli/test/convert-stream.test.ts.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryDevice } from '@tsimg/raw';
import { planQcow2Stream, type Qcow2CreateOptions, type StreamCluster } from '@tsimg/qcow2';
import { compressCluster } from '../src/compress/compress.js';
import { expectCleanInMemory, firstDiff, guestBytes } from './memory-image.js';

/** A cluster's content: its index and a seed, so every cluster differs and some compress. */
function content(cs: number, index: number, seed: number, compressible: boolean): Uint8Array {
  const buf = new Uint8Array(cs);
  let x = (index * 2654435761 + seed) >>> 0;
  for (let i = 0; i < cs; i++) {
    if (compressible) buf[i] = (index + (i >> 6)) & 0xff;
    else {
      x = (x * 1103515245 + 12345) >>> 0;
      buf[i] = x >>> 24;
    }
  }
  return buf;
}

const arbCase = fc.record({
  clusterBits: fc.constantFrom(9, 12, 16),
  refcountBits: fc.constantFrom(1, 2, 8, 16, 64),
  extendedL2: fc.boolean(),
  version: fc.constantFrom(2, 3),
  compressionType: fc.constantFrom('zlib' as const, 'zstd' as const),
  clusters: fc.integer({ min: 1, max: 300 }),
  tail: fc.integer({ min: 0, max: 511 }),
  picks: fc.array(fc.tuple(fc.integer({ min: 0, max: 299 }), fc.constantFrom('data', 'compressed', 'random')), { maxLength: 60 }),
  seed: fc.integer({ min: 0, max: 1 << 30 }),
});

describe('planQcow2Stream', () => {
  it('lays out images the check library calls clean and that read back', async () => {
    await fc.assert(
      fc.asyncProperty(arbCase, async (c) => {
        if (c.extendedL2 && (c.version === 2 || c.clusterBits < 14)) return; // extended L2: v3 and 16k+ clusters
        if (c.version === 2 && c.refcountBits !== 16) return; // v2 has 16-bit refcounts only
        const type = c.version === 3 ? c.compressionType : 'zlib'; // v2 has zlib only
        const cs = 2 ** c.clusterBits;
        const size = Math.max(512, (c.clusters - 1) * cs + Math.ceil((c.tail * cs) / 512 / 512) * 512);
        const options: Qcow2CreateOptions = {
          size: BigInt(size),
          clusterSize: BigInt(cs),
          refcountBits: BigInt(c.refcountBits),
          extendedL2: c.extendedL2,
          version: c.version as 2 | 3,
          compressionType: c.version === 3 ? type : undefined,
        };
        const n = Math.ceil(size / cs);
        const chosen = new Map<number, string>();
        for (const [i, kind] of c.picks) if (i < n) chosen.set(i, kind);
        const indices = [...chosen.keys()].sort((a, b) => a - b);
        const expected = new Uint8Array(size);
        const plan: StreamCluster[] = [];
        const bytes: Uint8Array[] = [];
        for (const index of indices) {
          const kind = chosen.get(index)!;
          const data = content(cs, index, c.seed, kind !== 'random');
          expected.set(data.subarray(0, Math.min(cs, size - index * cs)), index * cs);
          const z = kind === 'data' ? undefined : await compressCluster(type, data);
          plan.push(z ? { index, compressedLength: z.length } : { index });
          bytes.push(z ?? data);
        }
        const layout = planQcow2Stream(options, plan);
        const file = new MemoryDevice({ pageSize: 4096 });
        await file.write(0, layout.metadata);
        let end = layout.metadata.length;
        layout.hostOffsets.forEach((off, k) => {
          expect(off).toBeGreaterThanOrEqual(end); // strictly forward
          end = off + bytes[k]!.length;
        });
        for (let k = 0; k < bytes.length; k++) await file.write(layout.hostOffsets[k]!, bytes[k]!);
        if (file.size() < layout.fileLength) await file.resize(layout.fileLength);
        expect(file.size()).toBe(layout.fileLength);
        await expectCleanInMemory(file);
        expect(firstDiff(await guestBytes({ file }), expected)).toBe(-1);
      }),
      { numRuns: 100 },
    );
  });

  it('refuses what a forward write cannot do', () => {
    expect(() => planQcow2Stream({ size: 1n << 20n, backingFile: 'b', backingFormat: 'raw' }, [])).toThrow(/backing file/);
    expect(() => planQcow2Stream({ size: 1n << 20n, preallocation: 'metadata' }, [])).toThrow(/Preallocation/);
    expect(() => planQcow2Stream({ size: 1n << 20n }, [{ index: 3 }, { index: 2 }])).toThrow(/ascending/);
    expect(() => planQcow2Stream({ size: 1n << 20n }, [{ index: 16 }])).toThrow(/inside the image/);
  });
});
