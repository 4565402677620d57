/** convert(): the one-call convert — round trips, -c, refusals, abort, and qemu-img's verdict. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { convert, mapImage, openImage, type Image } from '@tsimg/image';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';

const K = 1024;
const M = 1024 * K;

/** A deterministic image: data extents, zero runs and holes, and an odd-sized tail. */
function sample(size: number, seed = 1): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed;
  const next = (): number => (x = (x * 1103515245 + 12345) >>> 0);
  for (let off = 0; off < size; off += 64 * K) {
    if (next() % 3 === 0) continue; // a hole
    const len = Math.min(size - off, (1 + (next() % 64)) * K);
    // Half the extents compress well (repeated bytes), half do not.
    if (next() % 2) out.fill(next() & 0xff, off, off + len);
    else for (let i = off; i < off + len; i++) out[i] = next() >>> 24;
  }
  return out;
}

async function readAll(img: Image): Promise<Uint8Array> {
  const buf = new Uint8Array(img.size());
  await img.read(0, buf);
  return buf;
}

/** Byte equality without vitest's element-by-element diff (slow on megabytes). */
function expectSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.length).toBe(expected.length);
  expect(Buffer.from(actual.buffer, actual.byteOffset, actual.length).equals(expected)).toBe(true);
}

/** The guest bytes of `data` as an image of whole sectors shows them. */
function padded(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(data.length / 512) * 512);
  out.set(data);
  return out;
}

