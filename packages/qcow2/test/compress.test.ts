import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { FormatError, UnsupportedError, UsageError } from '@tsimg/raw';
import { compressCluster, decompressCluster, type CompressionType } from '../src/compress/compress.js';
import { loadZstd, zstdDecompress, type ZstdBackendName } from '../src/compress/zstd.js';
import { ZSTD_MAGIC } from '../src/compress/zstd-frame.js';
import { describeQemu, qemuImg, tempDir } from '../../../test-images/qemu.js';

const TYPES: CompressionType[] = ['zlib', 'zstd'];
const BACKENDS: ZstdBackendName[] = ['zstd-napi', 'zstd-wasm'];

/** xorshift32: cheap deterministic bytes, so fast-check generates seeds rather than megabytes. */
function prng(seed: number): () => number {
  let x = seed | 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

type Content = 'random' | 'text' | 'runs' | 'zeros' | 'mixed';
const WORDS = ['qcow2 ', 'cluster ', 'the ', 'refcount ', 'L2 ', 'table ', 'zstd ', 'deflate ', '\n'];

/** A cluster of `size` bytes whose compressibility depends on `kind`. */
function makeCluster(size: number, kind: Content, seed: number): Uint8Array {
  const next = prng(seed);
  const out = new Uint8Array(size);
  const fillRandom = (from: number, to: number): void => {
    for (let i = from; i < to; i++) out[i] = next() & 0xff;
  };
  const fillText = (from: number, to: number): void => {
    let i = from;
    while (i < to) for (const ch of WORDS[next() % WORDS.length]!) if (i < to) out[i++] = ch.charCodeAt(0);
  };
  const fillRuns = (from: number, to: number): void => {
    let i = from;
    while (i < to) {
      const len = 1 + (next() % 300);
      out.fill(next() & 0xff, i, Math.min(to, i + len));
      i += len;
    }
  };
  if (kind === 'random') fillRandom(0, size);
  else if (kind === 'text') fillText(0, size);
  else if (kind === 'runs') fillRuns(0, size);
  else if (kind === 'mixed') {
    const q = Math.floor(size / 4);
    fillRandom(0, q);
    fillText(q, 2 * q);
    fillRuns(2 * q, 3 * q);
  }
  return out;
}

const arbSize = fc.oneof(
  fc.integer({ min: 9, max: 21 }).map((bits) => 2 ** bits),
  fc.integer({ min: 512, max: 2 * 1024 * 1024 }),
);
const arbCluster = fc
  .record({
    size: arbSize,
    kind: fc.constantFrom<Content>('random', 'text', 'runs', 'zeros', 'mixed'),
    seed: fc.integer(),
  })
  .map(({ size, kind, seed }) => ({ kind, cluster: makeCluster(size, kind, seed) }));

/** `data` followed by `extra` bytes, as a cluster is followed by padding or its neighbour. */
function followedBy(data: Uint8Array, extra: Uint8Array): Uint8Array {
  const out = new Uint8Array(data.length + extra.length);
  out.set(data);
  out.set(extra, data.length);
  return out;
}

/** Padding up to the next 512-byte boundary, as qcow2 stores a compressed cluster. */
function sectorPadding(length: number, byte = 0): Uint8Array {
  return new Uint8Array((512 - (length % 512)) % 512).fill(byte);
}

/** Byte equality without vitest's element-by-element diff, which takes seconds on 2 MiB. */
function expectBytes(actual: Uint8Array, expected: Uint8Array): void {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (a.equals(b)) return;
  let i = 0;
  while (i < Math.min(a.length, b.length) && a[i] === b[i]) i++;
  expect.fail(`bytes differ: lengths ${a.length} and ${b.length}, first difference at ${i}`);
}

async function expectFormatError(promise: Promise<unknown>): Promise<FormatError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(FormatError);
  expect((err as FormatError).errno).toBe('EIO');
  expect((err as FormatError).message).not.toContain('\n');
  return err as FormatError;
}

