/**
 * convertCopy --salvage on block-status errors (qemu-img 7.2's convert_iteration_sectors): the
 * query is retried on a quarter of the range down to one sector, that sector is warned about
 * and copied as data; warnings come in qemu's order (first pass, then per chunk: status, read).
 * Without --salvage the first failing query stops the copy before anything is written.
 */
import { describe, expect, it } from 'vitest';
import { IoError, MemoryDevice, type BlockStatus } from '@tsimg/raw';
import { convertCopy, type ChainImage } from '@tsimg/image';
import { delegating } from './delegating.js';

const SECTOR = 512;

/**
 * A source whose block status fails for queries starting in [badFrom, badTo), and whose reads
 * fail there too when `readsFail`; logs the status queries it gets.
 */
function source(data: Uint8Array, badFrom: number, badTo: number, readsFail: boolean) {
  const dev = new MemoryDevice({ data });
  const queries: string[] = [];
  const img: ChainImage = delegating(dev, {
    readOnly: true,
    read: async (o: number, into: Uint8Array) => {
      if (readsFail && o < badTo && badFrom < o + into.length) throw new IoError('injected read', { errno: 'EIO' });
      await dev.read(o, into);
    },
    blockStatus: async (o: number, l: number): Promise<BlockStatus> => {
      queries.push(`${o}+${l}`);
      if (o >= badFrom && o < badTo) throw new IoError('injected status', { errno: 'EIO' });
      // Data runs stop where the bad range starts (like a qcow2 run stopping at a bad entry).
      const end = o < badFrom ? Math.min(o + l, badFrom) : o + l;
      return { kind: 'data', offset: o, length: end - o };
    },
  });
  return { img, queries };
}

describe('convertCopy --salvage with block-status errors', () => {
  const size = 8 * SECTOR;
  const data = new Uint8Array(size).fill(0x42);

  it('retries on a quarter of the range down to one sector, then copies the sector as data', async () => {
    const { img, queries } = source(data, 2 * SECTOR, 3 * SECTOR, false);
    const warnings: string[] = [];
    const dst = new MemoryDevice({ size });
    await convertCopy([img], dst, { hasZeroInit: true, salvage: true, warn: (m) => warnings.push(m) });
    const line = 'error while reading block status at offset 1024: Input/output error';
    // Once in the first pass, once in the copy.
    expect(warnings).toEqual([line, line]);
    // 6 sectors left at 1024: 6, then 2, then 1 (DIV_ROUND_UP(n, 4) each time), in each pass.
    const pass = ['0+4096', '1024+3072', '1024+1024', '1024+512', '1536+2560'];
    expect(queries).toEqual([...pass, ...pass]);
    // The sector read fine: its data is copied.
    expect(Buffer.from(dst.contents()).equals(Buffer.from(data))).toBe(true);
  });

  it('warns for the status and then for the read of each sector, in order, and zeroes what cannot be read', async () => {
    const { img } = source(data, 2 * SECTOR, 4 * SECTOR, true);
    const warnings: string[] = [];
    const dst = new MemoryDevice({ size });
    await convertCopy([img], dst, { hasZeroInit: false, salvage: true, warn: (m) => warnings.push(m) });
    const st = (o: number) => `error while reading block status at offset ${o}: Input/output error`;
    const rd = (o: number) => `error while reading offset ${o}: Input/output error`;
    expect(warnings).toEqual([st(1024), st(1536), st(1024), rd(1024), st(1536), rd(1536)]);
    const expected = data.slice();
    expected.fill(0, 2 * SECTOR, 4 * SECTOR);
    expect(Buffer.from(dst.contents()).equals(Buffer.from(expected))).toBe(true);
  });

  it('hands over the errors it retried away with the warning that follows them', async () => {
    const { img } = source(data, 0, SECTOR, false);
    const causes: unknown[][] = [];
    await convertCopy([img], new MemoryDevice({ size }), { hasZeroInit: true, salvage: true, warn: (_m, c) => causes.push([...c]) });
    // 8 sectors: queries of 8, 2 and 1 sectors all fail; the first warning carries all three.
    expect(causes.map((c) => c.length)).toEqual([3, 3]);
    expect(causes[0]!.every((e) => e instanceof IoError)).toBe(true);
  });

  for (const progress of [undefined, () => undefined]) {
    it(`without --salvage fails on the first pass's error before writing anything (${progress ? 'with' : 'without'} -p)`, async () => {
      // The bad range lies 30 MiB in: a loop without a first pass would have written the
      // chunks before it (its read window is 8 MiB).
      const big = new Uint8Array(32 << 20).fill(0x42);
      const bad = 30 << 20;
      const { img } = source(big, bad, bad + SECTOR, false);
      const dst = new MemoryDevice({ data: new Uint8Array(big.length).fill(7) });
      const run = convertCopy([img], dst, { hasZeroInit: false, progress });
      await expect(run).rejects.toThrow(`error while reading block status at offset ${bad}: Input/output error`);
      expect(dst.contents().every((b) => b === 7)).toBe(true);
    });
  }

  it('-q (no warn callback) still salvages', async () => {
    const { img } = source(data, 2 * SECTOR, 3 * SECTOR, true);
    const dst = new MemoryDevice({ size });
    await convertCopy([img], dst, { hasZeroInit: true, salvage: true });
    const expected = data.slice();
    expected.fill(0, 2 * SECTOR, 3 * SECTOR);
    expect(Buffer.from(dst.contents()).equals(Buffer.from(expected))).toBe(true);
  });
});
