/**
 * Writes, first on in-memory devices (run with or without qemu): random operation sequences
 * per configuration and a fast-check model test with flushes and reopens read back as a plain
 * model says and pass the check library; compressed writes, resize, data files, lazy refcounts
 * and the API edges likewise. Then, where qemu is installed, cross-checks: the same operations
 * done by qemu-io and by Qcow2Image give byte-identical files (qemu's allocation order), and
 * images tsimg writes (the model test's included) pass `qemu-img check` and read back through
 * `qemu-img convert -O raw` as the model says.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImage } from '@tsimg/image';
import { MemoryDevice } from '@tsimg/raw';
import { loadHeader, Qcow2Image, type BackingDevice, type Qcow2CreateOptions } from '@tsimg/qcow2';
import { INCOMPAT_CORRUPT } from '../src/format/types.js';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';
import {
  createMemoryQcow2,
  createOptionsOf,
  expectCleanInMemory,
  firstDiff,
  guestBytes,
  openMemoryQcow2,
  type MemoryQcow2,
} from './memory-image.js';

type Op =
  | { k: 'w'; off: number; len: number; p: number }
  | { k: 'z'; off: number; len: number; unmap: boolean }
  | { k: 'd'; off: number; len: number }
  | { k: 'flush' }
  | { k: 'reopen' };

function qemuCommand(o: Op): string {
  switch (o.k) {
    case 'w':
      return `write -P ${o.p} ${o.off} ${o.len}`;
    case 'z':
      return `write -z ${o.unmap ? '-u ' : ''}${o.off} ${o.len}`;
    case 'd':
      return `discard ${o.off} ${o.len}`;
    default:
      return 'flush';
  }
}

async function applyOps(file: string, ops: Op[]): Promise<void> {
  let img = await openImage(file, { readOnly: false });
  try {
    for (const o of ops) {
      if (o.k === 'w') await img.write(o.off, new Uint8Array(o.len).fill(o.p));
      else if (o.k === 'z') await img.writeZeroes(o.off, o.len, { mayUnmap: o.unmap });
      else if (o.k === 'd') await img.discard(o.off, o.len);
      else if (o.k === 'flush') await img.flush();
      else {
        await img.close();
        img = await openImage(file, { readOnly: false });
      }
    }
  } finally {
    await img.close();
  }
}

/** What the guest sees after `ops`, starting from `base` (qemu's discard: whole clusters only). */
function model(base: Uint8Array, ops: Op[], clusterSize: number, discardKeepsBacking: boolean): Uint8Array {
  const m = new Uint8Array(base); // a copy (Buffer#slice would alias)
  for (const o of ops) {
    if (o.k === 'w') m.fill(o.p, o.off, o.off + o.len);
    else if (o.k === 'z') m.fill(0, o.off, o.off + o.len);
    else if (o.k === 'd' && !discardKeepsBacking) {
      const s = Math.ceil(o.off / clusterSize) * clusterSize;
      const e = o.off + o.len === m.length ? m.length : Math.floor((o.off + o.len) / clusterSize) * clusterSize;
      if (s < e) m.fill(0, s, e);
    }
  }
  return m;
}

/** Deterministic pseudo-random operations (a small LCG, so failures replay). */
function randomOps(seed: number, n: number, size: number, kinds: string): Op[] {
  let s = seed;
  const rnd = (m: number): number => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s % m;
  };
  const ops: Op[] = [];
  for (let i = 0; i < n; i++) {
    const align = rnd(2) ? 512 : 1;
    const off = Math.floor(rnd(size) / align) * align;
    const len = Math.max(1, Math.min(size - off, Math.floor((1 + rnd(300000)) / align) * align || align));
    const k = kinds[rnd(kinds.length)];
    if (k === 'w') ops.push({ k, off, len, p: 1 + rnd(250) });
    else if (k === 'z') ops.push({ k, off, len, unmap: rnd(2) === 1 });
    else ops.push({ k: 'd', off, len });
  }
  return ops;
}

function rawOf(file: string, out: string): Buffer {
  const r = qemuImg(['convert', '-O', 'raw', file, out]);
  expect(r.stderr).toBe('');
  return readFileSync(out);
}

