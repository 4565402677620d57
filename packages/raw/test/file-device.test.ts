import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FileDevice, type FileDeviceOptions, IoError, lockingAvailable, UsageError } from '@tsimg/raw';
import { FILE_STATUS_SCAN_LIMIT, hasSeekData } from '../src/file-device.js';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsimg-raw-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

// ext2/3/4, xfs, btrfs, tmpfs: FileDevice trusts st_blocks there.
const blocksTrusted = [0xef53, 0x58465342, 0x9123683e, 0x01021994].includes(fs.statfsSync(os.tmpdir()).type);
let counter = 0;
async function fresh(options: FileDeviceOptions = {}): Promise<FileDevice> {
  return FileDevice.open(path.join(dir, `f${counter++}.img`), { create: true, ...options });
}
const MiB = 1 << 20;
const filled = (n: number, v = 0xab): Uint8Array => new Uint8Array(n).fill(v);

describe('FileDevice', () => {
  it('opening a missing file fails like qemu', async () => {
    const p = path.join(dir, 'missing.img');
    await expect(FileDevice.open(p)).rejects.toMatchObject({
      code: 'not-found', errno: 'ENOENT', message: `Could not open '${p}': No such file or directory`,
    });
    await expect(FileDevice.open(dir)).rejects.toMatchObject({ code: 'io', errno: 'EISDIR', message: `Could not open '${dir}': Is a directory` });
    await expect(FileDevice.open(dir, { readOnly: true })).rejects.toMatchObject({
      code: 'usage', errno: 'EINVAL', message: `'file' driver requires '${dir}' to be a regular file`,
    });
    await expect(FileDevice.open('/dev/null', { readOnly: true })).rejects.toMatchObject({ code: 'usage' });
    await expect(FileDevice.open(p, { create: true, readOnly: true })).rejects.toBeInstanceOf(UsageError);
  });

  it('create truncates; write, read, read past EOF, grow on write', async () => {
    const p = path.join(dir, 'basic.img');
    fs.writeFileSync(p, 'old contents');
    const dev = await FileDevice.open(p, { create: true });
    expect(dev.fileName).toBe(p);
    expect(dev.readOnly).toBe(false);
    expect(dev.size()).toBe(0);
    await dev.write(100, new Uint8Array([1, 2, 3]));
    expect(dev.size()).toBe(103);
    const buf = filled(10, 9);
    await dev.read(98, buf);
    expect([...buf]).toEqual([0, 0, 1, 2, 3, 0, 0, 0, 0, 0]);
    await dev.close();
    expect(fs.statSync(p).size).toBe(103);
    await expect(dev.read(0, buf)).rejects.toThrow(/closed/);
  });

  it.each([{ io: 'async' as const }, { io: 'sync' as const }])('writev writes its parts back to back, growing the file (%o)', async ({ io }) => {
    const dev = await fresh({ io });
    const parts = [filled(3 * 512, 1), new Uint8Array(0), filled(MiB + 7, 2), filled(5, 3)];
    await dev.writev(4096, parts);
    const total = 3 * 512 + MiB + 7 + 5;
    expect(dev.size()).toBe(4096 + total);
    const back = new Uint8Array(total + 4096);
    await dev.read(0, back);
    const want = new Uint8Array(total + 4096);
    want.set(parts[0]!, 4096);
    want.set(parts[2]!, 4096 + 3 * 512);
    want.set(parts[3]!, 4096 + 3 * 512 + MiB + 7);
    expect(Buffer.from(back).equals(Buffer.from(want))).toBe(true);
    await dev.writev(0, []); // nothing to write
    expect(dev.size()).toBe(4096 + total);
    await dev.close();
    const ro = await FileDevice.open(path.join(dir, `f${counter - 1}.img`), { readOnly: true });
    await expect(ro.writev(0, [filled(1)])).rejects.toMatchObject({ code: 'read-only' });
    await ro.close();
  });

  it('large writes and reads round-trip', async () => {
    const dev = await fresh();
    const data = new Uint8Array(9 * MiB + 123).map((_, i) => (i * 7) & 0xff);
    await dev.write(4095, data);
    const back = new Uint8Array(data.length);
    await dev.read(4095, back);
    expect(Buffer.compare(back, data)).toBe(0);
    await dev.close();
  });

  it("resize keeps the file sparse (blockStatus with allocation: 'scan')", async () => {
    const dev = await fresh({ allocation: 'scan' });
    await dev.resize(1 << 30);
    expect(dev.size()).toBe(1 << 30);
    expect(await dev.allocatedSize()).toBe(0);
    // A file without any block is all holes (where st_blocks is trusted); otherwise holes are
    // found by reading and one call scans at most 64 MiB.
    expect(await dev.blockStatus(0, 1 << 30)).toEqual({
      kind: 'zero', offset: 0, length: blocksTrusted ? 1 << 30 : FILE_STATUS_SCAN_LIMIT, hostOffset: 0,
    });
    expect(await dev.blockStatus((1 << 30) - 4096, 1 << 30)).toMatchObject({ kind: 'zero', length: 1 << 30 });
    await dev.write(5 * MiB, filled(100));
    expect(await dev.blockStatus(0, 1 << 30)).toEqual({ kind: 'zero', offset: 0, length: 5 * MiB, hostOffset: 0 });
    expect(await dev.blockStatus(6 * MiB, 1 << 30)).toMatchObject({ kind: 'zero', length: FILE_STATUS_SCAN_LIMIT });
    expect(await dev.blockStatus(4 * MiB, 1 << 30)).toMatchObject({ kind: 'zero', length: MiB });
    expect(await dev.blockStatus(5 * MiB, 1 << 30)).toMatchObject({ kind: 'data', length: 4096 });
    await dev.resize(5 * MiB + 50);
    const buf = new Uint8Array(100);
    await dev.read(5 * MiB, buf);
    expect(buf.subarray(0, 50).every((b) => b === 0xab)).toBe(true);
    expect(buf.subarray(50).every((b) => b === 0)).toBe(true);
    await dev.close();
  });

  it.runIf(blocksTrusted)("allocation: 'scan': a 1 TiB file without blocks is one zero run, found without reading", async () => {
    const dev = await fresh({ allocation: 'scan' });
    await dev.resize(2 ** 40);
    expect(await dev.blockStatus(0, 2 ** 40)).toMatchObject({ kind: 'zero', length: 2 ** 40 });
    await dev.write(2 ** 39, filled(1)); // now it has a block: scanning (capped) again
    expect(await dev.blockStatus(2 ** 39 - 8192, 2 ** 40)).toMatchObject({ kind: 'zero', length: 8192 });
    expect(await dev.blockStatus(2 ** 39, 2 ** 40)).toMatchObject({ kind: 'data', length: 4096 });
    await dev.close();
  });

  it('writeZeroes reaching EOF with mayUnmap punches the tail', async () => {
    const dev = await fresh();
    await dev.write(0, filled(8 * MiB));
    await dev.flush();
    await dev.writeZeroes(MiB, 7 * MiB, { mayUnmap: true });
    expect(dev.size()).toBe(8 * MiB);
    expect(await dev.allocatedSize()).toBeLessThanOrEqual(MiB + 64 * 1024);
    expect(await dev.blockStatus(MiB, 7 * MiB)).toMatchObject({ kind: 'zero', length: 7 * MiB });
    await dev.close();
  });

  it('writeZeroes past EOF grows the file as a hole', async () => {
    const dev = await fresh();
    await dev.write(0, filled(4096));
    await dev.writeZeroes(MiB, MiB);
    expect(dev.size()).toBe(2 * MiB);
    expect(await dev.allocatedSize()).toBeLessThanOrEqual(64 * 1024);
    await dev.writeZeroes(0, 3 * MiB); // no mayUnmap: writes zeroes inside, grows past
    expect(dev.size()).toBe(3 * MiB);
    const buf = new Uint8Array(4096);
    await dev.read(0, buf);
    expect(buf.every((b) => b === 0)).toBe(true);
    await dev.close();
  });

  // native: fallocate(ZERO_RANGE) — allocated, but unwritten extents, which SEEK_DATA sees as
  // holes (as qemu's: `qemu-io -c 'write -z'` then `qemu-img map` says zero). Without it: written zeroes.
  it.each([{ native: true }, { native: false }])('writeZeroes inside: allocates without mayUnmap, keeps holes with it (%o)', async ({ native }) => {
    const zeroRange = native && lockingAvailable() && fs.statfsSync(os.tmpdir()).type !== 0x01021994; // tmpfs: no ZERO_RANGE
    const dev = await fresh({ native });
    await dev.resize(16 * MiB);
    await dev.write(15 * MiB, filled(MiB));
    await dev.writeZeroes(MiB, 4 * MiB, { mayUnmap: true }); // a hole already: nothing written
    expect(await dev.allocatedSize()).toBeLessThanOrEqual(MiB + 64 * 1024);
    await dev.writeZeroes(MiB, 4 * MiB); // must allocate (like preallocation)
    expect(await dev.allocatedSize()).toBeGreaterThanOrEqual(5 * MiB);
    if (hasSeekData()) {
      if (zeroRange) {
        expect(await dev.blockStatus(0, 16 * MiB)).toMatchObject({ kind: 'zero', length: 15 * MiB });
      } else {
        // SEEK_DATA sees the allocated zeroes as data, as qemu-img map does.
        expect(await dev.blockStatus(0, 16 * MiB)).toMatchObject({ kind: 'zero', length: MiB });
        expect(await dev.blockStatus(MiB, 16 * MiB)).toMatchObject({ kind: 'data', length: 4 * MiB });
      }
    } else {
      expect(await dev.blockStatus(0, 16 * MiB)).toMatchObject({ kind: 'zero', length: 15 * MiB });
    }
    await dev.close();
  });

  // posix_fallocate for qemu's falloc preallocation: blocks reserved, zeroes read, no data written.
  it.each([{ native: true }, { native: false }])('preallocate grows the file over allocated zero blocks, or says it cannot (%o)', async ({ native }) => {
    const dev = await fresh({ native });
    await dev.write(0, filled(1000));
    const done = await dev.preallocate(1000, 3 * MiB);
    expect(done).toBe(native && lockingAvailable());
    if (done) {
      expect(dev.size()).toBe(3 * MiB + 1000);
      expect(await dev.allocatedSize()).toBeGreaterThanOrEqual(3 * MiB);
      const back = new Uint8Array(3 * MiB + 1000);
      await dev.read(0, back);
      expect(back.subarray(0, 1000).every((b) => b === 0xab) && back.subarray(1000).every((b) => b === 0)).toBe(true);
    } else {
      expect(dev.size()).toBe(1000);
    }
    await dev.close();
  });

  it('discard zeroes the range and never grows the file', async () => {
    const dev = await fresh();
    await dev.write(0, filled(3 * MiB));
    await dev.discard(MiB, MiB); // inside: zeroes written
    await dev.discard(2 * MiB + 10, 10 * MiB); // reaches EOF: truncated away
    expect(dev.size()).toBe(3 * MiB);
    const buf = new Uint8Array(3 * MiB);
    await dev.read(0, buf);
    expect(buf.subarray(0, MiB).every((b) => b === 0xab)).toBe(true);
    expect(buf.subarray(MiB, 2 * MiB + 10).every((b, i) => (i < MiB ? b === 0 : b === 0xab))).toBe(true);
    expect(buf.subarray(2 * MiB + 10).every((b) => b === 0)).toBe(true);
    await dev.discard(10 * MiB, MiB);
    expect(dev.size()).toBe(3 * MiB);
    await dev.close();
  });

  // The content-scanning fallback; SEEK_DATA/SEEK_HOLE is tested in file-device-seek.test.ts.
  it("blockStatus (allocation: 'scan') finds zero and data runs at 4 KiB granularity", async () => {
    const dev = await fresh({ allocation: 'scan' });
    await dev.resize(4 * MiB);
    await dev.write(MiB + 5000, filled(10_000)); // touches blocks [1 MiB+4 KiB, 1 MiB+16 KiB)
    await dev.write(2 * MiB, new Uint8Array(8192)); // written zeroes count as zero
    const st = async (o: number, l: number) => dev.blockStatus(o, l);
    expect(await st(0, 4 * MiB)).toEqual({ kind: 'zero', offset: 0, length: MiB + 4096, hostOffset: 0 });
    expect(await st(MiB + 4096, 4 * MiB)).toMatchObject({ kind: 'data', length: 12_288 });
    expect(await st(MiB + 100, 4 * MiB)).toMatchObject({ kind: 'zero', length: 3996 });
    expect(await st(MiB + 8000, 4 * MiB)).toMatchObject({ kind: 'data', offset: MiB + 8000, length: 16_384 - 8000 });
    // Only the asked bytes are read: zero when they are, even inside a data block.
    expect(await st(MiB + 4096, 100)).toMatchObject({ kind: 'zero', length: 100 });
    expect(await st(MiB + 4096, 1000)).toMatchObject({ kind: 'data', length: 1000 });
    // a zero run reaching EOF continues past it
    expect(await st(MiB + 16_384, 100 * MiB)).toMatchObject({ kind: 'zero', length: 100 * MiB });
    expect(await st(10 * MiB, 5)).toEqual({ kind: 'zero', offset: 10 * MiB, length: 5, hostOffset: 10 * MiB });
    await expect(st(0, 0)).rejects.toBeInstanceOf(UsageError);
    await dev.close();
  });

  it("blockStatus (allocation: 'scan') reads at most 64 MiB per call; the tail of the file is data", async () => {
    const dev = await fresh({ allocation: 'scan' });
    await dev.write(0, filled(70 * MiB + 1));
    expect(await dev.blockStatus(0, 100 * MiB)).toMatchObject({ kind: 'data', length: FILE_STATUS_SCAN_LIMIT });
    expect(await dev.blockStatus(64 * MiB, 100 * MiB)).toMatchObject({ kind: 'data', length: 6 * MiB + 1 });
    expect(await dev.blockStatus(70 * MiB + 1, 100)).toMatchObject({ kind: 'zero', length: 100 });
    await dev.close();
  });

  it('readOnly refuses changes; reads still work', async () => {
    const p = path.join(dir, 'ro.img');
    fs.writeFileSync(p, Buffer.from('hello'));
    const dev = await FileDevice.open(p, { readOnly: true });
    expect(dev.readOnly).toBe(true);
    await expect(dev.write(0, new Uint8Array(1))).rejects.toMatchObject({ code: 'read-only' });
    await expect(dev.resize(0)).rejects.toMatchObject({ code: 'read-only' });
    await expect(dev.discard(0, 1)).rejects.toMatchObject({ code: 'read-only' });
    const buf = new Uint8Array(5);
    await dev.read(0, buf);
    expect(Buffer.from(buf).toString()).toBe('hello');
    await dev.flush();
    await dev.close();
  });

  it('tail truncation waits for writes in flight and blocks new ones', async () => {
    const dev = await fresh();
    await dev.write(0, filled(MiB));
    const ops = [
      dev.write(MiB, filled(MiB, 1)),
      dev.writeZeroes(MiB / 2, MiB / 2, { mayUnmap: true }),
      dev.write(3 * MiB, filled(MiB, 2)),
      dev.discard(0, 4096),
    ];
    await Promise.all(ops);
    const buf = new Uint8Array(4 * MiB);
    await dev.read(0, buf);
    expect(dev.size()).toBe(4 * MiB);
    expect(buf.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(buf.subarray(4096, MiB / 2).every((b) => b === 0xab)).toBe(true);
    expect(buf.subarray(MiB / 2, MiB).every((b) => b === 0)).toBe(true);
    expect(buf.subarray(MiB, 2 * MiB).every((b) => b === 1)).toBe(true);
    expect(buf.subarray(2 * MiB, 3 * MiB).every((b) => b === 0)).toBe(true);
    expect(buf.subarray(3 * MiB).every((b) => b === 2)).toBe(true);
    await dev.close();
  });

  it('OS errors become IoErrors naming the file and byte (both I/O modes)', async () => {
    for (const io of ['async', 'sync'] as const) {
      const dev = await FileDevice.open(path.join(dir, `efbig-${io}.img`), { create: true, io });
      const big = 2 ** 50; // past ext4's and most file systems' largest file
      const err = await dev.write(big, new Uint8Array(1)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(IoError);
      expect(err).toMatchObject({ code: 'io', errno: 'EFBIG', message: `error while writing '${dev.fileName}' at byte ${big}: File too large` });
      await expect(dev.resize(big)).rejects.toMatchObject({ errno: 'EFBIG', message: `Could not truncate '${dev.fileName}': File too large` });
      expect(dev.size()).toBe(0);
      await dev.close();
      // A closed device is a caller bug, not an I/O error.
      await expect(dev.flush()).rejects.toBeInstanceOf(UsageError);
    }
  });

  it("io: 'sync' reads and writes the same bytes", async () => {
    const p = path.join(dir, 'sync.img');
    const dev = await FileDevice.open(p, { create: true, io: 'sync' });
    const data = new Uint8Array(3 * MiB + 5).map((_, i) => (i * 13) & 0xff);
    await dev.write(77, data);
    const back = new Uint8Array(data.length + 100);
    await dev.read(77, back);
    expect(Buffer.compare(back.subarray(0, data.length), data)).toBe(0);
    expect(back.subarray(data.length).every((b) => b === 0)).toBe(true);
    await dev.close();
    expect(fs.statSync(p).size).toBe(77 + data.length);
  });
});
