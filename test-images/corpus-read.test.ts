/**
 * Corpus read cross-check: for every image qemu built, the library reads exactly the bytes
 * `qemu-img convert -O raw` writes, and every range its blockStatus calls zero (or unallocated,
 * with no backing file) holds zeroes in qemu's output.
 *
 * Images are compared a chunk at a time against qemu's raw file, then with seeded random reads at
 * unaligned offsets and lengths; images with a backing file are also compared top layer only
 * (`backing: false` against qemu's `backing: null`). The terabyte-sized sparse image is compared
 * over its allocated ranges only (qemu's map and the library's blockStatus). Each internal
 * snapshot is opened with `openImage(..., {snapshot: {name}})` and read against qemu's
 * `convert -l snapshot.name=...`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, fstatSync, openSync, readSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { openImage } from '@tsimg/image';
import type { BlockStatus } from '@tsimg/raw';
import { corpus, type CorpusImage } from './corpus.js';
import { describeQemu, hasQemu, qemuImg, tempDir } from './qemu.js';

const c = hasQemu ? await corpus() : { dir: '', images: [] as CorpusImage[] };

/** Read size: big enough that per-call overhead does not matter, small enough for any image. */
const CHUNK = 4 << 20;
/** blockStatus calls allowed for one image: far more than a sane walk of any corpus image needs. */
const MAX_STATUS_CALLS = 1_000_000;

type Img = Awaited<ReturnType<typeof openImage>>;

function hex(b: number | undefined): string {
  return b === undefined ? 'none' : `0x${b.toString(16).padStart(2, '0')}`;
}

/** Index of the first differing byte, or -1. */
function firstMismatch(a: Uint8Array, b: Uint8Array): number {
  if (Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength))) return -1;
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return Math.min(a.length, b.length);
}

/** Reads `[offset, offset+length)` of qemu's raw output. */
function readRaw(fd: number, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, done, length - done, offset + done);
    if (n === 0) break; // Past EOF: qemu's raw output is exactly the virtual size, so this is a short file.
    done += n;
  }
  return buf;
}

/** Compares the library's bytes with qemu's over a range, in chunks; throws at the first difference. */
async function compareRange(img: Img, fd: number, offset: number, length: number, what: string): Promise<void> {
  const ours = new Uint8Array(Math.min(CHUNK, length));
  for (let pos = offset; pos < offset + length; pos += CHUNK) {
    const n = Math.min(CHUNK, offset + length - pos);
    const mine = n === ours.length ? ours : ours.subarray(0, n);
    await img.read(pos, mine);
    const theirs = readRaw(fd, pos, n);
    const i = firstMismatch(mine, theirs);
    if (i >= 0) {
      throw new Error(`${what}: first mismatch at offset ${pos + i} (0x${(pos + i).toString(16)}): tsimg ${hex(mine[i])}, qemu ${hex(theirs[i])}`);
    }
  }
}

/** True when qemu's raw output is all zeroes over the range (read in chunks). */
function rawIsZero(fd: number, offset: number, length: number): number {
  for (let pos = offset; pos < offset + length; pos += CHUNK) {
    const buf = readRaw(fd, pos, Math.min(CHUNK, offset + length - pos));
    const i = buf.findIndex((x) => x !== 0);
    if (i >= 0) return pos + i;
  }
  return -1;
}

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

function qemuMap(image: CorpusImage): MapEntry[] {
  const r = qemuImg(['map', '--output=json', '-U', '-f', image.format, image.path]);
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout) as MapEntry[];
}

/** xorshift32, so the unaligned-read offsets are the same on every run. */
function prng(seed: number): (below: number) => number {
  let x = seed >>> 0 || 1;
  return (below) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return Math.floor((x / 2 ** 32) * below);
  };
}

/** Reads per image in the unaligned-read check. */
const RANDOM_READS = 200;
/** Longest of those reads: a few clusters of the common sizes. */
const RANDOM_READ_MAX = 256 << 10;

/** Walks blockStatus over the whole image, checking each run is well-formed. */
async function walkStatus(img: Img, size: number, visit: (s: BlockStatus) => Promise<void> | void): Promise<void> {
  let offset = 0;
  for (let calls = 0; offset < size; calls++) {
    if (calls >= MAX_STATUS_CALLS) throw new Error(`blockStatus needed over ${MAX_STATUS_CALLS} calls; stuck at offset ${offset}`);
    const s = await img.blockStatus(offset, size - offset);
    if (s.offset !== offset || !(s.length >= 1) || s.length > size - offset) {
      throw new Error(`blockStatus(${offset}, ${size - offset}) returned ${JSON.stringify(s)}`);
    }
    await visit(s);
    offset += s.length;
  }
}

