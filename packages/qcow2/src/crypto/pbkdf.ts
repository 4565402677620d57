/**
 * PBKDF2 (node:crypto) and qemu's iteration calibration (crypto/pbkdf.c
 * qcrypto_pbkdf2_count_iters): run from 2^15 iterations, ×10 while a run takes under 100 ms of
 * CPU, rescaled to a second otherwise, until one run takes over 500 ms; the count for a second.
 */
import { pbkdf2Sync } from 'node:crypto';
import { LimitError } from '@tsimg/raw';
import type { HashAlg } from './cipher.js';

/** PBKDF2-HMAC with `hash` (qcrypto_pbkdf2). */
export function pbkdf2(hash: HashAlg, password: Uint8Array, salt: Uint8Array, iterations: number, length: number): Uint8Array {
  const out = pbkdf2Sync(password, salt, iterations, length, hash);
  const copy = new Uint8Array(out);
  out.fill(0);
  return copy;
}

/** CPU milliseconds of this process so far (qemu: the thread's, with RUSAGE_THREAD). */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** qcrypto_pbkdf2_count_iters: how many iterations take one second of CPU here. */
export function countIterations(hash: HashAlg, key: Uint8Array, salt: Uint8Array, outLen: number): number {
  let iterations = 1 << 15;
  let delta: number;
  for (;;) {
    const start = cpuMs();
    pbkdf2(hash, key, salt, iterations, outLen).fill(0);
    delta = Math.max(1, Math.round(cpuMs() - start));
    if (delta > 500) break;
    iterations = delta < 100 ? iterations * 10 : Math.floor((iterations * 1000) / delta);
  }
  return Math.floor((iterations * 1000) / delta);
}

/** How a volume picks its PBKDF2 iteration counts (tests may pass a fixed rate). */
export interface IterationPolicy {
  /** Iterations per second of `hash` for an output of `outLen` bytes; default: calibrated like qemu. */
  perSecond?: (hash: HashAlg, key: Uint8Array, salt: Uint8Array, outLen: number) => number;
}

/**
 * Scales a per-second count to `iterTimeMs` (qcrypto_block_luks_store_key / _create), with
 * qemu's ERANGE refusals, divided by `divisor` (8 for the master key digest) and raised to `min`.
 */
export function scaleIterations(perSecond: number, iterTimeMs: number, divisor: number, min: number): number {
  if (iterTimeMs > 0 && perSecond > Number.MAX_SAFE_INTEGER / iterTimeMs) {
    throw new LimitError(`PBKDF iterations ${perSecond} too large to scale`, { errno: 'ERANGE' });
  }
  const iters = Math.floor(Math.floor((perSecond * iterTimeMs) / 1000) / divisor);
  if (iters > 0xffffffff) throw new LimitError(`PBKDF iterations ${iters} larger than ${0xffffffff}`, { errno: 'ERANGE' });
  return Math.max(iters, min);
}
