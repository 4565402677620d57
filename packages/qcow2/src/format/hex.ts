/**
 * The hex formats qemu's qcow2 messages print, one function per printf conversion, so a message
 * ported from qemu picks the function named after its format string.
 */

const TWO32 = 2 ** 32;

/** printf's `%" PRIx64`, from a u64 given as two 32-bit halves: lowercase digits, no prefix. */
export function hexDigits64(hi: number, lo: number): string {
  if (hi === 0) return (lo >>> 0).toString(16);
  return (hi >>> 0).toString(16) + (lo >>> 0).toString(16).padStart(8, '0');
}

/** printf's `%x` / `%" PRIx64` of a non-negative integer: lowercase digits, no prefix (exact below 2^53). */
export function hexDigits(n: number): string {
  if (n < TWO32) return n.toString(16);
  return hexDigits64(Math.floor(n / TWO32), n % TWO32);
}

/** printf's `0x%x` / `0x%" PRIx64`: always the `0x` prefix (`0x0` for zero). */
export function hex(n: number): string {
  return `0x${hexDigits(n)}`;
}

/** printf's `%#x` (the alternate form): `0x` prefix except for zero, which prints as `0`. */
export function hexAlt(n: number): string {
  return n === 0 ? '0' : hex(n);
}