describeQemu('corpus read cross-check: tsimg reads what qemu-img convert -O raw gives', () => {
  let work: { dir: string; cleanup: () => void };
  beforeAll(() => {
    work = tempDir('tsimg-corpus-read-');
  });
  afterAll(() => work.cleanup());

  /**
   * qemu's raw rendering of `image`, made once per image: the chain and data file followed, or,
   * with `topOnly`, the top layer alone (qemu's `backing: null`, unallocated ranges as zeroes).
   */
  const rawOf = new Map<string, string>();
  function qemuRaw(image: CorpusImage, topOnly = false): string {
    const key = topOnly ? `${image.file}.top-only` : image.file;
    let out = rawOf.get(key);
    if (out) return out;
    out = join(work.dir, `${key}.raw`);
    const source = topOnly
      ? ['json:' + JSON.stringify({ driver: image.format, file: { driver: 'file', filename: image.path }, backing: null })]
      : ['-f', image.format, image.path];
    const args = ['convert', '-U', ...source, '-O', 'raw', out];
    const r = qemuImg(args);
    if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')}: ${r.stderr}`);
    rawOf.set(key, out);
    return out;
  }

  async function withImage(image: CorpusImage, fn: (img: Img, fd: number) => Promise<void>, topOnly = false): Promise<void> {
    const fd = openSync(qemuRaw(image, topOnly), 'r');
    const img = await openImage(image.path, { format: image.format, readOnly: true, backing: !topOnly });
    try {
      await fn(img, fd);
    } finally {
      await img.close();
      closeSync(fd);
    }
  }

  for (const image of c.images) {
    describe(image.file, () => {
      it(`reads the same bytes as qemu (${image.description})`, async () => {
        await withImage(image, async (img, fd) => {
          expect(img.size()).toBe(image.virtualSize);
          if (!image.huge) {
            await compareRange(img, fd, 0, image.virtualSize, image.file);
            return;
          }
          // Terabytes: compare where qemu has data, plus a little around each range's edges.
          for (const e of qemuMap(image).filter((e) => e.data)) {
            const start = Math.max(0, e.start - 4096);
            const end = Math.min(image.virtualSize, e.start + e.length + 4096);
            await compareRange(img, fd, start, end - start, `${image.file} [${e.start}, +${e.length})`);
          }
        });
      });

      it('reads the same bytes at unaligned offsets and lengths', async () => {
        await withImage(image, async (img, fd) => {
          const next = prng(0xc0ffee ^ image.virtualSize);
          // The huge image: near qemu's data ranges, where the mapping work is.
          const anchors = image.huge ? qemuMap(image).filter((e) => e.data).map((e) => e.start) : [];
          for (let n = 0; n < RANDOM_READS; n++) {
            let offset = next(image.virtualSize);
            if (image.huge) {
              const a = anchors[next(anchors.length)]!;
              offset = Math.max(0, Math.min(image.virtualSize - 1, a - RANDOM_READ_MAX / 2 + next(RANDOM_READ_MAX)));
            }
            const length = 1 + next(Math.min(RANDOM_READ_MAX, image.virtualSize - offset));
            await compareRange(img, fd, offset, length, `${image.file} read(${offset}, ${length})`);
          }
        });
      });

      if (image.backing) {
        it('with backing: false, reads the top layer alone as qemu does with backing: null', async () => {
          await withImage(
            image,
            async (img, fd) => {
              expect(img.size()).toBe(image.virtualSize);
              await compareRange(img, fd, 0, image.virtualSize, `${image.file} (top layer only)`);
              await walkStatus(img, image.virtualSize, (s) => {
                if (s.kind === 'data') return;
                const at = rawIsZero(fd, s.offset, s.length);
                expect(at, `${s.kind} run [${s.offset}, +${s.length}) has non-zero data at ${at} in qemu's output`).toBe(-1);
              });
            },
            true,
          );
        });
      }

      it('blockStatus: runs tile the image; zero (and unallocated without backing) runs read as zeroes in qemu', async () => {
        await withImage(image, async (img, fd) => {
          const qemuData = image.huge ? qemuMap(image).filter((e) => e.data && !e.zero) : [];
          await walkStatus(img, image.virtualSize, async (s) => {
            const claimsZero = s.kind === 'zero' || (s.kind === 'unallocated' && !image.backing);
            if (!claimsZero) {
              if (image.huge) await compareRange(img, fd, s.offset, s.length, `${image.file} data run`);
              return;
            }
            if (image.huge) {
              // Too big to scan: qemu must not have data there.
              const clash = qemuData.find((e) => e.start < s.offset + s.length && s.offset < e.start + e.length);
              expect(clash, `${s.kind} run [${s.offset}, +${s.length}) overlaps qemu data`).toBeUndefined();
              return;
            }
            const at = rawIsZero(fd, s.offset, s.length);
            expect(at, `${s.kind} run [${s.offset}, +${s.length}) has non-zero data at ${at} in qemu's output`).toBe(-1);
          });
        });
      });

      for (const name of image.snapshots) {
        it(`snapshot "${name}" reads as qemu-img convert -l snapshot.name=${name}`, async () => {
          const out = join(work.dir, `${image.file}.snapshot-${name}.raw`);
          const args = ['convert', '-U', '-l', `snapshot.name=${name}`, '-f', image.format, image.path, '-O', 'raw', out];
          const r = qemuImg(args);
          if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')}: ${r.stderr}`);
          const fd = openSync(out, 'r');
          const img = await openImage(image.path, { format: image.format, readOnly: true, snapshot: { name } });
          try {
            expect(img.size()).toBe(fstatSync(fd).size);
            await compareRange(img, fd, 0, img.size(), `${image.file} snapshot ${name}`);
            // Unaligned reads inside the snapshot, too.
            const next = prng(0x5eed ^ img.size());
            for (let n = 0; n < RANDOM_READS / 4; n++) {
              const offset = next(img.size());
              const length = 1 + next(Math.min(RANDOM_READ_MAX, img.size() - offset));
              await compareRange(img, fd, offset, length, `${image.file} snapshot ${name} read(${offset}, ${length})`);
            }
            // Every zero (or, without backing, unallocated) run reads as zeroes in qemu's output.
            await walkStatus(img, img.size(), (s) => {
              if (s.kind === 'data' || (s.kind === 'unallocated' && image.backing)) return;
              const at = rawIsZero(fd, s.offset, s.length);
              expect(at, `${s.kind} run [${s.offset}, +${s.length}) has non-zero data at ${at} in qemu's output`).toBe(-1);
            });
          } finally {
            await img.close();
            closeSync(fd);
            rmSync(out, { force: true });
          }
        });
      }
    });
  }
});