function expectClean(file: string): void {
  const r = qemuImg(['check', file]);
  expect(r.stdout + r.stderr).toContain('No errors were found on the image.');
  expect(r.status).toBe(0);
}

/** Applies `ops` to an in-memory image; 'reopen' closes it and opens the same devices again. */
async function applyOpsInMemory(m: MemoryQcow2, ops: Op[]): Promise<void> {
  let img = await openMemoryQcow2(m);
  try {
    for (const o of ops) {
      if (o.k === 'w') await img.write(o.off, new Uint8Array(o.len).fill(o.p));
      else if (o.k === 'z') await img.writeZeroes(o.off, o.len, { mayUnmap: o.unmap });
      else if (o.k === 'd') await img.discard(o.off, o.len);
      else if (o.k === 'flush') await img.flush();
      else {
        await img.close();
        img = await openMemoryQcow2(m);
      }
    }
  } finally {
    await img.close();
  }
}

/** A raw backing device in memory with `writes` ([pattern, offset, length]) applied. */
async function rawBacking(size: number, writes: Array<[number, number, number]>): Promise<MemoryDevice> {
  const dev = new MemoryDevice({ size, pageSize: 4096 });
  for (const [p, off, len] of writes) await dev.write(off, new Uint8Array(len).fill(p));
  return dev;
}

/** `bytes` padded with zeros (or cut) to `size`: what the guest sees of a shorter backing file. */
function padded(bytes: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  out.set(bytes.subarray(0, size));
  return out;
}

const MiB = 1024 * 1024;

/** One model-test run kept for the qemu cross-check: its files on disk and what the guest must read. */
interface ModelRun {
  dir: string;
  ops: Op[];
  base: Uint8Array;
  clusterSize: number;
  discardKeepsBacking: boolean;
}

// Module-level temporary directory: the in-memory tests leave their images here for the
// qemu cross-checks further down, which run only where qemu is installed.
let dir: string;
let cleanup: () => void;
let n = 0;
const fresh = (): string => {
  const d = join(dir, `t${n++}`);
  mkdirSync(d);
  return d;
};
beforeAll(() => {
  ({ dir, cleanup } = tempDir('tsimg-write-'));
});
afterAll(() => cleanup());

const modelRuns: ModelRun[] = [];
let corruptImage: string | undefined;

