/**
 * Reads of qemu-made images: every byte tsimg reads equals `qemu-img convert -O raw`, and
 * blockStatus tiles the image with runs that agree with the bytes (zero runs read as zeroes).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImage, type Image } from '@tsimg/image';
import { Qcow2Image } from '@tsimg/qcow2';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';

interface Case {
  name: string;
  /** qemu-img create arguments after `-f qcow2` (without the file name and size). */
  create: string[];
  size?: string;
  /** qemu-io commands run on the new image. */
  io: string[];
  /** Something to run before (e.g. making a backing file), given the directory. */
  before?: (dir: string) => void;
  after?: (dir: string, file: string) => void;
}

const PATTERN = [
  'write -P 0x11 0 8k',
  'write -P 0x22 100000 300000',
  'write -z 600k 200k',
  'write -P 0x33 1020k 8k',
  'write -P 0x44 1536k 512',
  'discard 100000 65536',
];

const cases: Case[] = [
  ...[512, 4096, 65536, 2 * 1024 * 1024].map((cs) => ({
    name: `cluster size ${cs}`,
    create: ['-o', `cluster_size=${cs}`],
    io: PATTERN,
  })),
  ...[1, 2, 4, 8, 16, 32, 64].map((bits) => ({
    name: `refcount_bits=${bits}`,
    create: ['-o', `refcount_bits=${bits},cluster_size=4096`],
    io: PATTERN,
  })),
  ...[16384, 65536, 2 * 1024 * 1024].map((cs) => ({
    name: `extended_l2, cluster size ${cs}`,
    create: ['-o', `extended_l2=on,cluster_size=${cs}`],
    io: [...PATTERN, 'write -P 0x55 3000 1000', 'write -z 70000 3000'],
  })),
  { name: 'v2 (compat=0.10)', create: ['-o', 'compat=0.10'], io: PATTERN.filter((c) => !c.includes('-z')) },
  {
    name: 'compressed zlib',
    create: ['-o', 'cluster_size=4096'],
    io: ['write -c -P 0x61 0 64k', 'write -c 64k 4k', 'write -P 0x62 8k 100', 'write -c -P 0x63 1M 32k'],
  },
  {
    name: 'compressed zstd, extended L2',
    create: ['-o', 'compression_type=zstd,extended_l2=on,cluster_size=32768'],
    io: ['write -c -P 0x61 0 256k', 'write -P 0x62 8k 100', 'write -z 64k 1k'],
  },
  {
    name: 'backing chain qcow2 → qcow2 → shorter raw',
    before: (dir) => {
      qemuImg(['create', '-f', 'raw', join(dir, 'base.raw'), '1000k']);
      qemuIo(['-f', 'raw', '-c', 'write -P 0x71 0 1000k', join(dir, 'base.raw')]);
      qemuImg(['create', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', '-o', 'cluster_size=512', join(dir, 'mid.qcow2'), '1500k']);
      qemuIo(['-c', 'write -P 0x72 4096 4096', '-c', 'write -z 20k 8k', join(dir, 'mid.qcow2')]);
    },
    create: ['-b', 'mid.qcow2', '-F', 'qcow2', '-o', 'cluster_size=65536'],
    io: ['write -P 0x73 6000 100', 'write -P 0x74 1400k 4k', 'write -z 70k 64k'],
  },
  {
    name: 'backing without backing format (probed)',
    before: (dir) => {
      qemuImg(['create', '-f', 'qcow2', join(dir, 'b.qcow2'), '2M']);
      qemuIo(['-c', 'write -P 0x75 0 2M', join(dir, 'b.qcow2')]);
    },
    create: ['-b', 'b.qcow2', '-F', 'qcow2'],
    io: ['write -P 0x76 5000 100'],
    after: (dir, file) => {
      qemuImg(['rebase', '-u', '-b', 'b.qcow2', file]);
    },
  },
  { name: 'external data file', create: ['-o', 'data_file=DIR/img.data'], io: PATTERN },
  { name: 'external data file, data_file_raw', create: ['-o', 'data_file=DIR/img2.data,data_file_raw=on'], io: PATTERN },
  { name: 'preallocation=metadata', create: ['-o', 'preallocation=metadata,cluster_size=4096'], io: PATTERN },
  { name: 'preallocation=falloc', create: ['-o', 'preallocation=falloc'], io: PATTERN },
  { name: 'lazy refcounts', create: ['-o', 'lazy_refcounts=on'], io: PATTERN },
  {
    name: 'internal snapshots (active layer)',
    create: [],
    io: ['write -P 0x11 0 128k'],
    after: (_dir, file) => {
      qemuImg(['snapshot', '-c', 's1', file]);
      qemuIo(['-c', 'write -P 0x12 64k 128k', '-c', 'discard 0 64k', file]);
      qemuImg(['snapshot', '-c', 's2', file]);
      qemuIo(['-c', 'write -P 0x13 1M 4k', file]);
    },
  },
  {
    name: 'persistent bitmaps',
    create: [],
    io: ['write -P 0x11 0 128k'],
    after: (_dir, file) => {
      qemuImg(['bitmap', '--add', file, 'b0']);
      qemuIo(['-c', 'write -P 0x12 64k 128k', file]);
    },
  },
];

describeQemu('Qcow2Image reads qemu-made images like qemu-img convert -O raw', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-read-'));
  });
  afterAll(() => cleanup());

  cases.forEach((c, i) => {
    it(c.name, async () => {
      const sub = join(dir, `c${i}`);
      await import('node:fs').then((fs) => fs.mkdirSync(sub, { recursive: true }));
      c.before?.(sub);
      const file = join(sub, 'img.qcow2');
      const r = qemuImg(['create', '-q', '-f', 'qcow2', ...c.create.map((a) => a.replace('DIR/', `${sub}/`)), file, c.size ?? '2M'], { cwd: sub });
      expect(r.stderr).toBe('');
      const io = qemuIo([...c.io.flatMap((cmd) => ['-c', cmd]), file]);
      expect(io.stderr).toBe('');
      c.after?.(sub, file);
      expect(qemuImg(['convert', '-O', 'raw', file, join(sub, 'ref.raw')]).status).toBe(0);
      const ref = readFileSync(join(sub, 'ref.raw'));
      const img = await openImage(file);
      try {
        expect(img).toBeInstanceOf(Qcow2Image);
        expect(img.size()).toBe(ref.length);
        const got = new Uint8Array(ref.length);
        await img.read(0, got);
        expect(Buffer.compare(Buffer.from(got), ref)).toBe(0);
        // Unaligned small reads across run boundaries.
        for (const [o, l] of [[99999, 3], [8191, 2], [65535, 70000], [ref.length - 1, 1]] as const) {
          const part = new Uint8Array(l);
          await img.read(o, part);
          expect(Buffer.compare(Buffer.from(part), ref.subarray(o, o + l))).toBe(0);
        }
        await checkStatus(img, ref);
      } finally {
        await img.close();
      }
    });
  });

  it('reads the same through a copy opened without its backing file as zeroes', async () => {
    const sub = join(dir, 'c0');
    copyFileSync(join(sub, 'img.qcow2'), join(sub, 'copy.qcow2'));
    const img = await openImage(join(sub, 'copy.qcow2'), { backing: false });
    expect(img.backing).toBeUndefined();
    await img.close();
  });
});

