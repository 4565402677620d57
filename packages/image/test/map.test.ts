import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryDevice, type BlockStatus } from '@tsimg/raw';
import { blockStatusAbove, mapImage, type MapEntry, type MappedImage } from '@tsimg/image';
import { entryMergeable, mapBlockStatus } from '../src/map.js';

type Run = { kind: 'data' | 'zero' | 'unallocated'; length: number; host?: number };

/**
 * A layer whose block status follows a script of runs (a qcow2-like image without the format):
 * each run is reported whole from wherever a query starts inside it.
 */
class ScriptedImage extends MemoryDevice implements MappedImage {
  readonly filename: string;
  readonly file: MemoryDevice & { filename: string };
  readonly backing?: ScriptedImage;
  readonly runs: Run[];
  statusCalls = 0;
  constructor(name: string, runs: Run[], backing?: ScriptedImage) {
    super({ size: runs.reduce((n, r) => n + r.length, 0) });
    this.filename = name;
    this.file = Object.assign(new MemoryDevice(), { filename: `${name}.file` });
    this.runs = runs;
    this.backing = backing;
  }
  override async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    this.statusCalls++;
    let start = 0;
    for (const r of this.runs) {
      if (offset < start + r.length) {
        const len = Math.min(start + r.length - offset, length);
        if (r.kind === 'unallocated') {
          const st = { kind: 'unallocated', offset, length: len } as BlockStatus;
          // An unallocated subcluster of an allocated cluster: the engine may pass its offset.
          if (r.host !== undefined) Object.assign(st, { hostOffset: r.host + (offset - start) });
          return st;
        }
        const st: BlockStatus = { kind: r.kind, offset, length: len };
        if (r.host !== undefined) st.hostOffset = r.host + (offset - start);
        return st;
      }
      start += r.length;
    }
    throw new Error(`blockStatus past the end: ${offset}`);
  }
}

const K = 1024;

async function collect(image: MappedImage, options = {}): Promise<MapEntry[]> {
  const out: MapEntry[] = [];
  for await (const e of mapImage(image, options)) out.push({ ...e });
  return out;
}

describe('mapBlockStatus', () => {
  it('reports the deciding layer, narrowed to what each layer asked agrees on', async () => {
    const base = new ScriptedImage('base', [{ kind: 'data', length: 256 * K, host: 1000 * K }]);
    const top = new ScriptedImage('top', [{ kind: 'unallocated', length: 64 * K }, { kind: 'data', length: 192 * K, host: 0 }], base);
    expect(await mapBlockStatus(top, 0, 256 * K)).toEqual({
      start: 0, length: 64 * K, depth: 1, present: true, zero: false, data: true, offset: 1000 * K, filename: 'base.file',
    });
    expect(await mapBlockStatus(top, 64 * K, 192 * K)).toMatchObject({ depth: 0, offset: 0, filename: 'top.file' });
  });

  it('reads unallocated ranges without backing, or past a short backing file, as zero at that depth', async () => {
    const alone = new ScriptedImage('a', [{ kind: 'unallocated', length: 128 * K }]);
    expect(await mapBlockStatus(alone, 0, 128 * K)).toEqual({
      start: 0, length: 128 * K, depth: 0, present: false, zero: true, data: false,
    });
    const short = new ScriptedImage('s', [{ kind: 'unallocated', length: 64 * K }]);
    const top = new ScriptedImage('t', [{ kind: 'unallocated', length: 128 * K }], short);
    // The chain's bottom says zero at depth 1 inside the backing file, depth 0 past its end.
    expect(await mapBlockStatus(top, 0, 128 * K)).toMatchObject({ length: 64 * K, depth: 1, present: false, zero: true });
    expect(await mapBlockStatus(top, 64 * K, 64 * K)).toMatchObject({ length: 64 * K, depth: 0, present: false, zero: true });
  });

  it('keeps the host offset of an unallocated subcluster at the bottom of the chain', async () => {
    const img = new ScriptedImage('x', [{ kind: 'unallocated', length: 2 * K, host: 80 * K }]);
    expect(await mapBlockStatus(img, 0, 2 * K)).toEqual({
      start: 0, length: 2 * K, depth: 0, present: false, zero: true, data: false, offset: 80 * K, filename: 'x.file',
    });
    expect(await blockStatusAbove(img, 0, 2 * K)).toMatchObject({ zero: true, allocated: false, offsetValid: true });
  });

  it('gives compressed-like data (no host offset) neither offset nor file name', async () => {
    const img = new ScriptedImage('c', [{ kind: 'data', length: 64 * K }]);
    const e = await mapBlockStatus(img, 0, 64 * K);
    expect(e.data).toBe(true);
    expect(e.offset).toBeUndefined();
    expect(e.filename).toBeUndefined();
  });
});