describe('convert', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-convert-api-'));
  });
  afterAll(() => cleanup());

  it('round-trips raw → qcow2 → raw, reporting progress up to 1', async () => {
    const data = sample(3 * M + 1000);
    const raw = join(dir, 'a.raw');
    writeFileSync(raw, data);
    const fractions: number[] = [];
    const q = join(dir, 'a.qcow2');
    await convert({ source: raw, target: q, format: 'qcow2', progress: (f) => fractions.push(f) });
    expect(fractions.length).toBeGreaterThan(1);
    expect(fractions.every((f, i) => f >= 0 && f <= 1 && (i === 0 || f >= fractions[i - 1]!))).toBe(true);
    expect(fractions.at(-1)).toBe(1);

    const img = await openImage(q);
    expect(img.format).toBe('qcow2');
    expect(img.size()).toBe(padded(data).length);
    expectSameBytes(await readAll(img), padded(data));
    await img.close();

    const back = join(dir, 'b.raw');
    await convert({ source: q, target: back, format: 'raw', options: { sparseSize: 0 } });
    expectSameBytes(readFileSync(back), padded(data));
  });

  it('takes open images, several sources, and qcow2 create options', async () => {
    const a = sample(M, 2);
    const b = sample(512 * K, 3);
    writeFileSync(join(dir, 'c1.raw'), a);
    writeFileSync(join(dir, 'c2.raw'), b);
    const first = await openImage(join(dir, 'c1.raw'));
    const target = join(dir, 'c.qcow2');
    await convert({
      source: [first, join(dir, 'c2.raw')],
      target,
      format: 'qcow2',
      options: { clusterSize: 4096, version: 2 },
    });
    // An image handed in stays open: the caller owns it.
    expect(first.size()).toBe(M);
    await first.close();
    const img = await openImage(target);
    expect(img.clusterSize).toBe(4096);
    const all = new Uint8Array(a.length + b.length);
    all.set(a);
    all.set(b, a.length);
    expectSameBytes(await readAll(img), all);
    await img.close();
  });

  for (const compressionType of ['zlib', 'zstd'] as const) {
    it(`writes compressed clusters with compress (${compressionType})`, async () => {
      const data = sample(2 * M, 4);
      const raw = join(dir, `z-${compressionType}.raw`);
      writeFileSync(raw, data);
      const q = join(dir, `z-${compressionType}.qcow2`);
      await convert({ source: raw, target: q, format: 'qcow2', options: { compress: true, compressionType } });
      const img = await openImage(q);
      expectSameBytes(await readAll(img), data);
      // Compressed clusters are data with no host offset in qemu-img map's view.
      let compressed = 0;
      for await (const e of mapImage(img as Image & { filename: string })) if (e.data && e.offset === undefined) compressed += e.length;
      expect(compressed).toBeGreaterThan(0);
      await img.close();
    });
  }

  it("refuses what qemu-img convert refuses, before creating anything", async () => {
    const raw = join(dir, 'r.raw');
    writeFileSync(raw, new Uint8Array(64 * K));
    const t = join(dir, 'refused.img');
    await expect(convert({ source: raw, target: t, format: 'raw', options: { compress: true } })).rejects.toThrow(
      'Compression not supported for this file format',
    );
    await expect(
      convert({ source: raw, target: t, format: 'qcow2', options: { compress: true, preallocation: 'metadata' } }),
    ).rejects.toThrow('Compression and preallocation not supported at the same time');
    await expect(convert({ source: raw, target: t, format: 'qcow2', options: { backingFile: 'x' } })).rejects.toThrow(
      'Use of backing file requires explicit backing format',
    );
    await expect(convert({ source: raw, target: t, format: 'raw', options: { backingFile: 'x', backingFormat: 'raw' } })).rejects.toThrow(
      "Backing file not supported for file format 'raw'",
    );
    await expect(convert({ source: join(dir, 'missing'), target: t, format: 'raw' })).rejects.toThrow("Could not open '");
    expect(existsSync(t)).toBe(false);
  });

  it('stops on an aborted signal and removes the target it created', async () => {
    const data = sample(8 * M, 5).fill(7, 0, 8 * M); // all data: many writes
    const raw = join(dir, 'big.raw');
    writeFileSync(raw, data);
    for (const format of ['qcow2', 'raw'] as const) {
      const t = join(dir, `aborted.${format}`);
      const ac = new AbortController();
      const run = convert({
        source: raw,
        target: t,
        format,
        progress: (f) => {
          if (f > 0 && f < 1) ac.abort();
        },
        signal: ac.signal,
      });
      await expect(run).rejects.toMatchObject({ name: 'AbortError' });
      expect(existsSync(t)).toBe(false);
    }
    // Aborted before it starts: nothing is opened or created.
    const ac = new AbortController();
    ac.abort();
    const t = join(dir, 'never.qcow2');
    await expect(convert({ source: raw, target: t, format: 'qcow2', signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' });
    expect(existsSync(t)).toBe(false);
  });

  it('leaves a target that existed before in place when aborted', async () => {
    const raw = join(dir, 'e.raw');
    writeFileSync(raw, new Uint8Array(4 * M).fill(9));
    const t = join(dir, 'existing.raw');
    writeFileSync(t, 'old');
    const ac = new AbortController();
    await expect(
      convert({ source: raw, target: t, format: 'raw', signal: ac.signal, progress: (f) => f < 1 && ac.abort() }),
    ).rejects.toMatchObject({ name: 'AbortError' });
    expect(existsSync(t)).toBe(true);
  });
});

describeQemu('convert against qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-convert-api-qemu-'));
  });
  afterAll(() => cleanup());

  it('makes a qcow2 that qemu-img checks clean, compares identical and lays out as its own', async () => {
    const src = join(dir, 'src.qcow2');
    expect(qemuImg(['create', '-q', '-f', 'qcow2', src, '8M']).status).toBe(0);
    const io = qemuIo(['-c', 'write -P 0xab 0 300k', '-c', 'write -P 0 1M 256k', '-c', 'write -z 2M 64k', '-c', 'write -P 0x11 5M 1M', src]);
    expect(io.status).toBe(0);
    for (const [name, options, args] of [
      ['plain', {}, []],
      ['compressed', { compress: true }, ['-c']],
    ] as const) {
      const ours = join(dir, `${name}.tsimg.qcow2`);
      const theirs = join(dir, `${name}.qemu.qcow2`);
      await convert({ source: src, target: ours, format: 'qcow2', options });
      expect(qemuImg(['convert', ...args, '-O', 'qcow2', src, theirs]).status).toBe(0);
      const check = qemuImg(['check', ours]);
      expect(check.stdout).toContain('No errors were found on the image.');
      expect(check.status).toBe(0);
      const cmp = qemuImg(['compare', src, ours]);
      expect(cmp.stdout).toContain('Images are identical.');
      expect(cmp.status).toBe(0);
      expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    }
  });
});
