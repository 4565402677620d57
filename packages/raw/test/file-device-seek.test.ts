/**
 * FileDevice.blockStatus with SEEK_DATA/SEEK_HOLE (the optional fs-ext module): known layouts,
 * fast-check properties over sparse files made with truncate + writes, cross-checked against
 * `qemu-img map --output=json -f raw`, the 1 TiB timing, and the lazy load.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type BlockStatus, FileDevice, isZero } from '@tsimg/raw';
import { hasSeekData } from '../src/file-device.js';
import { describeQemu, qemuImg } from '../../../test-images/qemu.js';

const KiB = 1024;
const MiB = 1 << 20;
const TiB = 2 ** 40;

// Without fs-ext (no compiler at install time, not Linux) FileDevice scans content instead, and
// these tests do not apply: skipped loudly, but failing under CI, where fs-ext must have built.
const seekData = hasSeekData();
if (!seekData && !process.env.CI) {
  console.warn('\n!!! SKIPPING SEEK_DATA tests: the optional module fs-ext is not loaded (FileDevice scans content). !!!\n');
}
const describeSeek = seekData || process.env.CI ? describe : describe.skip;

// File systems where every written block is allocated (no compression or dedup turning written
// zeroes into holes): ext2/3/4, xfs, tmpfs.
const writesAllocate = [0xef53, 0x58465342, 0x01021994].includes(fs.statfsSync(os.tmpdir()).type);

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsimg-seek-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
let counter = 0;
const newPath = (): string => path.join(dir, `s${counter++}.img`);

/** A file of `size` bytes made with truncate, then `writes` of `fill` bytes (0 = written zeroes). */
function makeSparse(file: string, size: number, writes: readonly Write[]): void {
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, size);
    for (const w of writes) fs.writeSync(fd, new Uint8Array(w.length).fill(w.fill), 0, w.length, w.offset);
  } finally {
    fs.closeSync(fd);
  }
}
interface Write {
  offset: number;
  length: number;
  fill: number;
}

/** Walks blockStatus over `[0, end)`, merging neighbours of one kind, as qemu-img map merges. */
async function walk(dev: FileDevice, end: number): Promise<{ start: number; length: number; kind: BlockStatus['kind'] }[]> {
  const runs: { start: number; length: number; kind: BlockStatus['kind'] }[] = [];
  for (let offset = 0; offset < end; ) {
    const st = await dev.blockStatus(offset, end - offset);
    expect(st.offset).toBe(offset);
    expect(st.length).toBeGreaterThanOrEqual(1);
    expect(st.length).toBeLessThanOrEqual(end - offset);
    expect(st.kind === 'unallocated' ? undefined : st.hostOffset).toBe(offset);
    const last = runs.at(-1);
    if (last?.kind === st.kind) last.length += st.length;
    else runs.push({ start: offset, length: st.length, kind: st.kind });
    offset += st.length;
  }
  return runs;
}

/** qemu-img map's extents for a raw file, reduced to what blockStatus reports. */
function qemuMap(file: string): { start: number; length: number; kind: 'data' | 'zero' }[] {
  const r = qemuImg(['map', '--output=json', '-f', 'raw', file]);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  const entries = JSON.parse(r.stdout) as { start: number; length: number; data: boolean; zero: boolean }[];
  return entries.map((e) => ({ start: e.start, length: e.length, kind: e.data ? 'data' : 'zero' }));
}

/** qemu's size for a raw file: bdrv_getlength counts whole 512-byte sectors. */
const qemuSize = (size: number): number => Math.ceil(size / 512) * 512;

