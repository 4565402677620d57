import { describe, expect, it } from 'vitest';
import { countingDevice, MemoryDevice } from '@tsimg/raw';

describe('CountingDevice', () => {
  it('counts calls and bytes, and resets', async () => {
    const dev = countingDevice(new MemoryDevice());
    await dev.write(0, new Uint8Array(100));
    await dev.write(100, new Uint8Array(50));
    await dev.read(0, new Uint8Array(30));
    await dev.writeZeroes(0, 10);
    await dev.discard(0, 20);
    await dev.flush();
    await dev.resize(1000);
    await dev.blockStatus(0, 1000);
    expect(dev.counts).toEqual({
      reads: 1, readBytes: 30, writes: 2, writeBytes: 150, zeroWrites: 1, zeroBytes: 10,
      discards: 1, discardBytes: 20, flushes: 1, resizes: 1, blockStatusCalls: 1,
    });
    expect(dev.size()).toBe(1000);
    expect(dev.readOnly).toBe(false);
    dev.reset();
    expect(Object.values(dev.counts).every((v) => v === 0)).toBe(true);
    await dev.close();
    expect(() => dev.inner.size()).toThrow(/closed/);
  });
});
