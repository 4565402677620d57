/**
 * Cross-checks of `tsimg convert --bitmaps` against `qemu-img convert --bitmaps` (QEMU 7.2):
 * the same file bytes, the same bitmaps in `qemu-img info`, a clean `qemu-img check`, the same
 * dirty bits (read straight from the files), and qemu's messages and statuses for the errors.
 * Needs `npm run build` first (it runs bin/tsimg.js).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { copyFileSync, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeQemu, qemuImg, qemuIo, run, tempDir, tsimg, type RunResult } from '../../../test-images/qemu.js';
import { bitmapContent } from '../../../test-images/bitmap-dump.js';

function sh(r: RunResult, what: string): string {
  if (r.status !== 0) throw new Error(`${what}: ${r.stderr}`);
  return r.stdout;
}

/** qemu-img's message lines as tsimg prints them. */
const asTsimg = (s: string): string => s.replaceAll('qemu-img:', 'tsimg:');

describeQemu('tsimg convert --bitmaps vs qemu-img convert --bitmaps', () => {
  let dir: string;
  let cleanup: () => void;
  const p = (name: string): string => join(dir, name);
  const img = (...args: string[]): string => sh(qemuImg(args), `qemu-img ${args.join(' ')}`);
  const io = (...args: string[]): string => sh(qemuIo(args), `qemu-io ${args.join(' ')}`);

  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-cvbm-'));
    img('create', '-q', '-f', 'qcow2', p('src.qcow2'), '64M');
    img('bitmap', '--add', p('src.qcow2'), 'b0');
    img('bitmap', '--add', '-g', '4k', p('src.qcow2'), 'b1');
    img('bitmap', '--add', '--disable', p('src.qcow2'), 'b2');
    io('-c', 'write -P 0x5a 0 64k', '-c', 'write -P 0xa5 10M 1M', '-c', 'write 33k 1k', p('src.qcow2'));
    // bitmap data over several clusters, only some of them dirty
    img('create', '-q', '-f', 'qcow2', p('big.qcow2'), '1G');
    img('bitmap', '--add', '-g', '512', p('big.qcow2'), 'fine');
    img('bitmap', '--add', p('big.qcow2'), 'coarse');
    io('-c', 'write 0 4k', '-c', 'write 1000M 64k', '-c', 'write 1073741312 512', p('big.qcow2'));
    // a directory over more than one 512-byte cluster, odd names
    img('create', '-q', '-f', 'qcow2', p('many.qcow2'), '8M');
    for (let i = 1; i <= 20; i++) img('bitmap', '--add', '-g', String(512 << i % 6), p('many.qcow2'), `bitmap-with-a-longer-name-${i}`);
    img('bitmap', '--add', p('many.qcow2'), 'é-ünïcode');
    io('-c', 'write 0 300k', '-c', 'write 5M 1M', p('many.qcow2'));
    // an all-ones bitmap table entry (qemu reads it as every bit set, and writes it out as data)
    img('create', '-q', '-f', 'qcow2', p('ones.qcow2'), '64M');
    img('bitmap', '--add', p('ones.qcow2'), 'full');
    const bytes = readFileSync(p('ones.qcow2'));
    const v = new DataView(bytes.buffer, bytes.byteOffset);
    let off = v.getUint32(100);
    while (v.getUint32(off) !== 0x23852875) off += 8 + ((v.getUint32(off + 4) + 7) & ~7);
    bytes.writeBigUInt64BE(1n, Number(v.getBigUint64(Number(v.getBigUint64(off + 24)))));
    writeFileSync(p('ones.qcow2'), bytes);
    // every bitmap in use: qemu-io marks them so on open, and is killed before it clears them
    copyFileSync(p('src.qcow2'), p('inuse.qcow2'));
    qemuIo(['-c', 'sigraise 9', p('inuse.qcow2')]);
    img('create', '-q', '-f', 'qcow2', p('plain.qcow2'), '4M');
    io('-c', 'write 1M 64k', p('plain.qcow2'));
    img('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', p('v2.qcow2'), '4M');
    img('create', '-q', '-f', 'qcow2', p('base.qcow2'), '64M');
  });
  afterAll(() => cleanup());

  /** Runs both converters into ref.* / out.* and returns their results. */
  function both(args: string[], src: string): { q: RunResult; t: RunResult; ref: string; out: string } {
    const ref = p('ref.img');
    const out = p('out.img');
    for (const f of [ref, out]) rmSync(f, { force: true });
    const q = qemuImg(['convert', ...args, src, ref]);
    const t = tsimg(['convert', ...args, src, out]);
    return { q, t, ref, out };
  }

  const cases: { name: string; src: string; args: string[] }[] = [
    { name: 'three bitmaps (granularities, a disabled one)', src: 'src.qcow2', args: [] },
    { name: 'bitmap data over several clusters', src: 'big.qcow2', args: [] },
    { name: 'multi-cluster tables in 512-byte clusters', src: 'big.qcow2', args: ['-o', 'cluster_size=512'] },
    { name: 'a two-cluster directory, 1 KiB clusters, backing file', src: 'many.qcow2', args: ['-o', 'cluster_size=1024', '-B', 'base.qcow2', '-F', 'qcow2'] },
    { name: 'compressed target', src: 'src.qcow2', args: ['-c'] },
    { name: 'extended L2, lazy refcounts', src: 'src.qcow2', args: ['-o', 'extended_l2=on,lazy_refcounts=on'] },
    { name: 'all-ones table entry in the source', src: 'ones.qcow2', args: [] },
    { name: 'inconsistent bitmaps skipped', src: 'inuse.qcow2', args: ['--skip-broken-bitmaps'] },
    { name: 'a source without bitmaps', src: 'plain.qcow2', args: [] },
  ];

  for (const c of cases) {
    it(`${c.name}: same bytes, bitmaps and check`, () => {
      const args = ['--bitmaps', '-O', 'qcow2', ...c.args];
      const { q, t, ref, out } = both(args, p(c.src));
      expect(q.status).toBe(0);
      expect({ status: t.status, stderr: t.stderr.includes('warning') ? '' : t.stderr }).toEqual({ status: 0, stderr: '' });
      const info = (f: string): unknown => JSON.parse(img('info', '--output=json', f))['format-specific'].data.bitmaps;
      expect(info(out)).toEqual(info(ref));
      expect(bitmapContent(out)).toEqual(bitmapContent(ref));
      const check = qemuImg(['check', out]);
      expect(check.stdout).toContain('No errors were found on the image.');
      expect(check.status).toBe(0);
      expect(run('cmp', [ref, out]).status).toBe(0);
    });
  }

  it('copies the source bits (and the disabled flag) as they are', () => {
    const { t, out } = both(['--bitmaps', '-O', 'qcow2'], p('src.qcow2'));
    expect(t.status).toBe(0);
    expect(bitmapContent(out)).toEqual(bitmapContent(p('src.qcow2')));
    expect(bitmapContent(out).map((b) => [b.name, b.flags, b.granularityBits, b.dirty])).toEqual([
      ['b0', 2, 16, [[0, 1], [160, 176]]],
      ['b1', 2, 12, [[0, 16], [2560, 2816]]],
      ['b2', 0, 16, []],
    ]);
  });

  const errors: { name: string; src: string; args: string[] }[] = [
    { name: 'an inconsistent bitmap without --skip-broken-bitmaps', src: 'inuse.qcow2', args: ['-O', 'qcow2'] },
    { name: 'a raw target', src: 'src.qcow2', args: ['-O', 'raw'] },
    { name: 'a v2 source', src: 'v2.qcow2', args: ['-O', 'qcow2'] },
  ];
  for (const c of errors) {
    it(`refuses ${c.name} with qemu's message`, () => {
      const { q, t, ref, out } = both(['--bitmaps', ...c.args], p(c.src));
      expect(q.status).toBe(1);
      expect({ status: t.status, stderr: t.stderr }).toEqual({ status: q.status, stderr: asTsimg(q.stderr) });
      // The source checks come before the target is created, the target's after: qemu-img
      // then leaves the target it created, tsimg removes it (docs/clean-failure.md).
      expect(existsSync(ref)).toBe(c.name === 'a raw target');
      expect(existsSync(out)).toBe(false);
    });
  }

  it("refuses a v2 target with qemu's message", () => {
    const { q, t } = both(['--bitmaps', '-O', 'qcow2', '-o', 'compat=0.10'], p('src.qcow2'));
    expect(q.status).toBe(1);
    expect({ status: t.status, stderr: t.stderr }).toEqual({ status: 1, stderr: asTsimg(q.stderr) });
  });
});
