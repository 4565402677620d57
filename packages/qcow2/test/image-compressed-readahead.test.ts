/**
 * Reading compressed clusters with read-ahead (image.ts #readCompressed): whatever the request
 * sizes and however compressed, stored-uncompressed, zero and unallocated clusters interleave,
 * the bytes read are the source's.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImage } from '@tsimg/image';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';

const CS = 65536;
const CLUSTERS = 96;

describeQemu('compressed cluster read-ahead', () => {
  const { dir, cleanup } = tempDir('tsimg-readahead-');
  const raw = join(dir, 'src.raw');
  const source = new Uint8Array(CLUSTERS * CS);
  /** What each image holds: the zlib one has cluster 7 rewritten. */
  const expected: Record<string, Uint8Array> = {};

  beforeAll(() => {
    let x = 12345;
    for (let c = 0; c < CLUSTERS; c++) {
      const kind = c % 5;
      const part = source.subarray(c * CS, (c + 1) * CS);
      if (kind === 0) continue; // zero: left out of the image
      if (kind === 1) {
        // random: stored uncompressed by qemu
        for (let i = 0; i < CS; i++) {
          x = (x * 1103515245 + 12345) >>> 0;
          part[i] = x >>> 24;
        }
      } else {
        // compressible, and a different length compressed for every cluster
        for (let i = 0; i < CS; i++) part[i] = (i % (7 + c)) === 0 ? c : (i * kind) & 0x3f;
      }
    }
    writeFileSync(raw, source);
    expected.zstd = source.slice();
    for (const type of ['zlib', 'zstd']) {
      expect(qemuImg(['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${type}`, raw, join(dir, `${type}.qcow2`)]).status).toBe(0);
    }
    // A compressed cluster rewritten later: its new data lies elsewhere, uncompressed.
    expect(qemuIo(['-c', `write -P 0x5a ${7 * CS} ${CS}`, join(dir, 'zlib.qcow2')]).status).toBe(0);
    expected.zlib = source.slice().fill(0x5a, 7 * CS, 8 * CS);
  });
  afterAll(() => cleanup());

  for (const type of ['zlib', 'zstd']) {
    it(`${type}: any request size reads the source's bytes`, async () => {
      const img = await openImage(join(dir, `${type}.qcow2`));
      try {
        const want = expected[type]!;
        for (const size of [512, CS - 512, CS, 3 * CS + 4096, 2 << 20, CLUSTERS * CS]) {
          for (let off = 0; off < CLUSTERS * CS; off += size) {
            const n = Math.min(size, CLUSTERS * CS - off);
            const buf = new Uint8Array(n);
            await img.read(off, buf);
            expect(Buffer.from(buf).equals(Buffer.from(want.subarray(off, off + n))), `${size} at ${off}`).toBe(true);
          }
        }
      } finally {
        await img.close();
      }
    });
    it(`${type}: reads in flight side by side each get their own read-ahead (buffers reused after)`, async () => {
      const img = await openImage(join(dir, `${type}.qcow2`));
      try {
        const want = expected[type]!;
        for (let round = 0; round < 3; round++) {
          const size = [CS * 8, 3 * CS + 512, CS * 16][round]!;
          const reads: Promise<void>[] = [];
          const bufs: [number, Uint8Array][] = [];
          for (let off = 0; off < CLUSTERS * CS; off += size) {
            const buf = new Uint8Array(Math.min(size, CLUSTERS * CS - off));
            bufs.push([off, buf]);
            reads.push(img.read(off, buf));
          }
          await Promise.all(reads);
          for (const [off, buf] of bufs) {
            expect(Buffer.from(buf).equals(Buffer.from(want.subarray(off, off + buf.length))), `${size} at ${off}`).toBe(true);
          }
        }
      } finally {
        await img.close();
      }
    });
  }
});
