import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { faultyDevice, FileDevice, IoError, MemoryDevice, UsageError } from '@tsimg/raw';

const bytes = (...v: number[]): Uint8Array => new Uint8Array(v);

describe('faultyDevice', () => {
  it('fails the planned writes and flushes with EIO, and keeps working', async () => {
    const mem = new MemoryDevice();
    const dev = faultyDevice(mem, { failWrite: [2, 4], failFlush: 1, cache: 'write-through' });
    await dev.write(0, bytes(1));
    const err = await dev.write(1, bytes(2)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IoError);
    expect(err).toMatchObject({ code: 'io', errno: 'EIO', message: 'Input/output error (injected: write #2)' });
    await dev.writeZeroes(0, 1);
    await expect(dev.discard(0, 1)).rejects.toThrow('write #4');
    await expect(dev.flush()).rejects.toThrow('flush #1');
    await dev.flush();
    await dev.resize(8);
    expect(dev.writes).toBe(5);
    expect(dev.flushes).toBe(2);
    expect([...mem.contents()]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it('fails planned reads with the chosen errno', async () => {
    const dev = faultyDevice(new MemoryDevice({ size: 10 }), { failRead: 2, errno: 'ENOSPC' });
    await dev.read(0, new Uint8Array(2));
    await expect(dev.read(0, new Uint8Array(2))).rejects.toMatchObject({ errno: 'ENOSPC', message: 'No space left on device (injected: read #2)' });
    await dev.read(0, new Uint8Array(2));
  });

  it('write-back: changes reach the device only on flush, in order', async () => {
    const mem = new MemoryDevice({ pageSize: 4096, data: new Uint8Array(8).fill(9) });
    const dev = faultyDevice(mem);
    await dev.write(2, bytes(1, 2, 3));
    await dev.writeZeroes(3, 1);
    await dev.write(20, bytes(7));
    expect(dev.pendingWrites).toBe(3);
    expect(dev.size()).toBe(21);
    expect(mem.size()).toBe(8);
    expect([...mem.contents()]).toEqual([9, 9, 9, 9, 9, 9, 9, 9]);
    const buf = new Uint8Array(22);
    await dev.read(0, buf);
    expect([...buf]).toEqual([9, 9, 1, 0, 3, 9, 9, 9, ...new Array(12).fill(0), 7, 0]);
    await dev.resize(4);
    await dev.resize(6);
    await dev.read(0, buf);
    expect([...buf]).toEqual([9, 9, 1, 0, ...new Array(18).fill(0)]);
    await dev.flush();
    expect(dev.pendingWrites).toBe(0);
    expect([...mem.contents()]).toEqual([9, 9, 1, 0, 0, 0]);
  });

  it('write-back blockStatus reports pending ranges as data', async () => {
    const mem = new MemoryDevice({ pageSize: 4096, size: 65536 });
    const dev = faultyDevice(mem);
    await dev.writeZeroes(8192, 4096);
    expect(await dev.blockStatus(0, 65536)).toEqual({ kind: 'zero', offset: 0, length: 8192 });
    expect(await dev.blockStatus(8192, 65536)).toEqual({ kind: 'data', offset: 8192, length: 4096 });
    expect(await dev.blockStatus(12288, 100)).toEqual({ kind: 'zero', offset: 12288, length: 100 });
  });

  it('a failed flush writes nothing and keeps the log for the next one', async () => {
    const mem = new MemoryDevice();
    const dev = faultyDevice(mem, { failFlush: 1 });
    await dev.write(0, bytes(5));
    await expect(dev.flush()).rejects.toBeInstanceOf(IoError);
    expect(mem.size()).toBe(0);
    await dev.flush();
    expect([...mem.contents()]).toEqual([5]);
  });

  it('power loss after the Nth write keeps only what was flushed', async () => {
    const mem = new MemoryDevice();
    const dev = faultyDevice(mem, { powerLossAfterWrite: 3 });
    await dev.write(0, bytes(1, 1));
    await dev.flush();
    await dev.write(0, bytes(2)); // #2: never flushed
    await dev.write(1, bytes(3)); // #3: succeeds, then the power goes
    expect(dev.powerLost).toBe(true);
    expect(dev.pendingWrites).toBe(0);
    await expect(dev.read(0, new Uint8Array(1))).rejects.toThrow(/power lost/);
    await expect(dev.flush()).rejects.toBeInstanceOf(IoError);
    expect(() => dev.size()).toThrow(IoError);
    await dev.close(); // lets go of mem without closing it
    expect([...mem.contents()]).toEqual([1, 1]);
    expect(mem.size()).toBe(2);
  });

  it('powerLoss() on a file: reopen the path to see what survived', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsimg-faulty-'));
    try {
      const p = path.join(dir, 'disk.img');
      const dev = faultyDevice(await FileDevice.open(p, { create: true }));
      await dev.write(0, bytes(1, 2, 3, 4));
      await dev.flush();
      await dev.writeZeroes(0, 4, { mayUnmap: true });
      await dev.resize(1 << 20);
      dev.powerLoss();
      await dev.close();
      await dev.inner.close();
      const after = await FileDevice.open(p, { readOnly: true });
      expect(after.size()).toBe(4);
      const buf = new Uint8Array(4);
      await after.read(0, buf);
      expect([...buf]).toEqual([1, 2, 3, 4]);
      await after.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('enumerates every crash point of an operation', async () => {
    // The pattern crash-safety tests use: count the writes once, then crash after each one.
    const op = async (dev: { write(o: number, d: Uint8Array): Promise<void>; flush(): Promise<void> }) => {
      await dev.write(0, bytes(1));
      await dev.flush();
      await dev.write(1, bytes(2));
      await dev.write(2, bytes(3));
      await dev.flush();
    };
    const probe = faultyDevice(new MemoryDevice());
    await op(probe);
    const seen: number[][] = [];
    for (let n = 1; n <= probe.writes; n++) {
      const mem = new MemoryDevice();
      await expect(op(faultyDevice(mem, { powerLossAfterWrite: n }))).rejects.toBeInstanceOf(IoError);
      seen.push([...mem.contents()]);
    }
    expect(seen).toEqual([[], [1], [1]]);
  });

  it('close flushes the log and closes the device', async () => {
    const mem = new MemoryDevice();
    const dev = faultyDevice(mem);
    await dev.write(0, bytes(4));
    await dev.close();
    expect([...mem.contents()]).toEqual([4]);
    expect(() => mem.size()).toThrow(/closed/);
    expect(dev.flushes).toBe(1);
  });

  it('write-through: a power loss loses nothing already written', async () => {
    const mem = new MemoryDevice();
    const dev = faultyDevice(mem, { cache: 'write-through', powerLossAfterWrite: 2 });
    await dev.write(0, bytes(1));
    await dev.write(1, bytes(2));
    expect(dev.powerLost).toBe(true);
    await expect(dev.write(2, bytes(3))).rejects.toBeInstanceOf(IoError);
    expect([...mem.contents()]).toEqual([1, 2]);
  });

  it('a flush covers the writes made before it, not those made while it runs', async () => {
    const mem = new MemoryDevice();
    const dev = faultyDevice(mem);
    await dev.write(0, bytes(1));
    const flushing = dev.flush();
    await dev.write(1, bytes(2));
    await flushing;
    expect(dev.pendingWrites).toBe(1);
    expect([...mem.contents()]).toEqual([1]);
    dev.powerLoss();
    expect([...mem.contents()]).toEqual([1]);
  });

  it('validates the plan', () => {
    expect(() => faultyDevice(new MemoryDevice(), { failWrite: 0 })).toThrow(UsageError);
    expect(() => faultyDevice(new MemoryDevice(), { powerLossAfterWrite: 1.5 })).toThrow(UsageError);
  });

  it('refuses writes to a read-only device without counting a fault', async () => {
    const dev = faultyDevice(new MemoryDevice({ readOnly: true }), { failWrite: 1 });
    await expect(dev.write(0, bytes(1))).rejects.toMatchObject({ code: 'read-only' });
  });
});
