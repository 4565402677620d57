import { describe, expect, it, vi } from 'vitest';
import fc from 'fast-check';
import { dataRunLength, isZero, zeroRunLength } from '@tsimg/raw';

/** Reference implementations: plain byte loops, fine on the small buffers tests use. */
function refZeroRun(buf: Uint8Array, g: number): number {
  let pos = 0;
  while (pos < buf.length && buf.subarray(pos, pos + g).every((b) => b === 0)) pos += g;
  return Math.min(pos, buf.length);
}
function refDataRun(buf: Uint8Array, g: number): number {
  let pos = 0;
  while (pos < buf.length && buf.subarray(pos, pos + g).some((b) => b !== 0)) pos += g;
  return Math.min(pos, buf.length);
}

// Sparse buffers: mostly zero with a few set bytes, at offsets inside a larger ArrayBuffer so
// unaligned views are exercised.
const sparseBuffer = fc
  .record({
    length: fc.integer({ min: 0, max: 40_000 }),
    shift: fc.integer({ min: 0, max: 15 }),
    marks: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { maxLength: 6 }),
  })
  .map(({ length, shift, marks }) => {
    const buf = new Uint8Array(length + shift + 7).subarray(shift, shift + length);
    for (const [at, v] of marks) if (length > 0) buf[at % length] = v;
    return buf;
  });

function check(impl: { isZero: typeof isZero; zeroRunLength: typeof zeroRunLength; dataRunLength: typeof dataRunLength }): void {
  fc.assert(
    fc.property(sparseBuffer, fc.constantFrom(1, 7, 512, 4096, 5000), (buf, g) => {
      expect(impl.isZero(buf)).toBe(buf.every((b) => b === 0));
      expect(impl.zeroRunLength(buf, g)).toBe(refZeroRun(buf, g));
      expect(impl.dataRunLength(buf, g)).toBe(refDataRun(buf, g));
    }),
    { numRuns: 300 },
  );
}

describe('zero detection', () => {
  it('isZero on edge cases', () => {
    expect(isZero(new Uint8Array(0))).toBe(true);
    expect(isZero(new Uint8Array(3 << 20))).toBe(true);
    const big = new Uint8Array(3 << 20);
    big[big.length - 1] = 1;
    expect(isZero(big)).toBe(false);
    expect(isZero(big.subarray(0, big.length - 1))).toBe(true);
  });

  it('runs are multiples of the granularity, or the whole buffer', () => {
    const buf = new Uint8Array(20_000);
    buf[4096 * 2 + 5] = 1;
    expect(zeroRunLength(buf)).toBe(8192);
    expect(dataRunLength(buf)).toBe(0);
    expect(dataRunLength(buf.subarray(8192))).toBe(4096);
    expect(zeroRunLength(buf.subarray(8192 + 4096))).toBe(20_000 - 12_288);
    expect(() => zeroRunLength(buf, 0)).toThrow(/granularity/);
  });

  it('long zero runs past the 1 MiB fast path', () => {
    const buf = new Uint8Array(5 << 20);
    buf[(3 << 20) + 4096 * 3 + 1] = 9;
    expect(zeroRunLength(buf)).toBe((3 << 20) + 4096 * 3);
    expect(zeroRunLength(buf, 3 << 20)).toBe(3 << 20);
  });

  it('matches a byte-loop reference (memcmp path)', () => {
    check({ isZero, zeroRunLength, dataRunLength });
  });

  it('matches a byte-loop reference (word-loop fallback without Buffer)', async () => {
    // The browser build's zero.ts: byte-compare.browser.ts's word loops, no Buffer anywhere.
    vi.resetModules();
    vi.doMock('../src/byte-compare.js', () => import('../src/byte-compare.browser.js'));
    vi.stubGlobal('Buffer', undefined);
    let mod: typeof import('../src/zero.js');
    try {
      mod = await import('../src/zero.js');
    } finally {
      vi.unstubAllGlobals();
      vi.doUnmock('../src/byte-compare.js');
    }
    check(mod);
  });
});