/** Random sparse layouts: 4 KiB-aligned and unaligned writes of data or of zeroes. */
const layoutArb = fc
  .record({
    size: fc.oneof(fc.integer({ min: 1, max: 8 * MiB }), fc.integer({ min: 1, max: 2048 }).map((n) => n * 4 * KiB)),
    writes: fc.array(
      fc.record({
        aligned: fc.boolean(),
        at: fc.double({ min: 0, max: 1, noNaN: true }),
        blocks: fc.integer({ min: 1, max: 64 }),
        bytes: fc.integer({ min: 1, max: 100 * KiB }),
        fill: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 255 })),
      }),
      { maxLength: 8 },
    ),
  })
  .map(({ size, writes }) => ({
    size,
    writes: writes.map((w): Write => {
      // Writes may run past the size (the file grows), as FileDevice's writes do.
      const offset = w.aligned ? Math.floor((w.at * size) / (4 * KiB)) * 4 * KiB : Math.floor(w.at * size);
      return { offset, length: w.aligned ? w.blocks * 4 * KiB : w.bytes, fill: w.fill };
    }),
  }));

describeSeek('FileDevice.blockStatus with SEEK_DATA/SEEK_HOLE', () => {
  it('is available here (fs-ext built and loaded)', () => {
    expect(seekData).toBe(true);
  });

  it('reports holes as zero and written blocks as data, zeroes included', async () => {
    const file = newPath();
    makeSparse(file, 4 * MiB, [
      { offset: MiB + 5000, length: 10_000, fill: 0xab }, // blocks [1 MiB+4 KiB, 1 MiB+16 KiB)
      { offset: 2 * MiB, length: 8192, fill: 0 }, // written zeroes: allocated, so data
    ]);
    const dev = await FileDevice.open(file, { readOnly: true });
    const st = (o: number, l: number): Promise<BlockStatus> => dev.blockStatus(o, l);
    expect(await st(0, 4 * MiB)).toEqual({ kind: 'zero', offset: 0, length: MiB + 4096, hostOffset: 0 });
    expect(await st(MiB + 4096, 4 * MiB)).toEqual({ kind: 'data', offset: MiB + 4096, length: 12_288, hostOffset: MiB + 4096 });
    // Unaligned offsets: the extent from there; never longer than asked.
    expect(await st(MiB + 100, 4 * MiB)).toMatchObject({ kind: 'zero', length: 3996 });
    expect(await st(MiB + 8000, 4 * MiB)).toMatchObject({ kind: 'data', length: 16_384 - 8000 });
    expect(await st(MiB + 4096, 100)).toMatchObject({ kind: 'data', length: 100 });
    expect(await st(MiB, 100)).toMatchObject({ kind: 'zero', length: 100 });
    expect(await st(2 * MiB - 1, 4 * MiB)).toMatchObject({ kind: 'zero', length: 1 });
    expect(await st(2 * MiB, 4 * MiB)).toMatchObject({ kind: 'data', length: 8192 });
    // The hole that runs to EOF (ENXIO) continues past it, to the end of the request.
    expect(await st(2 * MiB + 8192, 100 * MiB)).toMatchObject({ kind: 'zero', length: 100 * MiB });
    expect(await st(10 * MiB, 5)).toEqual({ kind: 'zero', offset: 10 * MiB, length: 5, hostOffset: 10 * MiB });
    await dev.close();
  });

  it('a data extent ends at an unaligned EOF; past it is zero', async () => {
    const file = newPath();
    makeSparse(file, 10_000, [{ offset: 9000, length: 3, fill: 1 }]);
    const dev = await FileDevice.open(file, { readOnly: true });
    expect(await walk(dev, qemuSize(10_000))).toEqual([
      { start: 0, length: 8192, kind: 'zero' },
      { start: 8192, length: 1808, kind: 'data' },
      { start: 10_000, length: 240, kind: 'zero' },
    ]);
    await dev.close();
  });

  // Without the native module (native: false); with it, see the fallocate tests in native.test.ts.
  it('follows the device’s own writes, zero writes, tail truncation and growth', async () => {
    const dev = await FileDevice.open(newPath(), { create: true, native: false });
    await dev.resize(16 * MiB);
    expect(await dev.blockStatus(0, 16 * MiB)).toMatchObject({ kind: 'zero', length: 16 * MiB });
    await dev.write(3 * MiB, new Uint8Array(MiB)); // zeroes, but written: data
    await dev.writeZeroes(8 * MiB, MiB); // writes zeroes (no mayUnmap): data
    await dev.writeZeroes(12 * MiB, MiB, { mayUnmap: true }); // a hole already: stays one
    expect(await walk(dev, 16 * MiB)).toEqual([
      { start: 0, length: 3 * MiB, kind: 'zero' },
      { start: 3 * MiB, length: MiB, kind: 'data' },
      { start: 4 * MiB, length: 4 * MiB, kind: 'zero' },
      { start: 8 * MiB, length: MiB, kind: 'data' },
      { start: 9 * MiB, length: 7 * MiB, kind: 'zero' },
    ]);
    await dev.writeZeroes(8 * MiB, 8 * MiB, { mayUnmap: true }); // reaches EOF: truncated away
    await dev.write(20 * MiB, new Uint8Array([1])); // grows the file
    expect(await walk(dev, 20 * MiB + 1)).toEqual([
      { start: 0, length: 3 * MiB, kind: 'zero' },
      { start: 3 * MiB, length: MiB, kind: 'data' },
      { start: 4 * MiB, length: 16 * MiB, kind: 'zero' },
      { start: 20 * MiB, length: 1, kind: 'data' },
    ]);
    await dev.close();
  });

  it('discard and writeZeroes with mayUnmap skip holes without reading them (without the native module)', async () => {
    const dev = await FileDevice.open(newPath(), { create: true, native: false });
    const GiB = 2 ** 30;
    await dev.resize(64 * GiB);
    await dev.write(0, new Uint8Array(8192).fill(1));
    await dev.write(20 * GiB + 100, new Uint8Array(100).fill(2));
    await dev.write(40 * GiB, new Uint8Array(4096)); // allocated zeroes: read, left as they are
    await dev.write(64 * GiB - 1, new Uint8Array([3]));
    // Holes are skipped by SEEK_HOLE, not read (reading would cost ≈0.8 s per GiB); the
    // benchmarks measure that, tests only check the outcome.
    await dev.discard(4096, 64 * GiB - 8192);
    await dev.writeZeroes(4096, 64 * GiB - 8192, { mayUnmap: true });
    const head = new Uint8Array(8192);
    await dev.read(0, head);
    expect(head.subarray(0, 4096).every((b) => b === 1) && isZero(head.subarray(4096))).toBe(true);
    const mid = new Uint8Array(4096);
    await dev.read(20 * GiB, mid);
    expect(isZero(mid)).toBe(true);
    const tail = new Uint8Array(1);
    await dev.read(64 * GiB - 1, tail);
    expect(tail[0]).toBe(3);
    expect(await dev.blockStatus(40 * GiB, GiB)).toMatchObject({ kind: 'data', length: 4096 });
    await dev.close();
  });

  it('property: runs tile the file, zero runs read as zeroes, written bytes are data', async () => {
    await fc.assert(
      fc.asyncProperty(layoutArb, async ({ size, writes }) => {
        const file = newPath();
        makeSparse(file, size, writes);
        const dev = await FileDevice.open(file, { readOnly: true });
        try {
          const end = dev.size();
          const runs = await walk(dev, end);
          const bytes = fs.readFileSync(file);
          for (const r of runs) {
            if (r.kind === 'zero') expect(isZero(bytes.subarray(r.start, r.start + r.length))).toBe(true);
            // Allocation is per file-system block: a data run starts on a 4 KiB boundary and
            // ends on one or at EOF.
            if (r.kind === 'data') {
              expect(r.start % (4 * KiB)).toBe(0);
              expect((r.start + r.length) % (4 * KiB) === 0 || r.start + r.length === end).toBe(true);
            }
          }
          if (writesAllocate) {
            for (const w of writes) {
              const inData = runs.some((r) => r.kind === 'data' && r.start <= w.offset && w.offset + w.length <= r.start + r.length);
              expect(inData, `write ${JSON.stringify(w)} inside a data run`).toBe(true);
            }
          }
        } finally {
          await dev.close();
          fs.rmSync(file);
        }
      }),
      { numRuns: 60 },
    );
  });

  it('walks a 1 TiB sparse file with a few extents, one call per extent', async () => {
    const file = newPath();
    const writes: Write[] = [0, 2 ** 30, 2 ** 38 + 12_345, 2 ** 39, TiB - 100].map((offset) => ({ offset, length: 64 * KiB, fill: 7 }));
    makeSparse(file, TiB, writes);
    const dev = await FileDevice.open(file, { readOnly: true });
    await dev.blockStatus(0, 1); // loads fs-ext: not part of the walk's cost
    const size = dev.size();
    const runs = await walk(dev, size);
    // data at 0, then hole / data four times; the last write ends past 1 TiB, at EOF.
    expect(runs.map((r) => r.kind)).toEqual(['data', ...Array<string>(4).fill(['zero', 'data']).flat()]);
    // its block starts at TiB - 4 KiB; the run ends at the unaligned EOF, TiB - 100 + 64 KiB
    expect(runs.at(-1)).toEqual({ start: TiB - 4096, length: 4096 - 100 + 64 * KiB, kind: 'data' });
    await dev.close();
  });
});

