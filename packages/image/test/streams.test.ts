/**
 * The stream API: imageReadable / imageReadableStream give an image's guest bytes front to
 * back without reading the runs block status calls zero; imageWritable writes a stream into an
 * image (leaving all-zero blocks unwritten when asked, growing it at the end when asked); and
 * StreamSink, the forward-only target, fills gaps with zeroes and refuses to go back.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { PassThrough, Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CountingDevice, MemoryDevice } from '@tsimg/raw';
import { imageReadable, imageReadableStream, imageWritable, RawImage, StreamSink } from '@tsimg/image';

const PAGE = 4096;

/** A sparse raw image in memory from (offset, length, byte) writes, and its bytes. */
async function sparseImage(size: number, writes: [number, number, number][]): Promise<{ dev: MemoryDevice; bytes: Uint8Array; pages: number }> {
  const dev = new MemoryDevice({ size, pageSize: PAGE });
  const bytes = new Uint8Array(size);
  const pages = new Set<number>();
  for (const [at, len, value] of writes) {
    if (size === 0) break;
    const off = (at % (size / 512)) * 512;
    const n = Math.min(len, size - off);
    const data = new Uint8Array(n).fill(value);
    bytes.set(data, off);
    await dev.write(off, data);
    for (let p = Math.floor(off / PAGE); p <= Math.floor((off + n - 1) / PAGE); p++) pages.add(p);
  }
  return { dev, bytes, pages: pages.size };
}

async function collect(chunks: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of chunks) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

const arbImage = fc.tuple(
  fc.integer({ min: 0, max: 2048 }).map((s) => s * 512),
  fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 100_000 }), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
  fc.integer({ min: 4096, max: 300_000 }), // chunk size (small ones make the runs slow, not harder)
);

describe('imageReadable / imageReadableStream', () => {
  it('give the guest bytes, reading only data pages', async () => {
    await fc.assert(
      fc.asyncProperty(arbImage, async ([size, writes, chunkSize]) => {
        const { dev, bytes, pages } = await sparseImage(size, writes);
        const counted = new CountingDevice(dev);
        const image = new RawImage('mem', counted);
        expect((await collect(imageReadable(image, { chunkSize }))).equals(Buffer.from(bytes))).toBe(true);
        expect(counted.counts.readBytes).toBeLessThanOrEqual(pages * PAGE);
        const web = imageReadableStream(image, { chunkSize });
        expect((await collect(web as unknown as AsyncIterable<Uint8Array>)).equals(Buffer.from(bytes))).toBe(true);
        for await (const c of imageReadable(image, { chunkSize })) expect(c.length).toBeLessThanOrEqual(chunkSize);
      }),
      { numRuns: 40 },
    );
  });

  it('reads a range, and refuses one outside the image', async () => {
    const { dev, bytes } = await sparseImage(65536, [[3, 5000, 7]]);
    const image = new RawImage('mem', dev);
    expect((await collect(imageReadable(image, { start: 1000, end: 9000 }))).equals(Buffer.from(bytes.subarray(1000, 9000)))).toBe(true);
    await expect(collect(imageReadable(image, { start: 10, end: 70000 }))).rejects.toThrow(/Invalid range/);
  });
});

describe('imageWritable', () => {
  it('writes a stream into an image; skipZeroes leaves zero blocks unwritten; extend grows it', async () => {
    await fc.assert(
      fc.asyncProperty(arbImage, fc.boolean(), async ([size, writes, chunk], skip) => {
        const { bytes } = await sparseImage(size, writes);
        const target = new CountingDevice(new MemoryDevice({ pageSize: PAGE }));
        const chunks = Array.from({ length: Math.ceil(size / chunk) }, (_, i) => Buffer.from(bytes.subarray(i * chunk, (i + 1) * chunk)));
        const w = imageWritable(target, { skipZeroes: skip, extend: true });
        await pipeline(Readable.from(chunks), w);
        expect(w.bytesWritten).toBe(size);
        expect(target.size()).toBe(size);
        const back = new Uint8Array(size);
        await target.read(0, back);
        expect(Buffer.from(back).equals(Buffer.from(bytes))).toBe(true);
        if (skip) {
          const nonZeroBlocks = new Set<number>();
          bytes.forEach((b, i) => b && nonZeroBlocks.add(Math.floor(i / 65536)));
          expect(target.counts.writeBytes).toBeLessThanOrEqual(nonZeroBlocks.size * 65536);
        } else {
          expect(target.counts.writeBytes).toBe(size);
        }
      }),
      { numRuns: 30 },
    );
  });
});

describe('StreamSink', () => {
  it('writes forward, fills gaps and the tail with zeroes, and refuses to go back', async () => {
    const out = new PassThrough();
    const got = collect(out);
    const sink = new StreamSink(out, 10_000);
    await sink.write(100, new Uint8Array(50).fill(1));
    await sink.writeZeroes(150, 1000);
    await sink.write(3000, new Uint8Array(10).fill(2));
    await expect(sink.write(2000, new Uint8Array(1))).rejects.toThrow(/Cannot write at offset 2000/);
    await expect(sink.read()).rejects.toThrow(/Cannot read back/);
    await sink.finish();
    out.end();
    const want = new Uint8Array(10_000);
    want.fill(1, 100, 150);
    want.fill(2, 3000, 3010);
    expect((await got).equals(Buffer.from(want))).toBe(true);
  });

  it('fails its writes once the stream fails, without an unhandled error', async () => {
    const out = new Writable({ write: (_c, _e, cb) => cb(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' })) });
    const sink = new StreamSink(out, 100);
    await expect(sink.write(0, new Uint8Array(10))).rejects.toThrow('Could not write to the output stream: Broken pipe');
    await expect(sink.write(10, new Uint8Array(10))).rejects.toThrow('Broken pipe');
  });
});
