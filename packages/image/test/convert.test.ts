import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryDevice, type BlockDevice } from '@tsimg/raw';
import { convertCopy, type ChainImage } from '@tsimg/image';
import { allocatedRun, allocatedRunMin } from '../src/convert.js';

/** Records the writes a target receives, on top of a MemoryDevice. */
class RecordingTarget extends MemoryDevice {
  log: string[] = [];
  override async write(offset: number, data: Uint8Array): Promise<void> {
    this.log.push(`w ${offset} ${data.length}`);
    return super.write(offset, data);
  }
  override async writeZeroes(offset: number, length: number, o?: { mayUnmap?: boolean }): Promise<void> {
    this.log.push(`z ${offset} ${length}`);
    return super.writeZeroes(offset, length, o);
  }
}

function sectors(...kinds: number[]): Uint8Array {
  const b = new Uint8Array(kinds.length * 512);
  kinds.forEach((k, i) => k && b.fill(k, i * 512, i * 512 + 512));
  return b;
}

describe('is_allocated_sectors port', () => {
  it('aligns the end of a data run up to the alignment', () => {
    expect(allocatedRun(sectors(1, 0, 0, 0, 0, 0, 0, 0, 0, 0), 10, 0, 8)).toEqual({ run: 8, data: true });
  });
  it('trims a zero run back to the alignment boundary', () => {
    // zero sectors 0..9 then data: the run stops at 8 (aligned), sectors 8-9 go with the data
    expect(allocatedRun(sectors(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1), 11, 0, 8)).toEqual({ run: 8, data: false });
  });
  it('treats a short zero head before data as data', () => {
    expect(allocatedRun(sectors(0, 0, 1, 1), 4, 5, 8)).toEqual({ run: 3, data: true });
  });
  it('swallows short zero gaps between data runs', () => {
    const buf = sectors(1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    expect(allocatedRunMin(buf, 24, 8, 0, 8)).toEqual({ run: 16, data: true });
  });
});

/** A device seen as one layer of a chain; `unallocatedHoles` reports its holes as unallocated. */
function image(dev: BlockDevice, backing?: ChainImage, clusterSize?: number, unallocatedHoles = false): ChainImage {
  return {
    backing,
    clusterSize,
    readOnly: dev.readOnly,
    size: () => dev.size(),
    read: (o, into) => dev.read(o, into),
    write: (o, d) => dev.write(o, d),
    writeZeroes: (o, l, opt) => dev.writeZeroes(o, l, opt),
    discard: (o, l) => dev.discard(o, l),
    flush: () => dev.flush(),
    resize: (n) => dev.resize(n),
    blockStatus: async (o, l) => {
      const st = await dev.blockStatus(o, l);
      return unallocatedHoles && st.kind === 'zero' ? { kind: 'unallocated', offset: o, length: st.length } : st;
    },
    allocatedSize: () => dev.allocatedSize(),
    close: () => dev.close(),
  };
}

describe('convertCopy', () => {
  it('copies random sparse sources exactly, whatever -S', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ off: fc.nat({ max: 3 << 20 }), len: fc.integer({ min: 1, max: 200_000 }), v: fc.integer({ min: 0, max: 255 }) }), {
          maxLength: 12,
        }),
        fc.constantFrom(0, 4096, 512, 65536),
        fc.integer({ min: 1, max: 5 << 20 }),
        async (writes, minSparse, size) => {
          const src = new MemoryDevice({ size, pageSize: 4096 });
          for (const w of writes) {
            const len = Math.min(w.len, size - Math.min(w.off, size));
            if (len > 0) await src.write(Math.min(w.off, size), new Uint8Array(len).fill(w.v));
          }
          const padded = Math.ceil(size / 512) * 512;
          const dst = new RecordingTarget({ size: padded });
          await convertCopy([image(src)], dst, { minSparse, hasZeroInit: true });
          const expected = new Uint8Array(padded);
          expected.set(src.contents());
          expect(Buffer.compare(dst.contents(), expected)).toBe(0);
          if (minSparse === 0) expect(dst.log.every((l) => l.startsWith('w'))).toBe(true);
        },
      ),
      { numRuns: 40 },
    );
  });

  it('concatenates several sources', async () => {
    const a = new MemoryDevice({ data: new Uint8Array(3000).fill(1) });
    const b = new MemoryDevice({ data: new Uint8Array(5000).fill(2) });
    const dst = new MemoryDevice({ size: 3072 + 5120 });
    await convertCopy([image(a), image(b)], dst, { hasZeroInit: true });
    const out = dst.contents();
    expect(out.subarray(0, 3000).every((x) => x === 1)).toBe(true);
    expect(out.subarray(3000, 3072).every((x) => x === 0)).toBe(true);
    expect(out.subarray(3072, 8072).every((x) => x === 2)).toBe(true);
  });

  it('copies every source when a status reaches the end of one (regression)', async () => {
    const a = new MemoryDevice({ data: new Uint8Array(1 << 20).fill(1) });
    const b = new MemoryDevice({ data: new Uint8Array(1 << 20).fill(2) });
    const dst = new MemoryDevice({ size: 2 << 20 });
    await convertCopy([image(a), image(b)], dst, { hasZeroInit: true });
    const out = dst.contents();
    expect(out.subarray(0, 1 << 20).every((x) => x === 1)).toBe(true);
    expect(out.subarray(1 << 20).every((x) => x === 2)).toBe(true);
  });

  it('leaves ranges unallocated in the source out when the target has a backing file', async () => {
    const base = new MemoryDevice({ data: new Uint8Array(1 << 20).fill(7) });
    const top = new MemoryDevice({ size: 1 << 20, pageSize: 65536 });
    await top.write(65536, new Uint8Array(65536).fill(9));
    // the top's holes read as 'unallocated', like a qcow2 layer's
    const topImage = image(top, image(base), 65536, true);
    const dst = new RecordingTarget({ size: 1 << 20 });
    await convertCopy([topImage], dst, { targetHasBacking: true, targetBackingSize: 1 << 20 });
    expect(dst.log).toEqual(['w 65536 65536']);
  });

  it('writes zero ranges explicitly when the target is not known to be zero', async () => {
    const src = new MemoryDevice({ size: 1 << 20 });
    await src.write(0, new Uint8Array(512).fill(1));
    const dst = new RecordingTarget({ size: 1 << 20 });
    await convertCopy([image(src)], dst, { hasZeroInit: false });
    expect(dst.log[0]).toBe('w 0 4096');
    expect(dst.log.slice(1).every((l) => l.startsWith('z'))).toBe(true);
  });
});
