/** Round trips of the L1/L2 entry codecs, and their bit layout against the spec. */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { compressedEntry, compressedRange, decodeL1Entry, decodeL2Entry, encodeL1Entry, encodeL2Entry, plainRunLength, subclusterKind, type EntryContext, type L2Entry } from '../src/format/l2-entry.js';

const clusterBits = fc.integer({ min: 9, max: 21 });
/** A cluster-aligned host offset below 2^56. */
const hostCluster = (bits: number) => fc.integer({ min: 1, max: 2 ** (56 - bits) - 1 }).map((i) => i * 2 ** bits);

function roundTrip(entry: L2Entry, ctx: EntryContext): L2Entry {
  const view = new DataView(new ArrayBuffer(16));
  encodeL2Entry(entry, view, 0, ctx);
  return decodeL2Entry(view, 0, ctx);
}

describe('L2 entries', () => {
  it('standard data / zero / unallocated entries round-trip', () => {
    fc.assert(
      fc.property(clusterBits, fc.boolean(), fc.boolean(), (bits, copied, dataFile) =>
        fc.assert(
          fc.property(hostCluster(bits), fc.constantFrom('data', 'zero', 'zero-plain', 'unallocated'), (host, kind) => {
            const ctx = { clusterBits: bits, extendedL2: false, dataFile };
            const e: L2Entry =
              kind === 'data'
                ? { kind: 'data', hostOffset: host, copied }
                : kind === 'zero'
                  ? { kind: 'zero', hostOffset: host, copied }
                  : kind === 'zero-plain'
                    ? { kind: 'zero', hostOffset: 0, copied: false }
                    : { kind: 'unallocated' };
            expect(roundTrip(e, ctx)).toEqual(e);
          }),
          { numRuns: 20 },
        ),
      ),
      { numRuns: 30 },
    );
  });

  it('compressed descriptors round-trip for every cluster size', () => {
    fc.assert(
      fc.property(clusterBits, fc.integer({ min: 0, max: 2 ** 40 }), fc.integer({ min: 1, max: 2 ** 21 }), (bits, off, len) => {
        const ctx = { clusterBits: bits, extendedL2: false, dataFile: false };
        const clen = Math.min(len, 2 ** bits);
        const e = compressedEntry(off, clen);
        expect(e.sectors).toBeLessThanOrEqual(2 ** (bits - 8));
        expect(roundTrip(e, ctx)).toEqual(e);
        const r = compressedRange(e);
        expect(r.offset).toBe(off);
        expect(r.offset + r.length).toBeGreaterThanOrEqual(off + clen);
        expect((r.offset + r.length) % 512).toBe(0);
      }),
      { numRuns: 500 },
    );
  });

  it('extended entries keep both bitmaps', () => {
    fc.assert(
      fc.property(
        clusterBits.filter((b) => b >= 14),
        fc.option(fc.integer({ min: 1, max: 2 ** 30 }), { nil: undefined }),
        fc.boolean(),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: 0, max: 0xffffffff }),
        (bits, idx, copied, alloc, zero) => {
          const ctx = { clusterBits: bits, extendedL2: true, dataFile: false };
          const hostOffset = idx === undefined ? undefined : idx * 2 ** bits;
          const e: L2Entry = { kind: 'extended', hostOffset, copied: hostOffset === undefined ? false : copied, alloc, zero };
          expect(roundTrip(e, ctx)).toEqual(e);
        },
      ),
    );
  });

  it('decodes the spec bit layout', () => {
    const view = new DataView(new ArrayBuffer(16));
    const ctx = { clusterBits: 16, extendedL2: false, dataFile: false };
    view.setBigUint64(0, (1n << 63n) | 0x50000n);
    expect(decodeL2Entry(view, 0, ctx)).toEqual({ kind: 'data', hostOffset: 0x50000, copied: true });
    view.setBigUint64(0, 1n);
    expect(decodeL2Entry(view, 0, ctx)).toEqual({ kind: 'zero', hostOffset: 0, copied: false });
    // 64 KiB clusters: x = 62 - 8 = 54; 3 additional sectors at byte offset 0x12345.
    view.setBigUint64(0, (1n << 62n) | (3n << 54n) | 0x12345n);
    expect(decodeL2Entry(view, 0, ctx)).toEqual({ kind: 'compressed', hostOffset: 0x12345, sectors: 4 });
    // External data file: offset 0 with COPIED is data at 0.
    view.setBigUint64(0, 1n << 63n);
    expect(decodeL2Entry(view, 0, { ...ctx, dataFile: true })).toEqual({ kind: 'data', hostOffset: 0, copied: true });
    expect(decodeL2Entry(view, 0, ctx)).toEqual({ kind: 'unallocated' });
    // Extended: bitmap word = zero bits (32..63) then alloc bits (0..31).
    const ext = { clusterBits: 16, extendedL2: true, dataFile: false };
    view.setBigUint64(0, (1n << 63n) | 0x70000n);
    view.setBigUint64(8, (0b100n << 32n) | 0b011n);
    const e = decodeL2Entry(view, 0, ext);
    expect(e).toEqual({ kind: 'extended', hostOffset: 0x70000, copied: true, alloc: 3, zero: 4 });
    expect([0, 1, 2, 3].map((i) => subclusterKind(e, i))).toEqual(['data', 'data', 'zero', 'unallocated']);
    expect(subclusterKind({ ...e, zero: 1 } as L2Entry, 0)).toBe('invalid');
    expect(subclusterKind({ kind: 'extended', hostOffset: undefined, copied: false, alloc: 1, zero: 0 }, 0)).toBe('invalid');
  });
});

