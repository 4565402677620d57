/**
 * convertCopy's pipeline (reads of several chunks at once, work done ahead of the in-order
 * writer): what it changes must stay invisible — the same writes in the same order, and read
 * errors reported for the chunk qemu's loop would report them for.
 */
import { describe, expect, it } from 'vitest';
import { IoError, MemoryDevice, type BlockDevice } from '@tsimg/raw';
import { convertCopy, type ChainImage } from '@tsimg/image';
import { type CompressedTarget } from '../src/convert.js';
import { delegating } from './delegating.js';

const CS = 65536;

/** A source whose reads fail when they touch byte `bad`; counts the reads it gets. */
function source(data: Uint8Array, bad?: number): ChainImage & { reads: number } {
  const dev = new MemoryDevice({ data });
  const img = delegating(dev, {
    reads: 0,
    readOnly: true,
    read: async (o: number, into: Uint8Array) => {
      img.reads++;
      if (bad !== undefined && o <= bad && bad < o + into.length) throw new IoError('injected', { errno: 'EIO' });
      await dev.read(o, into);
    },
  });
  return img;
}

/** A target logging writes and compressed writes (the payload's first byte stands for it). */
class Target extends MemoryDevice implements CompressedTarget {
  log: string[] = [];
  override async write(offset: number, data: Uint8Array): Promise<void> {
    this.log.push(`w ${offset} ${data.length}`);
    return super.write(offset, data);
  }
  async writeCompressed(offset: number, cluster: Uint8Array, compressed?: Uint8Array | null): Promise<void> {
    this.log.push(`c ${offset} ${cluster.length} ${compressed?.[0] ?? '-'}`);
    await super.write(offset, cluster);
  }
  async finishCompressed(): Promise<void> {
    this.log.push('end');
  }
}

/** Clusters of data (value i+1), every fourth one zero. */
function clusters(n: number): Uint8Array {
  const b = new Uint8Array(n * CS);
  for (let i = 0; i < n; i++) if (i % 4 !== 3) b.fill((i % 250) + 1, i * CS, (i + 1) * CS);
  return b;
}

const compressor = {
  compress: async (c: Uint8Array) => {
    // Out of order on purpose: later clusters finish first.
    await new Promise((r) => setTimeout(r, c[0]! % 3));
    return new Uint8Array([c[0]!]);
  },
};