describe('Qcow2Image writes on memory devices (with or without qemu)', () => {
  it('random writes, zero writes and discards per configuration read back as the model says and check clean', async () => {
    const configs = [
      'cluster_size=65536',
      'cluster_size=512',
      'cluster_size=512,refcount_bits=1',
      'cluster_size=1024,refcount_bits=64',
      'cluster_size=2048,refcount_bits=4,lazy_refcounts=on',
      'cluster_size=16384,extended_l2=on',
      'cluster_size=65536,extended_l2=on',
      'compat=0.10,cluster_size=4096',
      'cluster_size=2M',
    ];
    const withBacking = ['cluster_size=65536', 'cluster_size=1024,refcount_bits=64', 'cluster_size=65536,extended_l2=on', 'compat=0.10,cluster_size=4096'];
    const size = 8 * MiB;
    const backWrites: Array<[number, number, number]> = [[0x55, 0, 3 * MiB], [0x66, 5 * MiB, MiB]];
    for (const backing of ['', 'qcow2', 'raw']) {
      for (const opts of backing ? withBacking : configs) {
        let back: BackingDevice | undefined;
        if (backing === 'raw') back = await rawBacking(6 * MiB, backWrites);
        else if (backing === 'qcow2') {
          const b = await createMemoryQcow2({ size: BigInt(size) });
          const bi = await openMemoryQcow2(b);
          for (const [p, off, len] of backWrites) await bi.write(off, new Uint8Array(len).fill(p));
          await bi.close();
          back = await openMemoryQcow2(b, true);
        }
        const base = new Uint8Array(size);
        if (back) await back.read(0, base.subarray(0, back.size()));
        const create = createOptionsOf(opts, size);
        if (backing) Object.assign(create, { backingFile: 'base.img', backingFormat: backing });
        const m = await createMemoryQcow2(create, back);
        const ops = randomOps(opts.length * 7 + backing.length, 20, size, 'wwzd');
        await applyOpsInMemory(m, ops);
        await expectCleanInMemory(m.file);
        const want = model(base, ops, Number(create.clusterSize ?? 65536n), opts.startsWith('compat=0.10') && backing !== '');
        expect(firstDiff(await guestBytes(m), want), `${opts} ${backing}`).toBe(-1);
      }
    }
  });

  it('model test: random writes, zero writes, discards, flushes and reopens (fast-check)', async () => {
    const opArb = (size: number): fc.Arbitrary<Op> =>
      fc.oneof(
        fc.record({ k: fc.constant('w' as const), off: fc.nat({ max: size - 1 }), len: fc.integer({ min: 1, max: 200000 }), p: fc.integer({ min: 1, max: 255 }) }),
        fc.record({ k: fc.constant('z' as const), off: fc.nat({ max: size - 1 }), len: fc.integer({ min: 1, max: 300000 }), unmap: fc.boolean() }),
        fc.record({ k: fc.constant('d' as const), off: fc.nat({ max: size - 1 }), len: fc.integer({ min: 1, max: 300000 }) }),
        fc.constant({ k: 'flush' as const }),
        fc.constant({ k: 'reopen' as const }),
      );
    const size = 2 * MiB;
    // The raw backing file is shorter than the image: the guest reads zeros past its end.
    const backingWrites: Array<[number, number, number]> = [[0x5a, 0, MiB], [0x5b, 1280 * 1024, 256 * 1024]];
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          clusterBits: fc.integer({ min: 9, max: 21 }),
          refcountBits: fc.constantFrom(1, 2, 4, 8, 16, 32, 64),
          extendedL2: fc.boolean(),
          v2: fc.boolean(),
          backing: fc.boolean(),
          lazy: fc.boolean(),
        }),
        fc.array(opArb(size), { minLength: 1, maxLength: 20 }),
        async (cfg, rawOps) => {
          const ops = rawOps.map((o) => ('len' in o ? { ...o, len: Math.min(o.len, size - o.off) } : o));
          const v2 = cfg.v2 && cfg.refcountBits === 16 && !cfg.extendedL2 && !cfg.lazy;
          const ext = cfg.extendedL2 && cfg.clusterBits >= 14 && !v2;
          const create: Qcow2CreateOptions = {
            size: BigInt(size),
            clusterSize: 2n ** BigInt(cfg.clusterBits),
            refcountBits: BigInt(v2 ? 16 : cfg.refcountBits),
            extendedL2: ext,
            version: v2 ? 2 : 3,
            lazyRefcounts: cfg.lazy && !v2,
          };
          let base: Uint8Array = new Uint8Array(size);
          let back: MemoryDevice | undefined;
          if (cfg.backing) {
            back = await rawBacking(size - 512 * 1024, backingWrites);
            base = padded(back.contents(), size);
            Object.assign(create, { backingFile: 'b.raw', backingFormat: 'raw' });
          }
          const m = await createMemoryQcow2(create, back);
          await applyOpsInMemory(m, ops);
          await expectCleanInMemory(m.file);
          // v2 with a backing file ignores discards (they would expose the backing file).
          const discardKeepsBacking = v2 && cfg.backing;
          expect(firstDiff(await guestBytes(m), model(base, ops, 2 ** cfg.clusterBits, discardKeepsBacking))).toBe(-1);
          // Kept for the qemu cross-check below.
          const d = fresh();
          writeFileSync(join(d, 't.qcow2'), m.file.contents());
          if (back) writeFileSync(join(d, 'b.raw'), back.contents());
          modelRuns.push({ dir: d, ops, base, clusterSize: 2 ** cfg.clusterBits, discardKeepsBacking });
        },
      ),
      { numRuns: 30 },
    );
  });

  it('compressed writes, also of a partial tail cluster, read back and check clean', async () => {
    for (const opts of ['cluster_size=65536', 'cluster_size=4096,compression_type=zstd', 'cluster_size=512,refcount_bits=2']) {
      const m = await createMemoryQcow2(createOptionsOf(opts, MiB));
      const img = await openMemoryQcow2(m);
      const cs = img.clusterSize;
      const want = new Uint8Array(MiB);
      for (let i = 0; i < 6; i++) {
        const off = i * 3 * cs;
        await img.writeCompressed(off, new Uint8Array(cs).fill(0x40 + i));
        want.fill(0x40 + i, off, off + cs);
        if (i > 0) await img.write(off, new Uint8Array(i * 7).fill(0x20));
        want.fill(0x20, off, off + i * 7);
      }
      await img.close();
      await expectCleanInMemory(m.file);
      expect(firstDiff(await guestBytes(m), want), opts).toBe(-1);
    }
    for (const opts of ['cluster_size=16384,extended_l2=on', 'cluster_size=2048,refcount_bits=1', 'cluster_size=512']) {
      const m = await createMemoryQcow2(createOptionsOf(opts, 1000448)); // 1000000 rounded up to 512, as qemu-img does
      const img = await openMemoryQcow2(m);
      const cs = img.clusterSize;
      const want = new Uint8Array(img.size());
      for (let off = 0, i = 0; off < img.size(); off += 2 * cs, i++) {
        const len = Math.min(cs, img.size() - off);
        await img.writeCompressed(off, new Uint8Array(len).fill((i % 250) + 1));
        want.fill((i % 250) + 1, off, off + len);
      }
      await img.close();
      await expectCleanInMemory(m.file);
      expect(firstDiff(await guestBytes(m), want), opts).toBe(-1);
    }
  });

  it('resize shrinks and grows: the guest keeps what fits and the image checks clean', async () => {
    for (const opts of ['cluster_size=65536', 'cluster_size=4096,refcount_bits=1', 'cluster_size=16384,extended_l2=on', 'compat=0.10,cluster_size=4096']) {
      for (const size of [12 * MiB, MiB]) {
        const m = await createMemoryQcow2(createOptionsOf(opts, 64 * MiB));
        const img = await openMemoryQcow2(m);
        const want = new Uint8Array(64 * MiB);
        for (const [p, off, len] of [[1, 0, 3], [2, 10, 5], [4, 40, 20], [5, 63, 1]] as const) {
          await img.write(off * MiB, new Uint8Array(len * MiB).fill(p));
          want.fill(p, off * MiB, (off + len) * MiB);
        }
        for (let off = 20 * MiB; off < 21 * MiB; off += img.clusterSize) await img.writeCompressed(off, new Uint8Array(img.clusterSize).fill(3));
        want.fill(3, 20 * MiB, 21 * MiB);
        await img.writeZeroes(30 * MiB, MiB);
        await img.resize(size);
        expect(img.size()).toBe(size);
        await img.close();
        await expectCleanInMemory(m.file);
        expect(firstDiff(await guestBytes(m), want.subarray(0, size)), `${opts} ${size}`).toBe(-1);
      }
    }
    for (const opts of ['cluster_size=512', 'cluster_size=65536', 'extended_l2=on']) {
      const m = await createMemoryQcow2(createOptionsOf(opts, MiB));
      const img = await openMemoryQcow2(m);
      await img.write(0, new Uint8Array(MiB).fill(7));
      await img.resize(300 * MiB);
      expect(img.size()).toBe(300 * MiB);
      await img.close();
      await expectCleanInMemory(m.file);
      const ro = await openMemoryQcow2(m, true);
      const head = new Uint8Array(2 * MiB);
      const tail = new Uint8Array(MiB);
      await ro.read(0, head);
      await ro.read(299 * MiB, tail);
      await ro.close();
      expect(head.subarray(0, MiB).every((b) => b === 7) && head.subarray(MiB).every((b) => b === 0) && tail.every((b) => b === 0), opts).toBe(true);
    }
  });

  it('external data files (raw and not): the guest reads the model, a raw data file holds the guest bytes', async () => {
    for (const raw of [false, true]) {
      const m = await createMemoryQcow2(createOptionsOf(`data_file=t.data,data_file_raw=${raw ? 'on' : 'off'}`, 4 * MiB));
      const ops = randomOps(raw ? 3 : 4, 25, 4 * MiB, 'wwzd');
      await applyOpsInMemory(m, ops);
      await expectCleanInMemory(m.file);
      const want = model(new Uint8Array(4 * MiB), ops, 65536, false);
      expect(firstDiff(await guestBytes(m), want)).toBe(-1);
      if (raw) expect(firstDiff(padded(m.dataFile!.contents(), 4 * MiB), want)).toBe(-1);
    }
  });

  it('lazy refcounts: dirty while open, clean after close', async () => {
    const m = await createMemoryQcow2(createOptionsOf('lazy_refcounts=on,cluster_size=4096', 4 * MiB));
    const img = await openMemoryQcow2(m);
    await img.write(0, new Uint8Array(70000).fill(9));
    expect(img.header.incompatibleFeatures & 1n).toBe(1n);
    expect((await loadHeader(m.file)).header.incompatibleFeatures & 1n).toBe(1n);
    await img.close();
    expect((await loadHeader(m.file)).header.incompatibleFeatures & 1n).toBe(0n);
    await expectCleanInMemory(m.file);
  });
});

