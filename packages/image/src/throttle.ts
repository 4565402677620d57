/**
 * The write throttle of `convert -r`: qemu-img 7.2 puts the target in a throttle group whose
 * only limit is bps-write = the rate (set_rate_limit), so every write request — data, zeroes,
 * compressed, even the empty one that ends a compressed stream — passes QEMU's leaky bucket
 * (util/throttle.c) before it runs. This module reproduces that bucket for one writer that
 * waits for each request before issuing the next (qemu-img's in-order writes).
 */

const NS_PER_SECOND = 1e9;

/** The clock and timer a {@link WriteThrottle} uses, in nanoseconds; injectable for tests. */
export interface ThrottleClock {
  /** The current time in nanoseconds (any origin, never going back). */
  now(): number;
  /** Resolves after `ns` nanoseconds. */
  sleep(ns: number): Promise<void>;
}

/** setTimeout's longest delay (ms); longer ones would fire at once. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/** The real clock: `performance.now()` and `setTimeout` (in steps, for waits of weeks: -r 1). */
export const realClock: ThrottleClock = {
  now: () => performance.now() * 1e6,
  sleep: async (ns) => {
    for (let ms = ns / 1e6; ms > 0; ms -= MAX_TIMEOUT_MS) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(ms, MAX_TIMEOUT_MS)));
    }
  },
};

/**
 * QEMU's leaky bucket with only an average rate (`avg`, bytes per second) and no burst limit:
 * the bucket holds `avg / 10` bytes before requests wait, it leaks `avg` bytes per second, and a
 * request that finds it fuller waits until the excess has leaked, then adds its whole size.
 */
export class WriteThrottle {
  readonly #avg: number;
  readonly #clock: ThrottleClock;
  #level = 0;
  #previousLeak: number;

  /** `bytesPerSecond` must be positive (qemu-img does not throttle at all for 0). */
  constructor(bytesPerSecond: number, clock: ThrottleClock = realClock) {
    if (!(bytesPerSecond > 0)) throw new RangeError(`rate limit must be positive, not ${bytesPerSecond}`);
    this.#avg = bytesPerSecond;
    this.#clock = clock;
    this.#previousLeak = clock.now();
  }

  /** Bytes counted in the bucket and not leaked yet (as of the last request). */
  get level(): number {
    return this.#level;
  }

  /**
   * Waits as long as qemu would before a write of `bytes`, then accounts for it
   * (throttle_group_co_io_limits_intercept).
   */
  async admit(bytes: number): Promise<void> {
    const wait = this.#computeWait(this.#clock.now());
    // The timer fires and the request runs without a second look at the bucket; the leak of
    // the time waited is counted at the next request (previous_leak stays at the check).
    if (wait > 0) await this.#clock.sleep(wait);
    this.#level += bytes;
  }

  /** throttle_compute_timer for the bps-write bucket: leak up to `now`, then the wait in ns. */
  #computeWait(now: number): number {
    const delta = now - this.#previousLeak;
    this.#previousLeak = now;
    if (delta > 0) this.#level = Math.max(this.#level - (this.#avg * delta) / NS_PER_SECOND, 0);
    const extra = this.#level - this.#avg / 10;
    // throttle_do_compute_wait converts the double to int64_t, which truncates.
    return extra > 0 ? Math.trunc((extra * NS_PER_SECOND) / this.#avg) : 0;
  }
}
