/**
 * PBKDF2 (node:crypto) and the iteration calibration behind qemu's iter-time rule: a key slot
 * gets the iterations this machine runs in iter-time milliseconds, the master key digest an
 * eighth of them (qcrypto_block_luks_create / _store_key).
 *
 * How fast PBKDF2 runs here is measured differently from qemu's qcrypto_pbkdf2_count_iters, on
 * purpose. qemu times whole runs with getrusage's millisecond clock, so it climbs from 2^15
 * iterations ×10 until one run takes over 500 ms — and runs that climb twice per volume
 * (master key digest, then key slot). Where OpenSSL's speed lands on that ladder, it costs ~1.1
 * s a climb here (2.3 s of the 5.8 s of a 1 GiB raw → LUKS convert). process.cpuUsage counts
 * microseconds, so one run of ≥ 100 ms measures the rate as well; and since PBKDF2's work is
 * one chain of HMACs per output block, the rate is measured once per hash for one block and
 * divided by the blocks each output needs ({@link calibration}). The counts come out the same
 * size as qemu's on the same machine (the rule is the same; only the stopwatch differs).
 */
import { pbkdf2Sync } from 'node:crypto';
import { LimitError } from '@tsimg/raw';
import { hashBytes, type HashAlg } from './cipher.js';

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

/** A timed run shorter than this (CPU ms) is only a step towards the measured one. */
const MEASURE_MS = 100;

/** How many iterations of PBKDF2-`hash` for `outLen` bytes take one second of CPU here. */
export function countIterations(hash: HashAlg, key: Uint8Array, salt: Uint8Array, outLen: number): number {
  let iterations = 1 << 12;
  for (;;) {
    const start = cpuMs();
    pbkdf2(hash, key, salt, iterations, outLen).fill(0);
    const delta = cpuMs() - start;
    if (delta >= MEASURE_MS) return Math.floor((iterations * 1000) / delta);
    // Far below: ×8; close: straight to a little over the mark.
    iterations = delta < MEASURE_MS / 8 ? iterations * 8 : Math.ceil((iterations * MEASURE_MS * 1.2) / delta);
  }
}

/**
 * A rate for one volume operation (create, or an amend that adds key slots): each hash measured
 * once, for one output block, and scaled to the blocks of every output asked for (a 64-byte
 * slot key of SHA-256 is two chains of HMACs, the 20-byte master key digest one).
 */
export function calibration(): NonNullable<IterationPolicy['perSecond']> {
  const perBlock = new Map<HashAlg, number>();
  return (hash, key, salt, outLen) => {
    const block = hashBytes(hash);
    let rate = perBlock.get(hash);
    if (rate === undefined) {
      rate = countIterations(hash, key, salt, block);
      perBlock.set(hash, rate);
    }
    return Math.max(1, Math.floor(rate / Math.ceil(outLen / block)));
  };
}

/** How a volume picks its PBKDF2 iteration counts (tests may pass a fixed rate). */
export interface IterationPolicy {
  /** Iterations per second of `hash` for an output of `outLen` bytes; default: {@link calibration}. */
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
