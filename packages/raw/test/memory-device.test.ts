import { describe, expect, it } from 'vitest';
import { MemoryDevice, TsimgError, UsageError } from '@tsimg/raw';

const TiB = 2 ** 40;

describe('MemoryDevice', () => {
  it('starts empty and sparse, even at 1 TiB', async () => {
    const dev = new MemoryDevice({ size: TiB });
    expect(dev.size()).toBe(TiB);
    expect(await dev.allocatedSize()).toBe(0);
    expect(await dev.blockStatus(0, TiB)).toEqual({ kind: 'zero', offset: 0, length: TiB });
    const buf = new Uint8Array(100).fill(7);
    await dev.read(TiB - 50, buf);
    expect(buf.every((b) => b === 0)).toBe(true);
  });

  it('writes allocate pages; reads see them; allocatedSize counts pages', async () => {
    const dev = new MemoryDevice({ size: TiB });
    await dev.write(TiB / 2 + 10, new Uint8Array([1, 2, 3]));
    expect(await dev.allocatedSize()).toBe(65536);
    const buf = new Uint8Array(5);
    await dev.read(TiB / 2 + 9, buf);
    expect([...buf]).toEqual([0, 1, 2, 3, 0]);
    expect(await dev.blockStatus(0, TiB)).toEqual({ kind: 'zero', offset: 0, length: TiB / 2 });
    expect(await dev.blockStatus(TiB / 2 + 100, TiB / 2 - 100)).toEqual({
      kind: 'data', offset: TiB / 2 + 100, length: 65536 - 100,
    });
  });

  it('writes across pages and past the end grow the device', async () => {
    const dev = new MemoryDevice({ pageSize: 4096 });
    const data = new Uint8Array(10_000).map((_, i) => (i % 251) + 1);
    await dev.write(3000, data);
    expect(dev.size()).toBe(13_000);
    expect(await dev.allocatedSize()).toBe(4 * 4096);
    const back = new Uint8Array(10_000);
    await dev.read(3000, back);
    expect(back).toEqual(data);
    expect(await dev.blockStatus(0, 13_000)).toEqual({ kind: 'data', offset: 0, length: 13_000 });
  });

  it('writeZeroes and discard drop pages; writeZeroes grows, discard does not', async () => {
    const dev = new MemoryDevice({ pageSize: 4096, data: new Uint8Array(16384).fill(1) });
    expect(await dev.allocatedSize()).toBe(16384);
    await dev.writeZeroes(4096, 8192);
    expect(await dev.allocatedSize()).toBe(8192);
    expect(await dev.blockStatus(0, 16384)).toEqual({ kind: 'data', offset: 0, length: 4096 });
    expect(await dev.blockStatus(4096, 16384)).toEqual({ kind: 'zero', offset: 4096, length: 8192 });
    await dev.writeZeroes(12288 + 100, 100); // partial: the page stays, the bytes are zero
    expect(await dev.allocatedSize()).toBe(8192);
    expect(dev.contents()[12288 + 150]).toBe(0);
    await dev.discard(12288, 1 << 20);
    expect(dev.size()).toBe(16384);
    expect(await dev.allocatedSize()).toBe(4096);
    await dev.writeZeroes(20000, 100);
    expect(dev.size()).toBe(20100);
  });

  it('a page zeroed piece by piece is dropped', async () => {
    const dev = new MemoryDevice({ pageSize: 4096 });
    await dev.write(0, new Uint8Array(4096).fill(3));
    await dev.writeZeroes(0, 2048);
    expect(await dev.allocatedSize()).toBe(4096);
    await dev.discard(2048, 2048);
    expect(await dev.allocatedSize()).toBe(0);
  });

  it('resize shrinks (dropping data) and grows with zeroes', async () => {
    const dev = new MemoryDevice({ pageSize: 4096, data: new Uint8Array(10_000).fill(9) });
    await dev.resize(5000);
    await dev.resize(10_000);
    const c = dev.contents();
    expect(c.subarray(0, 5000).every((b) => b === 9)).toBe(true);
    expect(c.subarray(5000).every((b) => b === 0)).toBe(true);
    expect(await dev.allocatedSize()).toBe(8192);
  });

  it('all-zero initial data is not stored', async () => {
    const dev = new MemoryDevice({ data: new Uint8Array(1 << 20) });
    expect(dev.size()).toBe(1 << 20);
    expect(await dev.allocatedSize()).toBe(0);
  });

  it('readOnly refuses changes with code read-only', async () => {
    const dev = new MemoryDevice({ size: 4096, readOnly: true });
    for (const op of [
      () => dev.write(0, new Uint8Array(1)),
      () => dev.writeZeroes(0, 1),
      () => dev.discard(0, 1),
      () => dev.resize(0),
    ]) {
      await expect(op()).rejects.toMatchObject({ code: 'read-only', name: 'ReadOnlyError' });
    }
    await dev.read(0, new Uint8Array(10));
    await dev.flush();
  });

  it('rejects bad arguments and use after close', async () => {
    expect(() => new MemoryDevice({ pageSize: 1000 })).toThrow(UsageError);
    const dev = new MemoryDevice();
    await expect(dev.write(-1, new Uint8Array(1))).rejects.toBeInstanceOf(UsageError);
    await expect(dev.read(2 ** 53, new Uint8Array(1))).rejects.toBeInstanceOf(UsageError);
    await expect(dev.blockStatus(0, 0)).rejects.toBeInstanceOf(UsageError);
    await dev.close();
    await expect(dev.read(0, new Uint8Array(1))).rejects.toBeInstanceOf(TsimgError);
    expect(() => dev.size()).toThrow(/closed/);
  });
});
