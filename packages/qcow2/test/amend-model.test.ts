/**
 * A model test of Qcow2Image.amend on MemoryDevice (no qemu): random sequences of writes, zero
 * writes, snapshots and amends (compat both ways, every refcount width, lazy refcounts) run on
 * one open image and on a plain byte-array model. After each step the image reads as the model
 * says (snapshots included), reports the version and width asked for, and after a reopen the
 * check library finds no corruption and no leak. Refusals qemu makes (a width a refcount does
 * not fit, v2 with a width other than 16) must leave the content as it was.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { TsimgError } from '@tsimg/raw';
import type { Qcow2Image } from '@tsimg/qcow2';
import { createMemoryQcow2, expectCleanInMemory, firstDiff, openMemoryQcow2 } from './memory-image.js';

type Op =
  | { k: 'write'; off: number; len: number; p: number }
  | { k: 'zero'; off: number; len: number; unmap: boolean }
  | { k: 'snapshot' }
  | { k: 'amend'; compat?: '0.10' | '1.1'; refcountBits?: number; lazy?: boolean };

const SIZE = 192 * 1024;

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ k: fc.constant('write' as const), off: fc.nat({ max: SIZE - 1 }), len: fc.integer({ min: 1, max: 30000 }), p: fc.integer({ min: 1, max: 255 }) }) },
  fc.record({ k: fc.constant('zero' as const), off: fc.nat({ max: SIZE - 1 }), len: fc.integer({ min: 1, max: 30000 }), unmap: fc.boolean() }),
  fc.constant({ k: 'snapshot' as const }),
  {
    weight: 3,
    arbitrary: fc.record(
      {
        k: fc.constant('amend' as const),
        compat: fc.constantFrom('0.10' as const, '1.1' as const),
        refcountBits: fc.constantFrom(1, 2, 4, 8, 16, 32, 64),
        lazy: fc.boolean(),
      },
      { requiredKeys: ['k'] },
    ),
  },
);

async function expectReads(img: Qcow2Image, model: Uint8Array, snapshots: number, label: string): Promise<void> {
  const got = new Uint8Array(SIZE);
  await img.read(0, got);
  expect(firstDiff(got, model), label).toBe(-1);
  expect(img.listSnapshots().length, label).toBe(snapshots);
}

describe('Qcow2Image.amend against a model', () => {
  it('keeps the content through random amends, writes and snapshots', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(512, 4096), fc.array(opArb, { minLength: 1, maxLength: 12 }), async (clusterSize, ops) => {
        const m = await createMemoryQcow2({ size: BigInt(SIZE), clusterSize: BigInt(clusterSize) });
        const model = new Uint8Array(SIZE);
        const snapshots: Uint8Array[] = [];
        let img = await openMemoryQcow2(m);
        let version = 3;
        let bits = 16;
        try {
          for (const [i, op] of ops.entries()) {
            const label = `step ${i}: ${JSON.stringify(op)}`;
            if (op.k === 'write') {
              const len = Math.min(op.len, SIZE - op.off);
              await img.write(op.off, new Uint8Array(len).fill(op.p));
              model.fill(op.p, op.off, op.off + len);
            } else if (op.k === 'zero') {
              const len = Math.min(op.len, SIZE - op.off);
              await img.writeZeroes(op.off, len, { mayUnmap: op.unmap });
              model.fill(0, op.off, op.off + len);
            } else if (op.k === 'snapshot') {
              // Up to 3 snapshots: every shared cluster's refcount then fits 4 bits, not fewer.
              if (version < 3 || snapshots.length >= 3 || bits < 4) continue;
              await img.createSnapshot({ name: `s${snapshots.length}` });
              snapshots.push(model.slice());
            } else {
              const wantVersion = op.compat === '0.10' ? 2 : op.compat === '1.1' ? 3 : version;
              const wantBits = op.refcountBits ?? bits;
              // Applying a snapshot at the end raises its clusters' refcounts by one more: with
              // snapshots, narrower entries than 4 bits could overflow there (as in qemu).
              if (snapshots.length > 0 && wantBits < 4) continue;
              try {
                await img.amend({ compat: op.compat, refcountBits: op.refcountBits, lazyRefcounts: op.lazy && wantVersion === 3 });
                version = wantVersion;
                bits = wantBits;
              } catch (err) {
                // qemu's refusals: the options or the refcounts do not fit; nothing guest-visible changed.
                expect(err, label).toBeInstanceOf(TsimgError);
                await img.close();
                img = await openMemoryQcow2(m);
                version = img.version;
                bits = 2 ** img.header.refcountOrder;
              }
              expect(img.version, label).toBe(version);
              expect(2 ** img.header.refcountOrder, label).toBe(bits);
            }
            await expectReads(img, model, snapshots.length, label);
          }
        } finally {
          await img.close();
        }
        await expectCleanInMemory(m.file);
        const again = await openMemoryQcow2(m, true);
        try {
          await expectReads(again, model, snapshots.length, 'after reopen');
        } finally {
          await again.close();
        }
        // Each snapshot reads as when it was taken (applied last: that changes the image).
        for (const [i, data] of snapshots.entries()) {
          const rw = await openMemoryQcow2(m);
          try {
            await rw.applySnapshot(`s${i}`);
            await expectReads(rw, data, snapshots.length, `snapshot s${i}`);
          } finally {
            await rw.close();
          }
        }
      }),
      { numRuns: 80 },
    );
  }, 60_000);
});