describe('L1 entries', () => {
  it('round-trip and flag reserved bits', () => {
    fc.assert(
      fc.property(clusterBits, fc.integer({ min: 0, max: 2 ** 30 }), fc.boolean(), (bits, idx, copied) => {
        const view = new DataView(new ArrayBuffer(8));
        const l2Offset = idx * 2 ** bits;
        encodeL1Entry({ l2Offset, copied }, view, 0);
        expect(decodeL1Entry(view, 0)).toEqual({ l2Offset, copied: copied && l2Offset !== 0, reserved: false });
      }),
    );
    const view = new DataView(new ArrayBuffer(8));
    view.setBigUint64(0, 0x10000n | 1n);
    expect(decodeL1Entry(view, 0).reserved).toBe(true);
  });
});

describe('plainRunLength (raw-word scan of plain L2 tables)', () => {
  // Entries drawn from what a table can hold, weighted towards runs that continue each other.
  const bits = 16;
  const cs = 2 ** bits;
  const word = fc.oneof(
    fc.constant({ hi: 0, lo: 0 }), // unallocated
    fc.constant({ hi: 0, lo: 1 }), // zero without host
    fc.constant({ hi: 0x8000_0000, lo: 0 }), // COPIED, no offset
    fc.integer({ min: 1, max: 8 }).map((c) => ({ hi: 0x8000_0000, lo: c * cs })), // data
    fc.integer({ min: 1, max: 8 }).map((c) => ({ hi: 0, lo: c * cs + 1 })), // zero with host
    fc.integer({ min: 1, max: 8 }).map((c) => ({ hi: 0x4000_0000, lo: c * cs })), // compressed
    fc.integer({ min: 1, max: 8 }).map((c) => ({ hi: 0x0100_0000, lo: c * cs })), // reserved bit
    fc.integer({ min: 1, max: 8 }).map((c) => ({ hi: 0, lo: c * cs + 0x100 })), // reserved low bit
  );

  it('counts exactly the entries the full decode would continue the run with', () => {
    fc.assert(
      fc.property(
        fc.array(word, { minLength: 1, maxLength: 24 }),
        fc.constantFrom('data' as const, 'zero' as const, 'unallocated' as const),
        fc.option(fc.integer({ min: 0, max: 8 }).map((c) => c * cs), { nil: undefined }),
        fc.boolean(),
        (words, kind, host, dataFile) => {
          const view = new DataView(new ArrayBuffer(words.length * 8));
          words.forEach((w, i) => {
            view.setUint32(i * 8, w.hi >>> 0);
            view.setUint32(i * 8 + 4, w.lo >>> 0);
          });
          const ctx: EntryContext = { clusterBits: bits, extendedL2: false, dataFile };
          // Reference: decode each entry and compare kind and host offset.
          let expected = 0;
          let next = host;
          for (let i = 0; i < words.length; i++) {
            const e = decodeL2Entry(view, i * 8, ctx);
            const entryHost = e.kind === 'data' || e.kind === 'zero' ? e.hostOffset : undefined;
            const ok =
              kind === 'unallocated'
                ? e.kind === 'unallocated'
                : kind === 'data'
                  ? e.kind === 'data' && next !== undefined && entryHost === next
                  : e.kind === 'zero' && entryHost === (next ?? 0);
            if (!ok) break;
            if (next !== undefined) next += cs;
            expected++;
          }
          const got = plainRunLength(view, 0, words.length, kind, host, { clusterSize: cs, dataFile, maxHost: 2 ** 52 });
          expect(got).toBe(expected);
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('stops at the count and at hosts beyond maxHost', () => {
    const view = new DataView(new ArrayBuffer(32));
    for (let i = 0; i < 4; i++) view.setUint32(i * 8 + 4, (i + 1) * cs);
    const ctx = { clusterSize: cs, dataFile: false, maxHost: 2 * cs };
    expect(plainRunLength(view, 0, 4, 'data', cs, ctx)).toBe(2);
    expect(plainRunLength(view, 0, 1, 'data', cs, ctx)).toBe(1);
    expect(plainRunLength(view, 1, 3, 'data', 2 * cs, { ...ctx, maxHost: 2 ** 40 })).toBe(3);
  });
});
