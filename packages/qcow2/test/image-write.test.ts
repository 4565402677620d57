/**
 * Writes cross-checked with qemu: the same operations done by qemu-io and by Qcow2Image give
 * byte-identical files (qemu's allocation order), images tsimg writes pass `qemu-img check`
 * and read back through `qemu-img convert -O raw` as a plain model says; plus a fast-check
 * model test of random operation sequences with flushes and reopens.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { closeSync, copyFileSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { openImage } from '@tsimg/image';
import { Qcow2Image } from '@tsimg/qcow2';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';

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

function firstDiff(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return Math.min(a.length, b.length);
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

describeQemu('Qcow2Image writes', () => {
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

  it('model test: random writes, zero writes, discards, flushes and reopens (fast-check)', async () => {
    const opArb = (size: number): fc.Arbitrary<Op> =>
      fc.oneof(
        fc.record({ k: fc.constant('w' as const), off: fc.nat({ max: size - 1 }), len: fc.integer({ min: 1, max: 200000 }), p: fc.integer({ min: 1, max: 255 }) }),
        fc.record({ k: fc.constant('z' as const), off: fc.nat({ max: size - 1 }), len: fc.integer({ min: 1, max: 300000 }), unmap: fc.boolean() }),
        fc.record({ k: fc.constant('d' as const), off: fc.nat({ max: size - 1 }), len: fc.integer({ min: 1, max: 300000 }) }),
        fc.constant({ k: 'flush' as const }),
        fc.constant({ k: 'reopen' as const }),
      );
    const size = 2 * 1024 * 1024;
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
          const d = fresh();
          const t = join(d, 't.qcow2');
          const v2 = cfg.v2 && cfg.refcountBits === 16 && !cfg.extendedL2 && !cfg.lazy;
          const ext = cfg.extendedL2 && cfg.clusterBits >= 14 && !v2;
          const opts = [`cluster_size=${2 ** cfg.clusterBits}`, `refcount_bits=${v2 ? 16 : cfg.refcountBits}`];
          if (ext) opts.push('extended_l2=on');
          if (v2) opts.push('compat=0.10');
          if (cfg.lazy && !v2) opts.push('lazy_refcounts=on');
          let base = new Uint8Array(size);
          const backArgs: string[] = [];
          if (cfg.backing) {
            qemuImg(['create', '-q', '-f', 'raw', join(d, 'b.raw'), String(size - 512 * 1024)]);
            qemuIo(['-f', 'raw', '-c', 'write -P 0x5a 0 1M', '-c', 'write -P 0x5b 1280k 256k', join(d, 'b.raw')]);
            base = new Uint8Array(rawOf(join(d, 'b.raw'), join(d, 'b2.raw')));
            const padded = new Uint8Array(size);
            padded.set(base.subarray(0, size));
            base = padded;
            backArgs.push('-b', 'b.raw', '-F', 'raw');
          }
          expect(qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts.join(','), ...backArgs, t, String(size)]).status).toBe(0);
          await applyOps(t, ops);
          expectClean(t);
          // v2 with a backing file ignores discards (they would expose the backing file).
          const want = model(base, ops, 2 ** cfg.clusterBits, v2 && cfg.backing);
          expect(firstDiff(rawOf(t, join(d, 't.raw')), Buffer.from(want))).toBe(-1);
        },
      ),
      { numRuns: 30 },
    );
  });
});

describeQemu('Qcow2Image write API edges', () => {
  it('refuses writes on read-only opens and past the end', async () => {
    const { dir, cleanup } = tempDir('tsimg-edge-');
    try {
      const f = join(dir, 'a.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', f, '1M']);
      const ro = await openImage(f);
      await expect(ro.write(0, new Uint8Array(1))).rejects.toThrow(/read-only/);
      await ro.close();
      const rw = await openImage(f, { readOnly: false });
      await expect(rw.write(1024 * 1024 - 1, new Uint8Array(2))).rejects.toThrow(/beyond the end/);
      await rw.close();
      copyFileSync(f, join(dir, 'b.qcow2'));
    } finally {
      cleanup();
    }
  });

  it('concurrent calls behave as if issued one after another, in call order', async () => {
    const { dir, cleanup } = tempDir('tsimg-conc-');
    try {
      const f = join(dir, 'a.qcow2');
      const g = join(dir, 'b.qcow2');
      for (const x of [f, g]) qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', x, '8M']);
      const ops = randomOps(11, 40, 8 * 1024 * 1024, 'wwzd');
      await applyOps(g, ops);
      const img = await openImage(f, { readOnly: false });
      const probe = new Uint8Array(300000);
      const seen: Promise<Uint8Array>[] = [];
      await Promise.all(
        ops.map((o, i) => {
          const p =
            o.k === 'w'
              ? img.write(o.off, new Uint8Array(o.len).fill(o.p))
              : o.k === 'z'
                ? img.writeZeroes(o.off, o.len, { mayUnmap: o.unmap })
                : img.discard(o.off, (o as { len: number }).len);
          if (i === 20) seen.push(img.read(0, probe).then(() => probe.slice()));
          return p;
        }),
      );
      await img.close();
      expect(firstDiff(readFileSync(f), readFileSync(g))).toBe(-1);
      const want = model(new Uint8Array(8 * 1024 * 1024), ops.slice(0, 21), 4096, false).subarray(0, probe.length);
      expect(Buffer.from(await seen[0]!).equals(Buffer.from(want))).toBe(true);
    } finally {
      cleanup();
    }
  });

  it('marks the image corrupt instead of writing over metadata when refcounts are wrong', async () => {
    const { dir, cleanup } = tempDir('tsimg-overlap-');
    try {
      const f = join(dir, 'a.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', f, '4M']);
      const probe = (await openImage(f)) as Qcow2Image;
      const { l1TableOffset, refcountTableOffset } = probe.header;
      await probe.close();
      // Refcount block 0 follows the refcount table; zero the L1 table's refcount (16-bit entries).
      const fd = openSync(f, 'r+');
      writeSync(fd, Buffer.alloc(2), 0, 2, refcountTableOffset + 65536 + 2 * (l1TableOffset / 65536));
      closeSync(fd);
      const img = await openImage(f, { readOnly: false });
      await expect(img.write(0, new Uint8Array(512))).rejects.toThrow(/overlaps with active L1 table/);
      await expect(img.write(0, new Uint8Array(512))).rejects.toThrow(/corrupt/);
      await img.close().catch(() => undefined);
      const info = JSON.parse(qemuImg(['info', '--output=json', f]).stdout) as { 'format-specific': { data: { corrupt: boolean } } };
      expect(info['format-specific'].data.corrupt).toBe(true);
    } finally {
      cleanup();
    }
  });
});
