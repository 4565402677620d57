/**
 * `convert -r`: QEMU's leaky bucket (util/throttle.c, bps-write only) on a fake clock. The
 * expected waits are worked out by hand from qemu's formulas: the bucket holds avg/10 bytes,
 * leaks avg bytes per second, and a request finding it fuller waits (level - avg/10) / avg
 * seconds, then adds its whole size without looking again.
 */
import { describe, expect, it, vi } from 'vitest';
import { MemoryDevice } from '@tsimg/raw';
import { convertCopy } from '@tsimg/image';
import { WriteThrottle, realClock, type ThrottleClock } from '../src/throttle.js';

const MiB = 1 << 20;
const S = 1e9;

/** A clock that only moves when something sleeps on it; records every requested sleep. */
function fakeClock(start = 5 * S): ThrottleClock & { sleeps: number[]; t: number } {
  const c = {
    t: start,
    sleeps: [] as number[],
    now: () => c.t,
    sleep: async (ns: number) => {
      c.sleeps.push(ns);
      c.t += ns;
    },
  };
  return c;
}

describe('WriteThrottle', () => {
  it('lets a burst through, then spaces writes out to the average rate (qemu-img -r 1M, 2 MiB chunks)', async () => {
    const clock = fakeClock();
    const th = new WriteThrottle(MiB, clock);
    await th.admit(2 * MiB); // empty bucket: no wait
    await th.admit(2 * MiB); // 2 MiB in it, 0.1 MiB allowed: (2 - 0.1) s
    await th.admit(2 * MiB); // 4 MiB - 1.9 s of leak = 2.1 MiB: (2.1 - 0.1) s
    await th.admit(2 * MiB);
    // The third wait is 2 s less a nanosecond: qemu's doubles round the same way (checked
    // against its formulas compiled in C).
    expect(clock.sleeps).toEqual([1.9 * S, 2 * S, 2 * S - 1]);
  });

  it('needs no wait while the bucket holds at most a tenth of a second of writes', async () => {
    const clock = fakeClock();
    const th = new WriteThrottle(10_000, clock);
    for (let i = 0; i < 10; i++) await th.admit(100); // 1000 bytes = avg / 10, never more
    expect(clock.sleeps).toEqual([]);
    await th.admit(1);
    await th.admit(1); // 1001 - 1000 = 1 byte over at 10 kB/s: 100 µs
    expect(clock.sleeps).toEqual([100_000]);
  });

  it('leaks with the time that passes between requests, and never below empty', async () => {
    const clock = fakeClock();
    const th = new WriteThrottle(1000, clock);
    await th.admit(5000);
    clock.t += 3 * S; // 3000 bytes leak
    await th.admit(0); // 2000 left, 100 allowed: 1.9 s
    expect(clock.sleeps).toEqual([1.9 * S]);
    clock.t += 100 * S;
    await th.admit(50);
    expect(th.level).toBe(50);
    expect(clock.sleeps).toHaveLength(1);
  });

  it('truncates the wait to whole nanoseconds like qemu (int64_t of a double)', async () => {
    const clock = fakeClock();
    const th = new WriteThrottle(3, clock);
    await th.admit(1);
    await th.admit(1); // (1 - 0.3) / 3 s = 233333333.33 ns
    expect(clock.sleeps).toEqual([233_333_333]);
  });

  it('refuses a rate that is not positive (-r 0 means no throttle at all)', () => {
    expect(() => new WriteThrottle(0)).toThrow(RangeError);
  });
});

/** Data clusters with a zero hole: [0, 3M) data, [3M, 4M) zero, [4M, 6M) data. */
function image(): Uint8Array {
  const b = new Uint8Array(6 * MiB).fill(0x5a);
  b.fill(0, 3 * MiB, 4 * MiB);
  return b;
}

describe('convertCopy with rateLimit', () => {
  it('waits before each write request as qemu-img convert -r does', async () => {
    const clock = fakeClock();
    const dst = new MemoryDevice({ size: 6 * MiB });
    await convertCopy([new MemoryDevice({ data: image() })], dst, { hasZeroInit: true, rateLimit: MiB, clock });
    // Writes (2 MiB chunks, the zero MiB skipped on a zero-initialised target): 2M at 0,
    // 1M, then 2M. Before the second: 2 - 0.1 = 1.9 s; before the third: 3 - 1.9 - 0.1 = 1 s.
    expect(clock.sleeps).toEqual([1.9 * S, 1 * S]);
    expect(Buffer.from(dst.contents()).equals(Buffer.from(image()))).toBe(true);
  });

  it('counts zero writes at their full length when the target is not known to be zero (-n)', async () => {
    const clock = fakeClock();
    const dst = new MemoryDevice({ data: new Uint8Array(6 * MiB).fill(0xee) });
    await convertCopy([new MemoryDevice({ data: image() })], dst, { hasZeroInit: false, rateLimit: MiB, clock });
    // 2M data at 0; 1M data: 1.9 s; 1M of zeroes: 3 - 1.9 - 0.1 = 1 s; 2M data:
    // 4 - 1.9 - 1 - 0.1 = 1 s.
    expect(clock.sleeps).toEqual([1.9 * S, 1 * S, 1 * S]);
    expect(Buffer.from(dst.contents()).equals(Buffer.from(image()))).toBe(true);
  });

  it('does not wait without a rate limit, or with 0', async () => {
    for (const rateLimit of [undefined, 0]) {
      const clock = fakeClock();
      const dst = new MemoryDevice({ size: 6 * MiB });
      await convertCopy([new MemoryDevice({ data: image() })], dst, { hasZeroInit: false, rateLimit, clock });
      expect(clock.sleeps).toEqual([]);
    }
  });
});

describe('realClock', () => {
  it('waits longer than setTimeout can in one go (-r 1 and a big write) in steps, on fake timers', async () => {
    vi.useFakeTimers();
    try {
      let done = false;
      const wait = realClock.sleep(3e9 * 1e6).then(() => (done = true)); // 3e9 ms: past 2^31 - 1
      await vi.advanceTimersByTimeAsync(2 ** 31 - 1);
      expect(done).toBe(false);
      await vi.advanceTimersByTimeAsync(3e9 - (2 ** 31 - 1));
      await wait;
      expect(done).toBe(true);
    } finally {
      vi.useRealTimers();
    }
  });
});