describe('compressCluster / decompressCluster round trips', () => {
  for (const type of TYPES) {
    it(`${type}: any cluster 512 B..2 MiB comes back exactly, followed by padding or another cluster`, async () => {
      await fc.assert(
        fc.asyncProperty(arbCluster, fc.uint8Array({ maxLength: 1024 }), async ({ kind, cluster }, tail) => {
          const compressed = await compressCluster(type, cluster);
          if (kind === 'zeros' || kind === 'text' || kind === 'runs') expect(compressed).toBeDefined();
          if (kind === 'random' && cluster.length >= 4096) expect(compressed).toBeUndefined();
          if (compressed === undefined) return;
          expect(compressed.length).toBeLessThan(cluster.length);
          const stored = followedBy(compressed, sectorPadding(compressed.length, 0xa5));
          expectBytes(await decompressCluster(type, stored, cluster.length), cluster);
          expectBytes(await decompressCluster(type, followedBy(compressed, tail), cluster.length), cluster);
        }),
        { numRuns: 40 },
      );
    });
  }

  it('zlib writes raw deflate with a 4 KiB window, as qemu (windowBits -12)', async () => {
    // 8 KiB of random bytes repeated once: a 32 KiB window would reach back 8 KiB and shrink
    // it to half, a 4 KiB window cannot.
    const half = makeCluster(8192, 'random', 7);
    const cluster = followedBy(half, half);
    expect(await compressCluster('zlib', cluster)).toBeUndefined();
    expect(deflateRawSync(cluster).length).toBeLessThan(9000);
  });

  it('zstd writes one frame with its content size and no checksum, like qemu', async () => {
    const cluster = makeCluster(65536, 'text', 3);
    const frame = (await compressCluster('zstd', cluster))!;
    const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
    expect(view.getUint32(0, true)).toBe(ZSTD_MAGIC);
    const descriptor = frame[4]!;
    expect(descriptor >> 6).not.toBe(0); // Frame_Content_Size present (65536 needs 4 bytes)
    expect(descriptor & 0x04).toBe(0); // no Content_Checksum
    expect(descriptor & 0x03).toBe(0); // no dictionary
  });

  it('a cluster that does not shrink stays uncompressed (undefined)', async () => {
    for (const type of TYPES) {
      expect(await compressCluster(type, makeCluster(65536, 'random', 1))).toBeUndefined();
      expect(await compressCluster(type, makeCluster(512, 'random', 1))).toBeUndefined();
    }
  });

  it('both zstd backends decode each other and compress to the same frame size class', async () => {
    const cluster = makeCluster(65536, 'mixed', 11);
    const codecs = await Promise.all(BACKENDS.map((b) => loadZstd(b)));
    for (const encoder of codecs) {
      const frame = encoder.compress(cluster, cluster.length - 1)!;
      for (const decoder of codecs) {
        expectBytes(zstdDecompress(decoder, followedBy(frame, sectorPadding(frame.length)), 65536), cluster);
      }
    }
  });

  it('zstd data of several frames (and skippable frames) decodes to one cluster, as in qemu', async () => {
    const cluster = makeCluster(65536, 'text', 5);
    const codec = await loadZstd();
    const a = codec.compress(cluster.subarray(0, 20000), 19999)!;
    const b = codec.compress(cluster.subarray(20000), 45535)!;
    const skippable = new Uint8Array([0x5a, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
    const data = followedBy(followedBy(followedBy(a, skippable), b), sectorPadding(0));
    expectBytes(await decompressCluster('zstd', data, 65536), cluster);
  });

  it('rejects bad arguments', async () => {
    await expect(decompressCluster('zlib', new Uint8Array(10), 100)).rejects.toBeInstanceOf(UsageError);
    await expect(decompressCluster('zstd', new Uint8Array(10), 4 * 1024 * 1024)).rejects.toBeInstanceOf(UsageError);
    await expect(compressCluster('zlib', new Uint8Array(100))).rejects.toBeInstanceOf(UsageError);
    await expect(compressCluster('lz4' as CompressionType, new Uint8Array(4096))).rejects.toBeInstanceOf(
      UnsupportedError,
    );
  });
});

/** A zstd frame header without content size: descriptor 0 (multi-segment), window 128 KiB. */
const NO_FCS_HEADER = [0x28, 0xb5, 0x2f, 0xfd, 0x00, (17 - 10) << 3];
function blockHeader(last: boolean, type: number, size: number): number[] {
  const v = (last ? 1 : 0) | (type << 1) | (size << 3);
  return [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff];
}

describe('hostile compressed data gives FormatError, never more than a cluster nor a hang', () => {
  const clusterSize = 65536;
  const cluster = makeCluster(clusterSize, 'mixed', 42);

  for (const type of TYPES) {
    it(`${type}: every truncation either fails or still fills the cluster exactly`, async () => {
      const compressed = (await compressCluster(type, cluster))!;
      for (let len = 0; len < compressed.length; len += type === 'zstd' ? 1 : 97) {
        const cut = compressed.subarray(0, len);
        const result = await decompressCluster(type, cut, clusterSize).then(
          (out) => out,
          (err: unknown) => err,
        );
        // zlib, like qemu's inflate accepting Z_BUF_ERROR, may fill the cluster before the
        // stream's end marker; a zstd frame cut short never decodes.
        if (result instanceof Uint8Array && type === 'zlib') expectBytes(result, cluster);
        else expect(result).toBeInstanceOf(FormatError);
      }
    });

    it(`${type}: random bytes are refused or decode to exactly one cluster`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.uint8Array({ maxLength: 4096 }), async (data) => {
          const out = await decompressCluster(type, data, clusterSize).then(
            (o) => o,
            (e: unknown) => e,
          );
          if (out instanceof Uint8Array) expect(out.length).toBe(clusterSize);
          else expect(out).toBeInstanceOf(FormatError);
        }),
        { numRuns: 300 },
      );
    });

    it(`${type}: data that decodes to less than a cluster is refused`, async () => {
      const small = (await compressCluster(type, makeCluster(32768, 'text', 1)))!;
      await expectFormatError(decompressCluster(type, small, clusterSize));
      await expectFormatError(decompressCluster(type, new Uint8Array(0), clusterSize));
    });
  }

  it('zlib: a stream that decodes to 16 MiB is refused after one cluster', async () => {
    const bomb = deflateRawSync(new Uint8Array(16 << 20), { windowBits: 12 });
    const err = await expectFormatError(decompressCluster('zlib', bomb, clusterSize));
    expect(err.message).toContain(`more than ${clusterSize}`);
    // One byte more than the cluster is also too much.
    const justOver = deflateRawSync(new Uint8Array(clusterSize + 1), { windowBits: 12 });
    await expectFormatError(decompressCluster('zlib', justOver, clusterSize));
  });

  it('zlib: references beyond the 4 KiB window decode, as in qemu\'s one-buffer inflate', async () => {
    // qemu inflates into the whole cluster at once, and zlib checks the window only for
    // references before the output buffer: a stream made with a 32 KiB window reads fine there.
    const half = makeCluster(16384, 'random', 9);
    const wide = deflateRawSync(followedBy(half, half), { windowBits: 15 });
    expect(wide.length).toBeLessThan(17000);
    expectBytes(await decompressCluster('zlib', followedBy(wide, new Uint8Array(32768)), 32768), followedBy(half, half));
  });

  for (const backend of BACKENDS) {
    describe(backend, () => {
      const decode = async (data: Uint8Array, size = clusterSize): Promise<Uint8Array> =>
        zstdDecompress(await loadZstd(backend), data, size);

      it('a frame whose content size exceeds the cluster is refused before decoding', async () => {
        const codec = await loadZstd(backend);
        const big = codec.compress(new Uint8Array(4 * clusterSize), clusterSize)!;
        await expectFormatError(decode(big));
      });

      it('a frame without content size that decodes to more is stopped at the cluster size', async () => {
        // 512 RLE blocks of 128 KiB each: 64 MiB from 2 KiB of input.
        const bytes = [...NO_FCS_HEADER];
        for (let i = 0; i < 512; i++) bytes.push(...blockHeader(i === 511, 1, 128 * 1024), 0x61);
        await expectFormatError(decode(new Uint8Array(bytes)));
      });

      it('a frame without content size that fits decodes', async () => {
        const bytes = [...NO_FCS_HEADER, ...blockHeader(false, 1, 40000), 0x61, ...blockHeader(true, 0, 3), 1, 2, 3];
        const small = new Uint8Array(bytes);
        const expected = new Uint8Array(40003).fill(0x61);
        expected.set([1, 2, 3], 40000);
        expectBytes(await decode(followedBy(small, sectorPadding(small.length)), 40003), expected);
      });

      it('malformed frames are refused: bad magic, reserved bits, dictionaries, oversized blocks', async () => {
        const frame = (await loadZstd(backend)).compress(cluster, clusterSize - 1)!;
        const patched = (at: number, value: number): Uint8Array => {
          const copy = frame.slice();
          copy[at] = value;
          return copy;
        };
        await expectFormatError(decode(patched(0, 0x29))); // magic
        await expectFormatError(decode(patched(4, frame[4]! | 0x08))); // reserved bit
        await expectFormatError(decode(patched(4, frame[4]! | 0x01))); // dictionary id
        await expectFormatError(decode(new Uint8Array([...NO_FCS_HEADER, ...blockHeader(true, 3, 4), 0, 0, 0, 0])));
        await expectFormatError(decode(new Uint8Array([...NO_FCS_HEADER, ...blockHeader(true, 0, 200000)])));
        // A corrupted byte inside a compressed block.
        const corrupt = frame.slice();
        for (let i = 20; i < corrupt.length; i += 50) corrupt[i] ^= 0xff;
        await expectFormatError(decode(corrupt));
      });

      it('a skippable frame running past the data is refused', async () => {
        await expectFormatError(decode(new Uint8Array([0x50, 0x2a, 0x4d, 0x18, 0xff, 0xff, 0xff, 0x7f, 0])));
      });
    });
  }
});

