/** Refcount entry codecs for every refcount width, and qemu's refcount metadata size. */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { getRefcount, refcountMax, refcountMetadataSize, refcountsPerBlock, setRefcount, decodeReftableEntry, encodeReftableEntry } from '../src/format/refcount.js';

describe('refcount entries', () => {
  for (let order = 0; order <= 6; order++) {
    it(`${1 << order}-bit entries: set/get round-trip without touching neighbours`, () => {
      const perBlock = refcountsPerBlock(9, order);
      const max = refcountMax(order);
      fc.assert(
        fc.property(
          fc.array(fc.tuple(fc.integer({ min: 0, max: perBlock - 1 }), fc.integer({ min: 0, max: Math.min(max, 2 ** 53 - 1) })), {
            maxLength: 60,
          }),
          (writes) => {
            const block = new Uint8Array(512);
            const model = new Map<number, number>();
            for (const [i, v] of writes) {
              setRefcount(block, i, order, v);
              model.set(i, v);
            }
            for (let i = 0; i < perBlock; i++) expect(getRefcount(block, i, order)).toBe(model.get(i) ?? 0);
          },
        ),
        { numRuns: 15 },
      );
    });
  }

  it('matches the on-disk layout (sub-byte entries LSB first, wider ones big-endian)', () => {
    const b = new Uint8Array(16);
    setRefcount(b, 1, 0, 1);
    expect(b[0]).toBe(0b10);
    setRefcount(b, 1, 2, 5);
    expect(b[0]).toBe(0x52);
    b.fill(0);
    setRefcount(b, 1, 4, 0x1234);
    expect([...b.subarray(2, 4)]).toEqual([0x12, 0x34]);
    setRefcount(b, 1, 6, 2 ** 40 + 7);
    expect([...b.subarray(8, 16)]).toEqual([0, 0, 1, 0, 0, 0, 0, 7]);
  });

  it('refcount table entries round-trip', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 43 }), (i) => {
        const v = new DataView(new ArrayBuffer(16));
        encodeReftableEntry(v, 1, i * 512);
        expect(decodeReftableEntry(v, 1)).toEqual({ offset: i * 512, reserved: false });
      }),
    );
  });

  it('metadata size is a fixed point that covers itself', () => {
    fc.assert(
      fc.property(fc.integer({ min: 9, max: 21 }), fc.integer({ min: 0, max: 6 }), fc.integer({ min: 1, max: 2 ** 24 }), (bits, order, clusters) => {
        const cs = 2 ** bits;
        const { refblockCount, bytes } = refcountMetadataSize(clusters, cs, order, false);
        const table = Math.ceil(refblockCount / (cs / 8));
        expect(bytes).toBe((refblockCount + table) * cs);
        expect(refblockCount * refcountsPerBlock(bits, order)).toBeGreaterThanOrEqual(clusters + refblockCount + table);
      }),
    );
  });
});
