// xorshift32: a tiny seeded PRNG, the same on every machine, for scripts that make test and
// benchmark inputs (build-corpus.mjs, bench/run.mjs). Returns unsigned 32-bit integers.
export function prng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}