describe('Qcow2Image write API edges (memory devices)', () => {
  it('refuses writes on read-only opens and past the end', async () => {
    const m = await createMemoryQcow2({ size: BigInt(MiB) });
    const ro = await openMemoryQcow2(m, true);
    await expect(ro.write(0, new Uint8Array(1))).rejects.toThrow(/read-only/);
    await ro.close();
    const rw = await openMemoryQcow2(m);
    await expect(rw.write(MiB - 1, new Uint8Array(2))).rejects.toThrow(/beyond the end/);
    await rw.close();
  });

  it('concurrent calls behave as if issued one after another, in call order', async () => {
    const f = await createMemoryQcow2(createOptionsOf('cluster_size=4096', 8 * MiB));
    const g = await createMemoryQcow2(createOptionsOf('cluster_size=4096', 8 * MiB));
    const ops = randomOps(11, 40, 8 * MiB, 'wwzd');
    await applyOpsInMemory(g, ops);
    const img = await openMemoryQcow2(f);
    const probe = new Uint8Array(300000);
    const seen: Promise<Uint8Array>[] = [];
    await Promise.all(
      ops.map((o, i) => {
        const p =
          o.k === 'w'
            ? img.write(o.off, new Uint8Array(o.len).fill(o.p))
            : o.k === 'z'
              ? img.writeZeroes(o.off, o.len, { mayUnmap: o.unmap })
              : img.discard((o as { off: number }).off, (o as { len: number }).len);
        if (i === 20) seen.push(img.read(0, probe).then(() => probe.slice()));
        return p;
      }),
    );
    await img.close();
    expect(firstDiff(f.file.contents(), g.file.contents())).toBe(-1);
    const want = model(new Uint8Array(8 * MiB), ops.slice(0, 21), 4096, false).subarray(0, probe.length);
    expect(Buffer.from(await seen[0]!).equals(Buffer.from(want))).toBe(true);
  });

  it('marks the image corrupt instead of writing over metadata when refcounts are wrong', async () => {
    const m = await createMemoryQcow2({ size: BigInt(4 * MiB) });
    const probe = await openMemoryQcow2(m, true);
    const { l1TableOffset, refcountTableOffset } = probe.header;
    await probe.close();
    // Refcount block 0 follows the refcount table; zero the L1 table's refcount (16-bit entries).
    await m.file.write(refcountTableOffset + 65536 + 2 * (l1TableOffset / 65536), new Uint8Array(2));
    const img = await openMemoryQcow2(m);
    await expect(img.write(0, new Uint8Array(512))).rejects.toThrow(/overlaps with active L1 table/);
    await expect(img.write(0, new Uint8Array(512))).rejects.toThrow(/corrupt/);
    await img.close().catch(() => undefined);
    expect((await loadHeader(m.file)).header.incompatibleFeatures & INCOMPAT_CORRUPT).toBe(INCOMPAT_CORRUPT);
    corruptImage = join(fresh(), 'a.qcow2');
    writeFileSync(corruptImage, m.file.contents());
  });
});