describe('convertCopy pipeline', () => {
  it('-c: every cluster in guest order, each with its own compressed bytes, zero clusters left out', async () => {
    const data = clusters(300); // more than one read group and one window
    const dst = new Target({ size: data.length });
    await convertCopy([source(data)], dst, { compressed: true, clusterSize: CS, hasZeroInit: true, compressor, compressorThreads: 2 });
    const expected: string[] = [];
    for (let i = 0; i < 300; i++) if (i % 4 !== 3) expected.push(`c ${i * CS} ${CS} ${(i % 250) + 1}`);
    expect(dst.log).toEqual([...expected, 'end']);
    expect(Buffer.from(dst.contents()).equals(Buffer.from(data))).toBe(true);
  });

  it('reads contiguous clusters together (-c)', async () => {
    const src = source(new Uint8Array(64 * CS).fill(5));
    const dst = new Target({ size: 64 * CS });
    await convertCopy([src], dst, { compressed: true, clusterSize: CS, hasZeroInit: true, compressor });
    expect(src.reads).toBeLessThanOrEqual(4);
  });

  for (const compressed of [false, true]) {
    it(`${compressed ? '-c: ' : ''}a failed read names the chunk it falls in, after the chunks before it are written`, async () => {
      const data = new Uint8Array(48 * CS).fill(3);
      const bad = 21 * CS + 1000;
      const dst = new Target({ size: data.length });
      const run = convertCopy([source(data, bad)], dst, { compressed, clusterSize: CS, hasZeroInit: true });
      // Uncompressed chunks are 2 MiB (qemu's IO_BUF_SIZE): byte 21 * 64 KiB lies in the first.
      const chunk = compressed ? 21 * CS : 0;
      await expect(run).rejects.toThrow(`error while reading at byte ${chunk}: Input/output error`);
      const written = dst.log.map((l) => Number(l.split(' ')[1]));
      expect(written).toEqual(compressed ? Array.from({ length: 21 }, (_, i) => i * CS) : []);
    });
  }

  it('--salvage: only the unreadable sectors become zeroes, with one warning each', async () => {
    const data = new Uint8Array(80 * CS).fill(6);
    const bad = 3 * (1 << 20) + 512 * 7;
    const warnings: string[] = [];
    const dst = new Target({ size: data.length });
    await convertCopy([source(data, bad)], dst, { hasZeroInit: true, salvage: true, warn: (m) => warnings.push(m) });
    expect(warnings).toEqual([`error while reading offset ${bad}: Input/output error`]);
    const out = dst.contents();
    const expected = data.slice();
    expected.fill(0, bad, bad + 512);
    expect(Buffer.from(out).equals(Buffer.from(expected))).toBe(true);
  });

  it('keeps memory bounded: buffers are reused, not one per chunk', async () => {
    // 64 MiB of data through the uncompressed loop: the writer never sees a buffer beyond the window.
    const size = 64 << 20;
    const src = new MemoryDevice({ data: new Uint8Array(size).fill(1) });
    const seen = new Set<ArrayBufferLike>();
    const dst: BlockDevice = Object.assign(new MemoryDevice({ size }), {});
    const write = dst.write.bind(dst);
    dst.write = async (o, d) => {
      seen.add(d.buffer);
      await write(o, d);
    };
    await convertCopy([source(src.contents())], dst, { hasZeroInit: true });
    expect(seen.size).toBeLessThanOrEqual(8);
  });

  describe('parallelWrites (raw targets)', () => {
    /** A target whose writes finish in a scrambled order, logging starts and ends. */
    class SlowTarget extends MemoryDevice {
      log: string[] = [];
      inFlight = 0;
      maxInFlight = 0;
      failAt?: number;
      override async write(offset: number, data: Uint8Array): Promise<void> {
        this.inFlight++;
        this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
        try {
          await new Promise((r) => setTimeout(r, (offset >> 20) % 3));
          if (this.failAt !== undefined && offset <= this.failAt && this.failAt < offset + data.length) {
            throw new IoError('injected', { errno: 'ENOSPC' });
          }
          await super.write(offset, data);
          this.log.push(`w ${offset}`);
        } finally {
          this.inFlight--;
        }
      }
    }
    /** 1 MiB blocks: data, zeroes or a hole, in a fixed pattern. */
    function mixed(mib: number): Uint8Array {
      const b = new Uint8Array(mib << 20);
      for (let i = 0; i < mib; i++) if (i % 5 !== 2 && i % 7 !== 3) b.fill((i % 200) + 1, i << 20, (i + 1) << 20);
      return b;
    }

    it('writes the same bytes with writes overlapping, and never more than asked at once', async () => {
      const data = mixed(40);
      for (const parallelWrites of [1, 2, 4]) {
        const dst = new SlowTarget({ size: data.length });
        await convertCopy([source(data)], dst, { hasZeroInit: true, parallelWrites });
        expect(Buffer.from(dst.contents()).equals(Buffer.from(data))).toBe(true);
        // The read window (8 MiB) bounds it too.
        expect(dst.maxInFlight).toBeLessThanOrEqual(parallelWrites);
        expect(dst.maxInFlight > 1).toBe(parallelWrites > 1);
      }
    });

    it('reports the first failed write in guest order, after the writes before it', async () => {
      const data = new Uint8Array(40 << 20).fill(9);
      const dst = new SlowTarget({ size: data.length });
      dst.failAt = (13 << 20) + 5;
      const run = convertCopy([source(data)], dst, { hasZeroInit: true, parallelWrites: 4 });
      // 2 MiB chunks: the failing write starts at 12 MiB.
      await expect(run).rejects.toThrow(`error while writing at byte ${12 << 20}: No space left on device`);
      const done = dst.log.map((l) => Number(l.split(' ')[1])).sort((a, b) => a - b);
      expect(done.slice(0, 6)).toEqual([0, 2, 4, 6, 8, 10].map((m) => m << 20));
    });
  });
});
