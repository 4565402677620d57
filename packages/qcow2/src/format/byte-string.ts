/**
 * Names stored in an image (snapshot IDs and names, bitmap names) are bytes, usually UTF-8 but
 * not necessarily. They are held as JS strings losslessly: valid UTF-8 decodes as usual, and
 * each byte of an invalid sequence becomes the lone surrogate U+DC80 + (byte - 0x80) (Python's
 * "surrogateescape"), which {@link encodeByteString} turns back into that byte. A lone
 * surrogate never comes out of valid UTF-8, so the mapping is exact both ways.
 */

/** Length of the valid UTF-8 sequence starting at `i`, or 0 if the byte there starts none. */
function sequenceLength(b: Uint8Array, i: number): number {
  const c = b[i]!;
  if (c < 0x80) return 1;
  const cont = (k: number): boolean => i + k < b.length && (b[i + k]! & 0xc0) === 0x80;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    if (!cont(1) || !cont(2)) return 0;
    const c1 = b[i + 1]!;
    if (c === 0xe0 && c1 < 0xa0) return 0; // overlong
    if (c === 0xed && c1 >= 0xa0) return 0; // UTF-16 surrogate
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    const c1 = b[i + 1]!;
    if (c === 0xf0 && c1 < 0x90) return 0; // overlong
    if (c === 0xf4 && c1 >= 0x90) return 0; // beyond U+10FFFF
    return 4;
  }
  return 0;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const utf8enc = new TextEncoder();

/** Decodes bytes to a string, escaping the bytes of invalid UTF-8 as lone surrogates. */
export function decodeByteString(b: Uint8Array): string {
  let out = '';
  let run = 0; // start of the current run of valid UTF-8
  let i = 0;
  while (i < b.length) {
    const n = sequenceLength(b, i);
    if (n > 0) {
      i += n;
      continue;
    }
    if (run < i) out += utf8.decode(b.subarray(run, i));
    out += String.fromCharCode(0xdc00 + b[i]!);
    i++;
    run = i;
  }
  if (run < b.length) out += utf8.decode(b.subarray(run));
  return out;
}

/** Encodes a string from {@link decodeByteString} back to its exact bytes. */
export function encodeByteString(s: string): Uint8Array {
  if (!/[\udc80-\udcff]/.test(s)) return utf8enc.encode(s);
  const parts: number[] = [];
  let run = '';
  const flush = (): void => {
    if (run) for (const x of utf8enc.encode(run)) parts.push(x);
    run = '';
  };
  for (let i = 0; i < s.length; i++) {
    const u = s.charCodeAt(i);
    const lone = u >= 0xdc80 && u <= 0xdcff && !(i > 0 && s.charCodeAt(i - 1) >= 0xd800 && s.charCodeAt(i - 1) <= 0xdbff);
    if (lone) {
      flush();
      parts.push(u - 0xdc00);
    } else {
      run += s[i];
    }
  }
  flush();
  return Uint8Array.from(parts);
}

/** The string up to its first NUL, as qemu's C strings end. */
export function cutAtNul(s: string): string {
  const nul = s.indexOf('\0');
  return nul < 0 ? s : s.slice(0, nul);
}

/** `s` as qemu's fixed C buffer of `size` bytes holds it (pstrcpy): up to a NUL, at most size - 1 bytes. */
export function cBuffer(s: string, size: number): string {
  const cut = cutAtNul(s);
  const bytes = encodeByteString(cut);
  return bytes.length < size ? cut : decodeByteString(bytes.subarray(0, size - 1));
}