interface ImageLayout {
  clusterBits: number;
  compressionType: number;
  l2Entries: bigint[];
}

/** Just enough qcow2 parsing to list the L2 entries of a small image (one L2 table or more). */
function readLayout(image: Uint8Array): ImageLayout {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const clusterBits = view.getUint32(20);
  const l1Size = view.getUint32(36);
  const l1Offset = Number(view.getBigUint64(40));
  const headerLength = view.getUint32(4) === 3 ? view.getUint32(100) : 72;
  const compressionType = headerLength > 104 ? image[104]! : 0;
  const offsetMask = (1n << 56n) - 1n - 511n;
  const l2Entries: bigint[] = [];
  for (let i = 0; i < l1Size; i++) {
    const l2Offset = Number(view.getBigUint64(l1Offset + 8 * i) & offsetMask);
    if (l2Offset === 0) continue;
    for (let j = 0; j < 2 ** clusterBits / 8; j++) l2Entries.push(view.getBigUint64(l2Offset + 8 * j));
  }
  return { clusterBits, compressionType, l2Entries };
}

/** Where the data of a compressed L2 entry lies (qemu's qcow2_parse_compressed_l2_entry). */
function compressedRange(
  image: Uint8Array,
  entry: bigint,
  clusterBits: number,
): { offset: number; end: number; bytes: Uint8Array } {
  const x = BigInt(62 - (clusterBits - 8));
  const offset = Number(entry & ((1n << x) - 1n));
  const sectors = Number((entry >> x) & ((1n << BigInt(clusterBits - 8)) - 1n)) + 1;
  const end = (offset & ~511) + sectors * 512;
  // The last cluster's sectors may reach past the end of the file, which reads as zeros.
  const bytes = new Uint8Array(end - offset);
  bytes.set(image.subarray(offset, Math.min(end, image.length)));
  return { offset, end, bytes };
}