describe('mapImage', () => {
  it('merges runs with equal flags and contiguous host offsets, as qemu-img map does', async () => {
    const img = new ScriptedImage('i', [
      { kind: 'data', length: 64 * K, host: 320 * K },
      { kind: 'data', length: 64 * K, host: 384 * K }, // contiguous: merges
      { kind: 'data', length: 64 * K, host: 1024 * K }, // jump: new entry
      { kind: 'zero', length: 64 * K },
      { kind: 'unallocated', length: 64 * K },
      { kind: 'unallocated', length: 64 * K },
      { kind: 'data', length: 64 * K }, // compressed
      { kind: 'data', length: 64 * K }, // compressed: merges (no offsets to compare)
    ]);
    expect(await collect(img)).toEqual([
      { start: 0, length: 128 * K, depth: 0, present: true, zero: false, data: true, offset: 320 * K, filename: 'i.file' },
      { start: 128 * K, length: 64 * K, depth: 0, present: true, zero: false, data: true, offset: 1024 * K, filename: 'i.file' },
      { start: 192 * K, length: 64 * K, depth: 0, present: true, zero: true, data: false },
      { start: 256 * K, length: 128 * K, depth: 0, present: false, zero: true, data: false },
      { start: 384 * K, length: 128 * K, depth: 0, present: true, zero: false, data: true },
    ]);
  });

  it('coalesces zero and unallocated ranges after a printed entry in human mode only', async () => {
    const img = new ScriptedImage('i', [
      { kind: 'data', length: 64 * K, host: 0 },
      { kind: 'zero', length: 64 * K },
      { kind: 'unallocated', length: 64 * K },
    ]);
    const json = await collect(img);
    const human = await collect(img, { coalesceZeroes: true });
    expect(json).toHaveLength(3);
    // The zero run is turned into "zero, no data" but still differs from the unallocated run
    // in `present`, so qemu keeps them apart too.
    expect(human.map((e) => [e.start, e.length, e.zero, e.data, e.present])).toEqual([
      [0, 64 * K, false, true, true],
      [64 * K, 64 * K, true, false, true],
      [128 * K, 64 * K, true, false, false],
    ]);
  });

  it('honours start offset and max length, and yields one empty entry past the end', async () => {
    const img = new ScriptedImage('i', [{ kind: 'data', length: 256 * K, host: 0 }]);
    expect(await collect(img, { startOffset: 1 * K, maxLength: 10 * K })).toEqual([
      { start: 1 * K, length: 10 * K, depth: 0, present: true, zero: false, data: true, offset: 1 * K, filename: 'i.file' },
    ]);
    expect(await collect(img, { startOffset: 1024 * K })).toEqual([
      { start: 1024 * K, length: 0, depth: 0, present: false, zero: false, data: false },
    ]);
  });

  it('never asks for more than the image holds and makes one status call per run', async () => {
    const runs: Run[] = [];
    for (let i = 0; i < 100; i++) runs.push({ kind: i % 2 ? 'unallocated' : 'zero', length: 512 });
    const img = new ScriptedImage('i', runs);
    const entries = await collect(img);
    expect(entries).toHaveLength(100);
    expect(img.statusCalls).toBe(100);
  });
});

