/**
 * Hostile images: deterministic random mutations of qemu-made images (header fields, metadata
 * bytes, truncation). Opening, reading, walking blockStatus and writing must either work or
 * fail with a TsimgError — never a TypeError/RangeError, a hang, or an allocation sized by a
 * field nobody validated.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { TsimgError } from '@tsimg/raw';
import { openImage, type Image } from '@tsimg/image';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';
import { mutateQcow2, prng } from '../../../test-images/mutate.js';

const SOURCES: Array<{ opts: string; io: string[]; snapshot?: boolean }> = [
  { opts: 'cluster_size=4096', io: ['write -P 1 0 64k', 'write -c -P 2 128k 64k', 'write -z 300k 8k', 'write -P 3 1M 4k'], snapshot: true },
  { opts: 'cluster_size=16384,extended_l2=on', io: ['write -P 1 0 20k', 'write -z 40k 2k', 'write -c -P 2 64k 32k'] },
  { opts: 'cluster_size=512,refcount_bits=1', io: ['write -P 1 0 3k', 'write -P 2 100k 10k'] },
];

async function exercise(file: string, readOnly: boolean): Promise<void> {
  let img: Image | undefined;
  try {
    img = await openImage(file, { readOnly });
    const size = Math.min(img.size(), 2 * 1024 * 1024);
    if (size > 0) {
      const buf = new Uint8Array(size);
      await img.read(0, buf);
      let off = 0;
      for (let n = 0; off < size && n < 10_000; n++) off += (await img.blockStatus(off, size - off)).length;
      if (!readOnly) {
        await img.write(0, new Uint8Array(Math.min(size, 70_000)).fill(7));
        await img.writeZeroes(Math.floor(size / 2), Math.min(size - Math.floor(size / 2), 9000));
        await img.discard(0, Math.min(size, 65536));
        await img.flush();
      }
    }
  } catch (err) {
    if (!(err instanceof TsimgError)) throw err;
    expect(err.message).not.toContain('\n');
  } finally {
    await img?.close().catch((err: unknown) => {
      if (!(err instanceof TsimgError)) throw err;
    });
  }
}

describeQemu('hostile images', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-hostile-'));
    SOURCES.forEach((s, i) => {
      const f = join(dir, `src${i}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', s.opts, f, '2M']);
      qemuIo([...s.io.flatMap((c) => ['-c', c]), f]);
      if (s.snapshot) qemuImg(['snapshot', '-c', 'snap', f]);
    });
  });
  afterAll(() => cleanup());

  it('fail cleanly or work, read-only and read/write (300 mutations)', async () => {
    for (let seed = 1; seed <= 300; seed++) {
      const src = join(dir, `src${seed % SOURCES.length}.qcow2`);
      const f = join(dir, 'm.qcow2');
      copyFileSync(src, f);
      const rand = prng(seed);
      const m = mutateQcow2(f, rand);
      if (rand() < 0.5) mutateQcow2(f, rand);
      try {
        await exercise(f, true);
        await exercise(f, false);
      } catch (err) {
        throw new Error(`seed ${seed} (${m.kind}: ${m.detail}): ${String(err)}`, { cause: err });
      }
    }
  }, 120_000);
});