/** 4 MiB of mixed guest data: text, random bytes, runs, zeros, a few bytes in a zero cluster. */
function mixedDisk(size: number, clusterSize: number): Uint8Array {
  const disk = new Uint8Array(size);
  const kinds: Content[] = ['text', 'random', 'runs', 'zeros', 'mixed'];
  for (let off = 0, i = 0; off < size; off += clusterSize, i++) {
    disk.set(makeCluster(clusterSize, kinds[i % kinds.length]!, i + 1), off);
  }
  disk[3 * clusterSize + 100] = 7; // a zeros cluster with one byte: compresses very well
  return disk;
}

describeQemu('clusters compressed by qemu-img and by us, read by the other', () => {
  const cases: Array<{ type: CompressionType; clusterSize: number }> = [
    { type: 'zlib', clusterSize: 65536 },
    { type: 'zstd', clusterSize: 65536 },
    { type: 'zlib', clusterSize: 4096 },
    { type: 'zstd', clusterSize: 512 },
    { type: 'zstd', clusterSize: 2 * 1024 * 1024 },
    { type: 'zlib', clusterSize: 2 * 1024 * 1024 },
  ];
  for (const { type, clusterSize } of cases) {
    it(`${type}, ${clusterSize}-byte clusters: we decode qemu's clusters, qemu decodes ours`, async () => {
      const { dir, cleanup } = tempDir();
      try {
        const size = Math.max(4 << 20, 5 * clusterSize);
        const disk = mixedDisk(size, clusterSize);
        const raw = join(dir, 'disk.raw');
        const qcow2 = join(dir, 'disk.qcow2');
        writeFileSync(raw, disk);
        const r = qemuImg([
          'convert', '-c', '-f', 'raw', '-O', 'qcow2',
          '-o', `cluster_size=${clusterSize},compression_type=${type}`, raw, qcow2,
        ]);
        expect(r.stderr).toBe('');
        expect(r.status).toBe(0);
        const image = new Uint8Array(readFileSync(qcow2));
        const layout = readLayout(image);
        expect(layout.clusterBits).toBe(Math.log2(clusterSize));
        expect(layout.compressionType).toBe(type === 'zlib' ? 0 : 1);

        const found: Array<{ index: number; offset: number; end: number }> = [];
        let sameBytes = 0;
        for (const [index, entry] of layout.l2Entries.entries()) {
          if (((entry >> 62n) & 1n) === 0n) continue;
          const { offset, end, bytes } = compressedRange(image, entry, layout.clusterBits);
          found.push({ index, offset, end });
          const expected = disk.subarray(index * clusterSize, (index + 1) * clusterSize);
          expectBytes(await decompressCluster(type, bytes, clusterSize), expected);
          const ours = await compressCluster(type, expected);
          if (ours && bytes.subarray(0, ours.length).every((b, k) => b === ours[k])) sameBytes++;
        }
        // Text, runs, the lone byte and the mixed clusters: 4 of every 5 compress.
        expect(found.length).toBeGreaterThanOrEqual(Math.floor((size / clusterSize) * 0.6));

        // The other way: put our compression of each cluster where qemu's was (when it fits
        // before the next compressed cluster, which qemu packs at byte granularity), then let
        // qemu-img read the image back.
        found.sort((a, b) => a.offset - b.offset);
        let replaced = 0;
        for (const [k, { index, offset, end }] of found.entries()) {
          const room = Math.min(end, found[k + 1]?.offset ?? Infinity, image.length) - offset;
          const ours = (await compressCluster(type, disk.subarray(index * clusterSize, (index + 1) * clusterSize)))!;
          if (ours.length > room) continue;
          image.fill(0, offset, offset + room);
          image.set(ours, offset);
          replaced++;
        }
        expect(replaced).toBeGreaterThanOrEqual(found.length / 2);
        const patched = join(dir, 'ours.qcow2');
        writeFileSync(patched, image);
        const cmp = qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', raw, patched]);
        expect(cmp.stdout + cmp.stderr).toBe('Images are identical.\n');
        expect(cmp.status).toBe(0);
        console.log(
          `${type} ${clusterSize}: ${found.length} compressed clusters, ${sameBytes} byte-identical ` +
            `to ours, ${replaced} of ours read back by qemu-img`,
        );
      } finally {
        cleanup();
      }
    });
  }
});