describe('entryMergeable', () => {
  const base: MapEntry = { start: 0, length: 10, depth: 0, present: true, zero: false, data: true, offset: 100, filename: 'f' };
  it('needs the same file and a contiguous offset', () => {
    expect(entryMergeable(base, { ...base, start: 10, offset: 110 })).toBe(true);
    expect(entryMergeable(base, { ...base, start: 10, offset: 111 })).toBe(false);
    expect(entryMergeable(base, { ...base, start: 10, offset: 110, filename: 'g' })).toBe(false);
    expect(entryMergeable(base, { ...base, start: 10, offset: 110, depth: 1 })).toBe(false);
    expect(entryMergeable({ ...base, length: 0 }, base)).toBe(false);
  });
});

describe('blockStatusAbove', () => {
  it('resolves through the chain with allocated, offset-valid and EOF flags', async () => {
    const base = new ScriptedImage('b', [{ kind: 'data', length: 64 * K, host: 0 }]);
    const top = new ScriptedImage('t', [{ kind: 'unallocated', length: 192 * K }, { kind: 'zero', length: 64 * K }], base);
    expect(await blockStatusAbove(top, 0, 256 * K)).toMatchObject({
      length: 64 * K, data: true, zero: false, allocated: true, offsetValid: true, eof: false, depth: 1,
    });
    // Past the short backing image: synthesized zeroes count as allocated (qemu's rule).
    expect(await blockStatusAbove(top, 64 * K, 192 * K)).toMatchObject({
      length: 128 * K, data: false, zero: true, allocated: true, offsetValid: false, eof: false,
    });
    expect(await blockStatusAbove(top, 192 * K, 64 * K)).toMatchObject({ zero: true, allocated: true, eof: true, depth: 0 });
    const alone = new ScriptedImage('a', [{ kind: 'unallocated', length: 64 * K }]);
    expect(await blockStatusAbove(alone, 0, 64 * K)).toMatchObject({ zero: true, allocated: false, eof: true });
  });
});

describe('mapImage properties', () => {
  const run = fc.record({
    kind: fc.constantFrom('data', 'zero', 'unallocated') as fc.Arbitrary<Run['kind']>,
    length: fc.integer({ min: 1, max: 8 }).map((n) => n * 512),
    host: fc.option(fc.integer({ min: 0, max: 64 }).map((n) => n * 512), { nil: undefined }),
  });
  const layer = fc.array(run, { minLength: 1, maxLength: 12 });

  it('partitions the range into maximal entries that agree with every layer', async () => {
    await fc.assert(
      fc.asyncProperty(layer, layer, fc.nat(4096), fc.boolean(), async (topRuns, baseRuns, start, human) => {
        const clean = (runs: Run[]): Run[] => runs.map((r) => (r.kind === 'unallocated' ? { ...r, host: undefined } : r));
        const base = new ScriptedImage('b', clean(baseRuns));
        const top = new ScriptedImage('t', clean(topRuns), base);
        const entries = await collect(top, { startOffset: start, coalesceZeroes: human });
        const end = top.size();
        if (start >= end) {
          expect(entries).toEqual([{ start, length: 0, depth: 0, present: false, zero: false, data: false }]);
          return;
        }
        let pos = start;
        for (const e of entries) {
          expect(e.start).toBe(pos);
          expect(e.length).toBeGreaterThan(0);
          pos += e.length;
        }
        expect(pos).toBe(end);
        if (!human) {
          for (let i = 1; i < entries.length; i++) expect(entryMergeable(entries[i - 1]!, entries[i]!)).toBe(false);
          // Every byte's entry says what walking the chain for that byte alone says.
          for (const e of entries) {
            for (const at of [e.start, e.start + e.length - 1]) {
              const one = await mapBlockStatus(top, at, 1);
              expect([one.depth, one.present, one.zero, one.data]).toEqual([e.depth, e.present, e.zero, e.data]);
              if (e.offset !== undefined) expect(one.offset).toBe(e.offset + (at - e.start));
            }
          }
        }
      }),
      { numRuns: 200 },
    );
  });
});
