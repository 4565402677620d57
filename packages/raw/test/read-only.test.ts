import { describe, expect, it } from 'vitest';
import { MemoryDevice, ReadOnlyError, readOnlyDevice } from '@tsimg/raw';

describe('readOnlyDevice', () => {
  it('passes reads through and refuses every change', async () => {
    const mem = new MemoryDevice({ data: new Uint8Array([1, 2, 3, 4]) });
    const dev = readOnlyDevice(mem);
    expect(dev.readOnly).toBe(true);
    expect(dev.size()).toBe(4);
    const buf = new Uint8Array(4);
    await dev.read(0, buf);
    expect([...buf]).toEqual([1, 2, 3, 4]);
    expect(await dev.blockStatus(0, 4)).toMatchObject({ kind: 'data' });
    for (const op of [
      () => dev.write(0, new Uint8Array(1)),
      () => dev.writeZeroes(0, 1, { mayUnmap: true }),
      () => dev.discard(0, 1),
      () => dev.resize(0),
    ]) {
      const err = await op().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ReadOnlyError);
      expect(err).toMatchObject({ code: 'read-only', errno: 'EPERM', message: 'Block node is read-only' });
    }
    expect([...mem.contents()]).toEqual([1, 2, 3, 4]);
    await dev.flush();
    expect(await dev.allocatedSize()).toBe(65536);
    await dev.close();
    expect(() => mem.size()).toThrow(/closed/);
  });
});
