/**
 * Model tests of the bitmaps a writable image keeps (engine/held-bitmaps.ts, bitmap-ops.ts),
 * on in-memory images without qemu: random sessions of bitmap operations and guest writes,
 * zero writes and discards, each closed and reopened, against a model of every bitmap's bits
 * (a granule is dirty once any byte of it was written while the bitmap was enabled; merge
 * dirties the bytes the source's granules cover). Each session must end clean under check.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createMemoryQcow2, expectCleanInMemory, openMemoryQcow2 } from './memory-image.js';

const SIZE = 1 << 20;

/** A bitmap of the model: bytes dirty, granularity, enabled. */
interface ModelBitmap {
  granularityBits: number;
  enabled: boolean;
  /** One flag per granule. */
  bits: boolean[];
}

function markModel(bm: ModelBitmap, offset: number, length: number): void {
  if (length === 0) return;
  const g = 2 ** bm.granularityBits;
  for (let i = Math.floor(offset / g); i < Math.ceil(Math.min(offset + length, SIZE) / g); i++) bm.bits[i] = true;
}

/** The granules set in serialized bitmap data (bit i at byte i >> 3, bit i & 7). */
function bitsOf(data: Uint8Array, count: number): boolean[] {
  return Array.from({ length: count }, (_, i) => (data[i >> 3]! & (1 << (i & 7))) !== 0);
}

type Op =
  | { kind: 'write' | 'zero' | 'discard'; offset: number; length: number }
  | { kind: 'add'; name: string; granularityBits: number }
  | { kind: 'remove' | 'clear' | 'enable' | 'disable'; name: string }
  | { kind: 'merge'; name: string; source: string }
  | { kind: 'reopen' };

const NAMES = ['a', 'b', 'c'];
const name = fc.constantFrom(...NAMES);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constantFrom('write' as const, 'zero' as const, 'discard' as const), offset: fc.integer({ min: 0, max: SIZE / 512 - 1 }).map((s) => s * 512), length: fc.integer({ min: 1, max: 300 }).map((s) => s * 512) }).map((o) => ({ ...o, length: Math.min(o.length, SIZE - o.offset) })),
  fc.record({ kind: fc.constant('add' as const), name, granularityBits: fc.integer({ min: 9, max: 17 }) }),
  fc.record({ kind: fc.constantFrom('remove' as const, 'clear' as const, 'enable' as const, 'disable' as const), name }),
  fc.record({ kind: fc.constant('merge' as const), name, source: name }),
  fc.constant({ kind: 'reopen' as const }),
);

describe('bitmaps kept on write (model)', () => {
  it('random sessions match the model and stay clean', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 25 }), fc.constantFrom(512, 4096, 65536), async (ops, clusterSize) => {
        const m = await createMemoryQcow2({ size: BigInt(SIZE), clusterSize: BigInt(clusterSize) });
        const model = new Map<string, ModelBitmap>();
        let img = await openMemoryQcow2(m);
        const data = new Uint8Array(300 * 512).fill(0x5a);
        for (const op of ops) {
          if (op.kind === 'reopen') {
            await img.close();
            img = await openMemoryQcow2(m);
            continue;
          }
          if (op.kind === 'write' || op.kind === 'zero' || op.kind === 'discard') {
            if (op.kind === 'write') await img.write(op.offset, data.subarray(0, op.length));
            else if (op.kind === 'zero') await img.writeZeroes(op.offset, op.length);
            else await img.discard(op.offset, op.length);
            for (const bm of model.values()) if (bm.enabled) markModel(bm, op.offset, op.length);
            continue;
          }
          const bm = model.get(op.name);
          const expectFailure = op.kind === 'add' ? bm !== undefined : bm === undefined || (op.kind === 'merge' && !model.has(op.source));
          const run = op.kind === 'add'
            ? img.bitmapAction({ op: 'add', name: op.name, granularity: 2 ** op.granularityBits })
            : op.kind === 'merge'
              ? img.readBitmap(op.source).then((source) => img.bitmapAction({ op: 'merge', name: op.name, source, sourceName: op.source }))
              : img.bitmapAction({ op: op.kind, name: op.name });
          if (expectFailure) {
            await expect(run).rejects.toThrow(op.kind === 'add' ? `Bitmap already exists: ${op.name}` : /Dirty bitmap '.*' not found/);
            continue;
          }
          await run;
          if (op.kind === 'add') model.set(op.name, { granularityBits: op.granularityBits, enabled: true, bits: new Array<boolean>(Math.ceil(SIZE / 2 ** op.granularityBits)).fill(false) });
          else if (op.kind === 'remove') model.delete(op.name);
          else if (op.kind === 'clear') bm!.bits.fill(false);
          else if (op.kind === 'enable' || op.kind === 'disable') bm!.enabled = op.kind === 'enable';
          else {
            const src = model.get(op.source)!;
            const g = 2 ** src.granularityBits;
            src.bits.forEach((set, i) => set && markModel(bm!, i * g, g));
          }
        }
        await img.close();
        await expectCleanInMemory(m.file);
        const ro = await openMemoryQcow2(m, true);
        try {
          const listed = (await ro.listBitmaps()) ?? [];
          expect(listed.map((b) => b.name).sort()).toEqual([...model.keys()].sort());
          for (const [n, bm] of model) {
            const got = (await ro.readBitmap(n))!;
            expect(got.granularityBits).toBe(bm.granularityBits);
            expect(got.inconsistent).toBe(false);
            expect(bitsOf(got.data, bm.bits.length)).toEqual(bm.bits);
          }
        } finally {
          await ro.close();
        }
      }),
      { numRuns: 40 },
    );
  });
});