describeQemu('Qcow2Image writes, cross-checked with qemu', () => {

  describe('byte-identical to qemu-io doing the same', () => {
    const configs = [
      'cluster_size=65536',
      'cluster_size=512',
      'cluster_size=512,refcount_bits=1',
      'cluster_size=1024,refcount_bits=64',
      'cluster_size=2048,refcount_bits=4,lazy_refcounts=on',
      'cluster_size=16384,extended_l2=on',
      'cluster_size=65536,extended_l2=on',
      'compat=0.10,cluster_size=4096',
      'cluster_size=2M',
    ];
    // Every config alone; a representative few over each kind of backing file.
    const withBacking = ['cluster_size=65536', 'cluster_size=1024,refcount_bits=64', 'cluster_size=65536,extended_l2=on', 'compat=0.10,cluster_size=4096'];
    for (const backing of ['', 'qcow2', 'raw']) {
      for (const opts of backing ? withBacking : configs) {
        it(`${opts}${backing ? `, ${backing} backing` : ''}`, async () => {
          const d = fresh();
          const size = 8 * 1024 * 1024;
          const backArgs: string[] = [];
          if (backing) {
            const base = join(d, 'base.img');
            qemuImg(['create', '-q', '-f', backing, base, backing === 'raw' ? '6M' : '8M']);
            qemuIo(['-f', backing, '-c', 'write -P 0x55 0 3M', '-c', 'write -P 0x66 5M 1M', base]);
            backArgs.push('-b', 'base.img', '-F', backing);
          }
          const q = join(d, 'q.qcow2');
          const t = join(d, 't.qcow2');
          for (const f of [q, t]) expect(qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, ...backArgs, f, String(size)]).status).toBe(0);
          const ops = randomOps(opts.length * 7 + backing.length, 20, size, 'wwzd');
          const io = qemuIo([...ops.flatMap((o) => ['-c', qemuCommand(o)]), q]);
          expect(io.stderr).toBe('');
          await applyOps(t, ops);
          expect(firstDiff(readFileSync(q), readFileSync(t))).toBe(-1);
          expectClean(t);
        });
      }
    }
  });

  it('writes over compressed clusters and internal snapshots: clean and reads back', async () => {
    for (const opts of ['cluster_size=65536', 'cluster_size=32768,extended_l2=on,compression_type=zstd', 'compat=0.10,cluster_size=4096']) {
      const d = fresh();
      const t = join(d, 't.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, t, '8M']);
      qemuIo(['-c', 'write -P 0x31 0 2M', '-c', 'write -c -P 0x32 2M 1M', '-c', 'write -c 4M 128k', t]);
      qemuImg(['snapshot', '-c', 's1', t]);
      const before = rawOf(t, join(d, 'before.raw'));
      const ops = randomOps(opts.length, 30, 8 * 1024 * 1024, 'wwzd');
      await applyOps(t, ops);
      expectClean(t);
      const cs = Number(/cluster_size=(\d+)/.exec(opts)![1]);
      expect(firstDiff(rawOf(t, join(d, 'after.raw')), Buffer.from(model(before, ops, cs, false)))).toBe(-1);
      // The snapshot still reads as before.
      const snap = qemuImg(['convert', '-O', 'raw', '-l', 'snapshot.name=s1', t, join(d, 'snap.raw')]);
      expect(snap.stderr).toBe('');
      expect(firstDiff(readFileSync(join(d, 'snap.raw')), before)).toBe(-1);
    }
  });

  it('compressed writes are byte-identical to qemu-io write -c', async () => {
    for (const opts of ['cluster_size=65536', 'cluster_size=4096,compression_type=zstd', 'cluster_size=512,refcount_bits=2']) {
      const d = fresh();
      const q = join(d, 'q.qcow2');
      const t = join(d, 't.qcow2');
      for (const f of [q, t]) qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, f, '1M']);
      const cs = Number(/cluster_size=(\d+)/.exec(opts)![1]);
      const cmds: string[] = [];
      const img = (await openImage(t, { readOnly: false })) as Qcow2Image;
      for (let i = 0; i < 6; i++) {
        const off = i * 3 * cs;
        const data = new Uint8Array(cs).fill(0x40 + i);
        data.fill(0x20, 0, i * 7); // varied compressed sizes
        cmds.push(`write -c -P ${0x40 + i} ${off} ${cs}`, `write -P 0x20 ${off} ${i * 7}`);
        await img.writeCompressed(off, new Uint8Array(cs).fill(0x40 + i));
        if (i > 0) await img.write(off, new Uint8Array(i * 7).fill(0x20));
      }
      await img.close();
      qemuIo([...cmds.filter((c) => !c.endsWith(' 0')).flatMap((c) => ['-c', c]), q]);
      expect(firstDiff(readFileSync(q), readFileSync(t))).toBe(-1);
      expectClean(t);
    }
    // Every other cluster of an odd-sized image, the partial tail cluster included.
    for (const opts of ['cluster_size=16384,extended_l2=on', 'cluster_size=2048,refcount_bits=1', 'cluster_size=512']) {
      const d = fresh();
      const q = join(d, 'q.qcow2');
      const t = join(d, 't.qcow2');
      for (const f of [q, t]) qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, f, '1000000']);
      const img = (await openImage(t, { readOnly: false })) as Qcow2Image;
      const cs = img.clusterSize;
      const cmds: string[] = [];
      for (let off = 0, i = 0; off < img.size(); off += 2 * cs, i++) {
        const len = Math.min(cs, img.size() - off);
        cmds.push(`write -c -P ${(i % 250) + 1} ${off} ${len}`);
        await img.writeCompressed(off, new Uint8Array(len).fill((i % 250) + 1));
      }
      await img.close();
      expect(qemuIo([...cmds.flatMap((c) => ['-c', c]), q]).stderr).toBe('');
      expect(firstDiff(readFileSync(q), readFileSync(t))).toBe(-1);
      expectClean(t);
    }
  });

  it('resize shrinks like qemu-img resize --shrink', async () => {
    for (const opts of ['cluster_size=65536', 'cluster_size=4096,refcount_bits=1', 'cluster_size=16384,extended_l2=on', 'compat=0.10,cluster_size=4096']) {
      for (const [size, snap] of [[12 * 1024 * 1024, false], [1024 * 1024, !opts.includes('refcount_bits=1')]] as const) {
        const d = fresh();
        const q = join(d, 'q.qcow2');
        const t = join(d, 't.qcow2');
        qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, q, '64M']);
        const io = ['write -P 1 0 3M', 'write -P 2 10M 5M', 'write -c -P 3 20M 1M', 'write -z 30M 1M', 'write -P 4 40M 20M', 'write -P 5 63M 1M'];
        expect(qemuIo([...io.flatMap((c) => ['-c', c]), q]).stderr).toBe('');
        if (snap) qemuImg(['snapshot', '-c', 's', q]);
        copyFileSync(q, t);
        if (snap && opts.startsWith('compat=0.10')) {
          const img = await openImage(t, { readOnly: false });
          await expect(img.resize(size)).rejects.toThrow(qemuImg(['resize', '--shrink', q, String(size)]).stderr.trim().replace(/^qemu-img: /, ''));
          await img.close();
          continue;
        }
        expect(qemuImg(['resize', '-q', '--shrink', q, String(size)]).status).toBe(0);
        const img = await openImage(t, { readOnly: false });
        await img.resize(size);
        await img.close();
        expect(firstDiff(readFileSync(q), readFileSync(t))).toBe(-1);
        expectClean(t);
      }
    }
  });

  it('resize grows like qemu-img resize', async () => {
    for (const opts of ['cluster_size=512', 'cluster_size=65536', 'extended_l2=on']) {
      const d = fresh();
      const q = join(d, 'q.qcow2');
      const t = join(d, 't.qcow2');
      for (const f of [q, t]) {
        qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, f, '1M']);
        qemuIo(['-c', 'write -P 7 0 1M', f]);
      }
      expect(qemuImg(['resize', '-q', q, '300M']).status).toBe(0);
      const img = await openImage(t, { readOnly: false });
      await img.resize(300 * 1024 * 1024);
      expect(img.size()).toBe(300 * 1024 * 1024);
      await img.close();
      expect(firstDiff(readFileSync(q), readFileSync(t))).toBe(-1);
      expectClean(t);
    }
  });

  it('external data files (raw and not) are written like qemu-io does', async () => {
    for (const raw of [false, true]) {
      const d = fresh();
      const q = join(d, 'q.qcow2');
      const t = join(d, 't.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${d}/q.data,data_file_raw=${raw ? 'on' : 'off'}`, q, '4M']);
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${d}/t.data,data_file_raw=${raw ? 'on' : 'off'}`, t, '4M']);
      const ops = randomOps(raw ? 3 : 4, 25, 4 * 1024 * 1024, 'wwzd');
      qemuIo([...ops.flatMap((o) => ['-c', qemuCommand(o)]), q]);
      await applyOps(t, ops);
      expectClean(t);
      expect(firstDiff(readFileSync(join(d, 'q.data')), readFileSync(join(d, 't.data')))).toBe(-1);
      expect(firstDiff(rawOf(q, join(d, 'q.raw')), rawOf(t, join(d, 't.raw')))).toBe(-1);
      // The metadata files differ only in the data file name they store.
      const a = readFileSync(q);
      const b = readFileSync(t);
      expect(a.length).toBe(b.length);
    }
  });

  it('lazy refcounts: dirty while open, clean after close; a dirty image reads, and is repaired like qemu on a read/write open', async () => {
    const d = fresh();
    const t = join(d, 't.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on,cluster_size=4096', t, '4M']);
    const img = (await openImage(t, { readOnly: false })) as Qcow2Image;
    await img.write(0, new Uint8Array(70000).fill(9));
    expect(img.header.incompatibleFeatures & 1n).toBe(1n);
    const info = JSON.parse(qemuImg(['info', '-U', '--output=json', t]).stdout) as { 'dirty-flag': boolean };
    expect(info['dirty-flag']).toBe(true);
    await img.close();
    expectClean(t);
    // qemu-io killed mid-way leaves the image dirty with refcounts never written.
    qemuIo(['-c', 'write -P 3 1M 64k', '-c', 'write -P 4 3M 64k', '-c', 'sigraise 9', t]);
    const ro = await openImage(t);
    const buf = new Uint8Array(64 * 1024);
    await ro.read(1024 * 1024, buf);
    expect(buf.every((b) => b === 3)).toBe(true);
    await ro.close();
    expect(qemuImg(['check', t]).status).not.toBe(0);
    const q = join(d, 'q.qcow2');
    copyFileSync(t, q);
    qemuIo(['-c', 'write -P 5 2M 4k', q]); // qemu repairs on open, then writes
    const rw = await openImage(t, { readOnly: false });
    await rw.write(2 * 1024 * 1024, new Uint8Array(4096).fill(5));
    await rw.close();
    expectClean(t);
    expect(firstDiff(readFileSync(q), readFileSync(t))).toBe(-1);
  });

  it('the model test\'s images pass qemu-img check and read back through qemu-img convert as the model says', () => {
    expect(modelRuns.length).toBe(30);
    for (const r of modelRuns) {
      const t = join(r.dir, 't.qcow2');
      expectClean(t);
      expect(firstDiff(rawOf(t, join(r.dir, 't.raw')), model(r.base, r.ops, r.clusterSize, r.discardKeepsBacking))).toBe(-1);
    }
  });
});

describeQemu('Qcow2Image write API edges, cross-checked with qemu-img', () => {
  it('qemu-img info reports the image marked corrupt in memory as corrupt', () => {
    expect(corruptImage).toBeDefined();
    const info = JSON.parse(qemuImg(['info', '--output=json', corruptImage!]).stdout) as { 'format-specific': { data: { corrupt: boolean } } };
    expect(info['format-specific'].data.corrupt).toBe(true);
  });
});