/**
 * blockStatus runs tile the image, end at L2 table boundaries as qemu's do (one L2 slice per
 * call), merge neighbours of one kind within a table, and agree with the bytes.
 */
async function checkStatus(img: Image, ref: Buffer): Promise<void> {
  const l2Span = (img as unknown as { geo: { l2Span: number } }).geo.l2Span;
  let off = 0;
  let prev: string | undefined;
  while (off < img.size()) {
    const st = await img.blockStatus(off, img.size() - off);
    expect(st.offset).toBe(off);
    expect(st.length).toBeGreaterThan(0);
    expect(Math.floor(off / l2Span)).toBe(Math.floor((off + st.length - 1) / l2Span));
    if (off % l2Span === 0) prev = undefined;
    const key = `${st.kind}:${'hostOffset' in st && st.hostOffset !== undefined ? 'h' : ''}`;
    if (st.kind === 'zero' || (st.kind === 'unallocated' && img.backing === undefined)) {
      expect(ref.subarray(off, off + st.length).every((b) => b === 0)).toBe(true);
    }
    if (st.kind === 'unallocated' || (st.kind === 'zero' && !('hostOffset' in st && st.hostOffset !== undefined))) {
      expect(key).not.toBe(prev);
    }
    prev = key;
    off += st.length;
  }
  expect(off).toBe(img.size());
}
