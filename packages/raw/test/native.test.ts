/** FileDevice on the native module: fallocate zeroing, and host block devices (loop devices). */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FileDevice, lockingAvailable } from '@tsimg/raw';
import { nativeStatus } from '../src/native.js';

const MiB = 1 << 20;
const native = lockingAvailable();
if (!native && !process.env.CI) console.warn(`\n!!! SKIPPING native fallocate tests: tsimg_fs is ${nativeStatus()} !!!\n`);
const describeNative = native || process.env.CI ? describe : describe.skip;

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsimg-native-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describeNative('FileDevice with fallocate', () => {
  it('is loaded (CI builds it)', () => {
    expect(nativeStatus()).toBe('loaded');
  });

  it('discard punches a hole: st_blocks drop, zeroes read back, the size stays', async () => {
    const dev = await FileDevice.open(path.join(dir, 'punch.img'), { create: true });
    await dev.write(0, new Uint8Array(4 * MiB).fill(0xab));
    const before = await dev.allocatedSize();
    await dev.discard(MiB, 2 * MiB);
    expect(before - (await dev.allocatedSize())).toBeGreaterThanOrEqual(2 * MiB - 8192);
    const buf = new Uint8Array(4 * MiB);
    await dev.read(0, buf);
    expect(buf.subarray(MiB, 3 * MiB).every((b) => b === 0)).toBe(true);
    expect(buf[MiB - 1]).toBe(0xab);
    expect(buf[3 * MiB]).toBe(0xab);
    // Discarding the tail punches too (KEEP_SIZE), where the fallback truncated.
    await dev.discard(3 * MiB, MiB);
    expect(dev.size()).toBe(4 * MiB);
    expect(fs.statSync(dev.fileName).size).toBe(4 * MiB);
    await dev.close();
  });

  it('writeZeroes: mayUnmap punches, without it ZERO_RANGE keeps the blocks; both read zeroes', async () => {
    const dev = await FileDevice.open(path.join(dir, 'zero.img'), { create: true });
    await dev.write(0, new Uint8Array(4 * MiB).fill(1));
    await dev.writeZeroes(0, MiB, { mayUnmap: true });
    const afterPunch = await dev.allocatedSize();
    expect(afterPunch).toBeLessThanOrEqual(3 * MiB + 8192);
    await dev.writeZeroes(MiB, MiB); // ZERO_RANGE (or, on tmpfs, written zeroes): stays allocated
    expect(await dev.allocatedSize()).toBe(afterPunch);
    await dev.writeZeroes(3 * MiB, 2 * MiB, { mayUnmap: true }); // past the end: grows as a hole
    expect(dev.size()).toBe(5 * MiB);
    const buf = new Uint8Array(5 * MiB);
    await dev.read(0, buf);
    expect(buf.subarray(0, 2 * MiB).every((b) => b === 0)).toBe(true);
    expect(buf.subarray(2 * MiB, 3 * MiB).every((b) => b === 1)).toBe(true);
    expect(buf.subarray(3 * MiB).every((b) => b === 0)).toBe(true);
    await dev.close();
  });
});

/** A loop device over a fresh 8 MiB file, or the reason there is none. */
function attachLoop(file: string): string | { skip: string } {
  const r = spawnSync('losetup', ['-f', '--show', file], { encoding: 'utf8' });
  if (r.status === 0) return r.stdout.trim();
  spawnSync('modprobe', ['loop']);
  const again = spawnSync('losetup', ['-f', '--show', file], { encoding: 'utf8' });
  return again.status === 0 ? again.stdout.trim() : { skip: (again.stderr || String(again.error)).trim() };
}

describe('FileDevice on a host block device (loop)', () => {
  let loop: string | undefined;
  let backing: string;
  beforeAll(() => {
    backing = path.join(dir, 'loop-backing.img');
    fs.writeFileSync(backing, new Uint8Array(0));
    fs.truncateSync(backing, 8 * MiB);
    const r = attachLoop(backing);
    if (typeof r === 'string') loop = r;
    else console.warn(`\n!!! SKIPPING loop-device tests: losetup failed (${r.skip}) !!!\n`);
  });
  afterAll(() => {
    if (loop !== undefined) spawnSync('losetup', ['-d', loop]);
  });

  for (const useNative of [true, false]) {
    it(`size, read/write, no growth, all data (${useNative ? 'BLKGETSIZE64' : 'sysfs, without the native module'})`, async (ctx) => {
      if (loop === undefined || (useNative && !native)) return ctx.skip();
      const dev = await FileDevice.open(loop, { native: useNative });
      expect(dev.blockDevice).toBe(true);
      expect(dev.size()).toBe(8 * MiB);
      await dev.write(MiB, new Uint8Array(4096).fill(7));
      await dev.flush();
      const buf = new Uint8Array(4096);
      await dev.read(MiB, buf);
      expect(buf.every((b) => b === 7)).toBe(true);
      await expect(dev.resize(9 * MiB)).rejects.toMatchObject({ code: 'usage', errno: 'EINVAL', message: 'Cannot grow device files' });
      await dev.resize(4 * MiB); // not exact: nothing happens, as qemu-img resize --shrink on a device
      expect(dev.size()).toBe(8 * MiB);
      await expect(dev.write(8 * MiB - 10, new Uint8Array(20))).rejects.toMatchObject({ code: 'io', errno: 'ENOSPC' });
      expect(await dev.blockStatus(0, 16 * MiB)).toEqual({ kind: 'data', offset: 0, length: 8 * MiB, hostOffset: 0 });
      expect(await dev.allocatedSize()).toBe(0);
      await dev.writeZeroes(MiB, 4096, { mayUnmap: true });
      await dev.discard(0, 4096);
      await dev.read(MiB, buf);
      expect(buf.every((b) => b === 0)).toBe(true);
      await dev.close();
      // qemu agrees on the size.
      const info = spawnSync('qemu-img', ['info', '-f', 'raw', '--output=json', loop], { encoding: 'utf8' });
      if (info.status === 0) expect(JSON.parse(info.stdout)['virtual-size']).toBe(8 * MiB);
    });
  }
});
