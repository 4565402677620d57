/** InlineIo: small requests on the calling thread (tmpfs; preadv2 RWF_NOWAIT elsewhere), and FileDevice through it. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileDevice } from '@tsimg/raw';
import { InlineIo } from '../src/inline-io.js';
import { loadNative } from '../src/native.js';

const TMPFS = 0x01021994;
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
function tempDir(base: string): string {
  const d = fs.mkdtempSync(path.join(base, 'tsimg-inline-'));
  dirs.push(d);
  return d;
}
const onTmpfs = fs.existsSync('/dev/shm') && fs.statfsSync('/dev/shm').type === TMPFS;
const disk = os.tmpdir();
const diskIsTmpfs = fs.statfsSync(disk).type === TMPFS;
const native = loadNative();

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

describe('InlineIo', () => {
  it.runIf(onTmpfs)('on tmpfs reads and writes small requests itself, leaves big ones to the pool', () => {
    const file = path.join(tempDir('/dev/shm'), 'f');
    fs.writeFileSync(file, pattern(1 << 20, 1));
    const fd = fs.openSync(file, 'r+');
    try {
      const io = new InlineIo(fd, undefined, TMPFS);
      const into = new Uint8Array(4096);
      expect(io.read(into, 8192)).toBe(4096);
      expect(into).toEqual(pattern(1 << 20, 1).subarray(8192, 8192 + 4096));
      expect(io.read(new Uint8Array(512 * 1024), 0)).toBe(0); // too big: the pool's
      expect(io.write(pattern(100, 7), 50)).toBe(100);
      expect(io.write(new Uint8Array(512 * 1024), 0)).toBe(0);
      expect(fs.readFileSync(file).subarray(50, 150)).toEqual(Buffer.from(pattern(100, 7)));
    } finally {
      fs.closeSync(fd);
    }
  });

  it.runIf(native?.preadNoWait !== undefined && !diskIsTmpfs)('elsewhere reads what the page cache holds with RWF_NOWAIT, never writes', () => {
    const file = path.join(tempDir(disk), 'f');
    fs.writeFileSync(file, pattern(1 << 20, 2)); // just written: cached
    const fd = fs.openSync(file, 'r+');
    try {
      const io = new InlineIo(fd, native, fs.statfsSync(file).type);
      const into = new Uint8Array(65536);
      const n = io.read(into, 4096);
      // Cached right after the write (0 only if the kernel dropped it meanwhile).
      expect([0, 65536]).toContain(n);
      if (n > 0) expect(into).toEqual(pattern(1 << 20, 2).subarray(4096, 4096 + 65536));
      expect(io.write(pattern(10, 3), 0)).toBe(0);
      // Past the end of the file: nothing to read, 0 (the pool then sees the end too).
      expect(io.read(into, 2 << 20)).toBe(0);
    } finally {
      fs.closeSync(fd);
    }
  });

  it('without the native module on a disk file system takes the pool for everything', () => {
    const io = new InlineIo(-1, undefined, 0xef53);
    expect(io.read(new Uint8Array(16), 0)).toBe(0);
    expect(io.write(new Uint8Array(16), 0)).toBe(0);
  });

  it.each([
    { where: 'tmpfs', base: '/dev/shm', native: true, run: onTmpfs },
    { where: 'disk, native', base: disk, native: true, run: true },
    { where: 'disk, no native', base: disk, native: false, run: true },
  ])('FileDevice reads and writes the same bytes through it ($where)', async ({ base, native: useNative, run }) => {
    if (!run) return;
    const p = path.join(tempDir(base), 'dev.img');
    const dev = await FileDevice.open(p, { create: true, native: useNative ? undefined : false });
    const small = pattern(3000, 4);
    const big = pattern(700 * 1024, 5);
    await dev.write(100, small);
    await dev.write(1 << 20, big);
    const a = new Uint8Array(3000);
    await dev.read(100, a);
    expect(a).toEqual(small);
    const b = new Uint8Array(700 * 1024);
    await dev.read(1 << 20, b);
    expect(b).toEqual(big);
    // A read across the end: the tail reads as zeroes.
    const tail = new Uint8Array(8192);
    await dev.read((1 << 20) + 700 * 1024 - 4096, tail);
    expect(tail.subarray(0, 4096)).toEqual(big.subarray(big.length - 4096));
    expect(tail.subarray(4096).every((x) => x === 0)).toBe(true);
    await dev.close();
    expect(fs.readFileSync(p).subarray(100, 3100)).toEqual(Buffer.from(small));
  });
});
