/**
 * The browser build's byte comparisons (web/build.mjs picks this over byte-compare.ts): the same
 * contract without Node's Buffer, as 64-bit word loops where the two ranges are equally aligned.
 * Neither touches bytes one at a time except an unaligned head or tail of < 8 bytes.
 */

/** Bytes before `offset` reaches an 8-byte boundary of its ArrayBuffer (at most `length`). */
function headLength(byteOffset: number, length: number): number {
  return Math.min(length, (8 - (byteOffset & 7)) & 7);
}

/** True when `a` and `b` have the same length and the same bytes. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let i = 0;
  if ((a.byteOffset & 7) === (b.byteOffset & 7)) {
    for (const stop = headLength(a.byteOffset, a.length); i < stop; i++) if (a[i] !== b[i]) return false;
    const words = (a.length - i) >>> 3;
    if (words > 0) {
      const wa = new BigUint64Array(a.buffer, a.byteOffset + i, words);
      const wb = new BigUint64Array(b.buffer, b.byteOffset + i, words);
      for (let k = 0; k < words; k++) if (wa[k] !== wb[k]) return false;
      i += words * 8;
    }
  }
  for (; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** True when `buf[start, end)` holds only zero bytes. */
export function allZero(buf: Uint8Array, start: number, end: number): boolean {
  let i = start;
  for (const stop = i + headLength(buf.byteOffset + i, end - i); i < stop; i++) if (buf[i] !== 0) return false;
  const words = (end - i) >>> 3;
  if (words > 0) {
    const view = new BigUint64Array(buf.buffer, buf.byteOffset + i, words);
    for (let k = 0; k < words; k++) if (view[k] !== 0n) return false;
    i += words * 8;
  }
  for (; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}
