// byte-compare.ts (Node's native compare) and byte-compare.browser.ts (the browser build's word
// loops) give the same answers, on ranges at every alignment, with a difference anywhere.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import * as browser from '../src/byte-compare.browser.js';
import * as node from '../src/byte-compare.js';

/** A view of `length` bytes at `offset` into a fresh buffer (so alignments differ). */
function at(offset: number, bytes: Uint8Array): Uint8Array {
  const view = new Uint8Array(new ArrayBuffer(offset + bytes.length + 8), offset, bytes.length);
  view.set(bytes);
  return view;
}

const arb = fc.record({
  bytes: fc.uint8Array({ maxLength: 300 }),
  offA: fc.integer({ min: 0, max: 15 }),
  offB: fc.integer({ min: 0, max: 15 }),
  flip: fc.option(fc.nat(), { nil: undefined }),
  zero: fc.boolean(),
});

describe.each([['node', node], ['browser', browser]] as const)('%s byte-compare', (_name, impl) => {
  it('bytesEqual is true exactly for the same length and bytes', () => {
    fc.assert(
      fc.property(arb, ({ bytes, offA, offB, flip }) => {
        const a = at(offA, bytes);
        const b = at(offB, bytes);
        expect(impl.bytesEqual(a, b)).toBe(true);
        if (bytes.length > 0 && flip !== undefined) {
          b[flip % bytes.length] ^= 1 << (flip % 8);
          expect(impl.bytesEqual(a, b)).toBe(false);
        }
        expect(impl.bytesEqual(a, a.subarray(0, Math.max(0, a.length - 1)))).toBe(a.length === 0);
      }),
      { numRuns: 300 },
    );
  });
  it('allZero is true exactly when the range holds no set bit', () => {
    fc.assert(
      fc.property(arb, fc.nat(), fc.nat(), ({ bytes, offA, zero }, s, e) => {
        const buf = at(offA, zero ? new Uint8Array(bytes.length) : bytes);
        const start = bytes.length === 0 ? 0 : s % bytes.length;
        const end = start + (bytes.length === 0 ? 0 : e % (bytes.length - start + 1));
        expect(impl.allZero(buf, start, end)).toBe(buf.subarray(start, end).every((x) => x === 0));
      }),
      { numRuns: 300 },
    );
    // Ranges longer than the Node side's zero reference (256 KiB), with the data at the end.
    const big = new Uint8Array(600_000);
    expect(impl.allZero(big, 1, big.length)).toBe(true);
    big[big.length - 1] = 1;
    expect(impl.allZero(big, 3, big.length)).toBe(false);
  });
});