describeSeek('FileDevice.blockStatus against qemu-img map', () => {
  describeQemu('qemu-img map --output=json -f raw', () => {
    it('property: the same extents as qemu-img map for sparse files made with truncate + writes', async () => {
      await fc.assert(
        fc.asyncProperty(layoutArb, async ({ size, writes }) => {
          const file = newPath();
          makeSparse(file, size, writes);
          const dev = await FileDevice.open(file, { readOnly: true });
          try {
            expect(await walk(dev, qemuSize(dev.size()))).toEqual(qemuMap(file));
          } finally {
            await dev.close();
            fs.rmSync(file);
          }
        }),
        { numRuns: 40 },
      );
    });

    it('the 1 TiB sparse file, an empty file and a file of one byte', async () => {
      for (const [size, writes] of [
        [TiB, [{ offset: 2 ** 30, length: 3, fill: 1 }, { offset: TiB - 4096, length: 4096, fill: 0 }]],
        [0, []],
        [1, [{ offset: 0, length: 1, fill: 9 }]],
        [3 * MiB, [{ offset: 0, length: 4096, fill: 0 }]], // what qemu-img create's first block looks like
      ] as [number, Write[]][]) {
        const file = newPath();
        makeSparse(file, size, writes);
        const dev = await FileDevice.open(file, { readOnly: true });
        expect(await walk(dev, qemuSize(dev.size()))).toEqual(size === 0 ? [] : qemuMap(file));
        await dev.close();
        fs.rmSync(file);
      }
    });
  });
});

// The lazy load, seen from a fresh process running the built package (npm test builds first).
const distIndex = fileURLToPath(new URL('../dist/index.js', import.meta.url));
const distBuilt = fs.existsSync(fileURLToPath(new URL('../dist/seek.js', import.meta.url)));
describeSeek('loading fs-ext', () => {
  it.runIf(distBuilt)('happens on the first blockStatus, not on import or open', () => {
    const file = newPath();
    makeSparse(file, MiB, [{ offset: 0, length: 1, fill: 1 }]);
    const script = `
      import { createRequire } from 'node:module';
      const cache = createRequire(import.meta.url).cache;
      const loaded = () => Object.keys(cache).some((k) => k.includes('/fs-ext/'));
      const { FileDevice } = await import(${JSON.stringify(distIndex)});
      const dev = await FileDevice.open(${JSON.stringify(file)}, { readOnly: true });
      const before = loaded();
      const st = await dev.blockStatus(0, 1 << 20);
      console.log(JSON.stringify({ before, after: loaded(), st }));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ before: false, after: true, st: { kind: 'data', offset: 0, length: 4096, hostOffset: 0 } });
  });
});
