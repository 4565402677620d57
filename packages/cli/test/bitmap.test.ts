/**
 * Cross-checks of `tsimg bitmap` against `qemu-img bitmap` (QEMU 7.2), and of the bitmaps tsimg
 * keeps when it writes an image (library writes, convert -n, resize, snapshot) against what
 * qemu-io / qemu-img leave: the same status and messages, byte-identical files, the same
 * `qemu-img info`, a clean `qemu-img check`, the same dirty bits (test-images/bitmap-dump.ts).
 * Needs `npm run build` first (it runs bin/tsimg.js).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImage } from '@tsimg/image';
import { holdWithQemuIo, killAndWait } from '../../../test-images/holders.js';
import { asTsimg, describeQemu, qemuImg, qemuIo, tempDir, tsimg, type RunResult } from '../../../test-images/qemu.js';
import { bitmapContent } from '../../../test-images/bitmap-dump.js';

/** qemu's automatic node names ("#block123") differ from run to run. */
const normal = (s: string): string => asTsimg(s).replaceAll('qemu-img', 'tsimg').replace(/#block\d+/g, '#block');

function sh(r: RunResult, what: string): string {
  if (r.status !== 0) throw new Error(`${what}: ${r.stderr}`);
  return r.stdout;
}

describeQemu('tsimg bitmap vs qemu-img bitmap', () => {
  let dir: string;
  let cleanup: () => void;
  const p = (name: string): string => join(dir, name);
  const img = (...args: string[]): string => sh(qemuImg(args), `qemu-img ${args.join(' ')}`);
  const io = (...args: string[]): string => sh(qemuIo(args), `qemu-io ${args.join(' ')}`);

  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-bitmap-'));
    img('create', '-q', '-f', 'qcow2', p('empty.qcow2'), '4M');
    // data and a snapshot, and bitmaps already there (one disabled)
    img('create', '-q', '-f', 'qcow2', p('data.qcow2'), '8M');
    io('-c', 'write -P 1 0 64k', '-c', 'write -P 2 1M 300k', p('data.qcow2'));
    img('snapshot', '-c', 'sn1', p('data.qcow2'));
    img('bitmap', '--add', '-g', '4k', p('data.qcow2'), 'old');
    img('bitmap', '--add', '-g', '512', '--disable', p('data.qcow2'), 'off');
    io('-c', 'write -P 3 3M 10k', p('data.qcow2'));
    // 512-byte clusters: bitmap data and tables over several clusters
    img('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', p('small.qcow2'), '16M');
    img('bitmap', '--add', '-g', '512', p('small.qcow2'), 'fine');
    io('-c', 'write -P 4 0 9M', p('small.qcow2'));
    // merge sources in another file
    img('create', '-q', '-f', 'qcow2', p('other.qcow2'), '8M');
    img('bitmap', '--add', '-g', '512', p('other.qcow2'), 'ob');
    io('-c', 'write 3M 5k', '-c', 'write 7M 100k', p('other.qcow2'));
    img('create', '-q', '-f', 'qcow2', p('other4.qcow2'), '4M');
    img('bitmap', '--add', p('other4.qcow2'), 'ob');
    img('create', '-q', '-f', 'raw', p('r.raw'), '4M');
    img('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', p('v2.qcow2'), '4M');
    // an inconsistent bitmap: qemu-io marks it in use on open and is killed before it stores it
    copyFileSync(p('data.qcow2'), p('inuse.qcow2'));
    qemuIo(['-c', 'sigraise 9', p('inuse.qcow2')]);
  });
  afterAll(() => cleanup());

  /**
   * Runs each command line on a copy of `base` with qemu-img and with tsimg: the same status and
   * stderr every time, then byte-identical files and the same info; `checkArgs` opens the
   * result for qemu-img check (an encrypted image needs its key secret).
   */
  function sameSequence(base: string, commands: string[][], checkArgs = (file: string): string[] => [file]): void {
    copyFileSync(p(base), p('q.qcow2'));
    copyFileSync(p(base), p('t.qcow2'));
    for (const c of commands) {
      // '@' is the image, '~name' another file of the test directory
      const arg = (a: string, self: string): string => (a.startsWith('~') ? p(a.slice(1)) : a.replace('@', p(self)));
      const q = qemuImg(['bitmap', ...c.map((a) => arg(a, 'q.qcow2'))]);
      const t = tsimg(['bitmap', ...c.map((a) => arg(a, 't.qcow2'))]);
      const label = c.join(' ');
      expect({ label, status: t.status, stderr: normal(t.stderr).replaceAll(p('t.qcow2'), 'IMG') }).toEqual({
        label,
        status: q.status,
        stderr: normal(q.stderr).replaceAll(p('q.qcow2'), 'IMG'),
      });
    }
    expect(readFileSync(p('t.qcow2')).equals(readFileSync(p('q.qcow2'))), 'files byte-identical').toBe(true);
    const info = (f: string): string => img('info', p(f)).replace(p(f), 'IMG');
    expect(info('t.qcow2')).toBe(info('q.qcow2'));
    img('check', ...checkArgs(p('t.qcow2')));
  }

  const sequences: { name: string; base: string; commands: string[][] }[] = [
    { name: 'add with the default granularity', base: 'empty.qcow2', commands: [['--add', '@', 'b0']] },
    {
      name: 'add with granularities, disable, enable, clear',
      base: 'empty.qcow2',
      commands: [['--add', '-g', '4k', '@', 'a'], ['--add', '-g', '512', '--disable', '@', 'b'], ['--add', '--granularity', '2M', '@', 'c'], ['--enable', '@', 'b'], ['--clear', '@', 'a']],
    },
    { name: 'remove of an old and a new bitmap', base: 'data.qcow2', commands: [['--add', '@', 'new'], ['--remove', '@', 'old'], ['--remove', '@', 'new'], ['--remove', '@', 'off']] },
    { name: 'clear and disable bitmaps with bits, on an image with a snapshot', base: 'data.qcow2', commands: [['--clear', '--disable', '@', 'old'], ['--enable', '@', 'off']] },
    { name: 'merge within the image (other granularities)', base: 'data.qcow2', commands: [['--add', '-g', '64k', '@', 'm'], ['--merge', 'old', '--merge', 'off', '@', 'm'], ['--merge', 'm', '@', 'off']] },
    { name: 'merge from another file (-b, -F)', base: 'data.qcow2', commands: [['--add', '@', 'x'], ['--merge', 'ob', '-b', '~other.qcow2', '@', 'x'], ['--merge', 'ob', '-b', '~other.qcow2', '-F', 'qcow2', '@', 'old']] },
    { name: 'several operations in one command', base: 'data.qcow2', commands: [['--add', '--merge', 'old', '--disable', '--clear', '--enable', '@', 'all'], ['--remove', '--add', '-g', '1k', '@', 'old']] },
    { name: 'multi-cluster bitmap data in 512-byte clusters', base: 'small.qcow2', commands: [['--add', '-g', '1k', '--merge', 'fine', '@', 'copy'], ['--remove', '@', 'fine']] },
    {
      name: 'failures stop the command, what came before stays',
      base: 'data.qcow2',
      commands: [
        ['--add', '--add', '@', 'dup'],
        ['--remove', '--remove', '@', 'dup'],
        ['--add', '-g', '100', '@', 'g'],
        ['--add', '-g', '256', '@', 'g'],
        ['--add', '-g', '4G', '@', 'g'],
        ['--add', '-g', '3k', '@', 'g'],
        ['--add', '@', ''],
        ['--clear', '@', 'nope'],
        ['--enable', '@', 'nope'],
        ['--disable', '@', 'nope'],
        ['--remove', '@', 'nope'],
        ['--merge', 'nope', '@', 'old'],
        ['--merge', 'old', '@', 'nope'],
        ['--merge', 'ob', '-b', '~other4.qcow2', '@', 'old'],
        ['--merge', 'ob', '-b', '~r.raw', '-F', 'raw', '@', 'old'],
        ['--add', '-g', '4294967296', '@', 'g'],
        ['--add', '-g', '2G', '@', 'huge'],
      ],
    },
    {
      name: 'an inconsistent bitmap: clear and merge refused, remove and add work',
      base: 'inuse.qcow2',
      commands: [['--clear', '@', 'old'], ['--merge', 'off', '@', 'old'], ['--enable', '--disable', '@', 'old'], ['--merge', 'old', '@', 'off'], ['--remove', '@', 'old'], ['--add', '@', 'old']],
    },
  ];
  for (const c of sequences) it(c.name, () => sameSequence(c.base, c.commands));

  it('refuses what qemu-img refuses before opening anything', () => {
    copyFileSync(p('empty.qcow2'), p('u.qcow2'));
    const before = readFileSync(p('u.qcow2'));
    for (const args of [
      [p('u.qcow2'), 'b'],
      ['-g', '1k', '--remove', p('u.qcow2'), 'b'],
      ['-F', 'raw', '--merge', 'x', p('u.qcow2'), 'b'],
      ['-b', p('r.raw'), '--remove', p('u.qcow2'), 'b'],
      ['--add', p('u.qcow2')],
      ['--add', p('u.qcow2'), 'b', 'c'],
      ['--add', '-g', '-5', p('u.qcow2'), 'b'],
      ['--add', '-g', '1x', p('u.qcow2'), 'b'],
      ['--merge'],
      ['--bogus', p('u.qcow2'), 'b'],
    ]) {
      const q = qemuImg(['bitmap', ...args]);
      const t = tsimg(['bitmap', ...args]);
      expect({ args, status: t.status, stderr: normal(t.stderr) }).toEqual({ args, status: q.status, stderr: normal(q.stderr) });
    }
    expect(readFileSync(p('u.qcow2')).equals(before)).toBe(true);
  });

  it('--image-opts, -f, --object, and files that cannot be opened', () => {
    for (const args of [
      ['--image-opts', '--add', 'driver=qcow2,file.filename=@', 'x'],
      ['--image-opts', '-f', 'qcow2', '--add', 'driver=qcow2,file.filename=@', 'y'],
      ['--object', 'secret,id=s0,data=x', '--add', '-f', 'qcow2', '@', 'z'],
      ['--add', '-f', 'raw', '@', 'w'],
      ['--image-opts', '--add', 'driver=raw,file.filename=@', 'w'],
      ['--add', '~nonexistent.qcow2', 'w'],
      ['--merge', 'a', '-b', '~nonexistent.qcow2', '@', 'x'],
      ['--merge', 'x', '-b', '@', '-F', 'raw', '@', 'x'],
    ]) {
      sameSequence('empty.qcow2', [args]);
    }
  });

  it('an encrypted qcow2: --object secret gives the key secret --image-opts names, as qemu-img', () => {
    img('create', '-q', '-f', 'qcow2', '--object', 'secret,id=s0,data=pw', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', p('enc.qcow2'), '4M');
    const secret = ['--object', 'secret,id=s0,data=pw'];
    const opts = ['--image-opts', 'driver=qcow2,file.filename=@,encrypt.key-secret=s0'];
    sameSequence('enc.qcow2', [
      [...secret, ...opts, '--add', 'b0'],
      [...secret, ...opts, '--add', '-g', '4k', '--disable', 'b1'],
      [...secret, ...opts, '--clear', '--enable', 'b1'],
      // without the secret, or without naming it, the image cannot be opened
      [...opts, '--remove', 'b0'],
      [...secret, '--image-opts', 'driver=qcow2,file.filename=@', '--remove', 'b0'],
      // a merge source given with -b is opened without key secrets (img_open of a file name)
      [...secret, ...opts, '--merge', 'b1', '-b', '~enc.qcow2', 'b0'],
      [...secret, ...opts, '--merge', 'b1', 'b0'],
      [...secret, ...opts, '--remove', 'b1'],
    ], (file) => [...secret, ...opts.map((a) => a.replace('@', file))]);
  });

  it('raw and v2 images: no persistent bitmaps', () => {
    for (const [file, fmt] of [['r.raw', 'raw'], ['r.raw', undefined], ['v2.qcow2', 'qcow2']] as const) {
      for (const op of [['--add'], ['--remove'], ['--clear'], ['--merge', 'x']]) {
        const args = [...op, ...(fmt ? ['-f', fmt] : []), p(file), 'b'];
        const q = qemuImg(['bitmap', ...args]);
        const t = tsimg(['bitmap', ...args]);
        expect({ args, status: t.status, stderr: normal(t.stderr) }).toEqual({ args, status: q.status, stderr: normal(q.stderr) });
      }
    }
  });

  it('takes the write lock: an image another process writes is refused, as by qemu-img', async () => {
    // (no bitmaps: the holder's own open would mark them in use while the test looks)
    copyFileSync(p('empty.qcow2'), p('locked.qcow2'));
    // Ready once its locks show in /proc/locks: probing with qemu-img info could make it fail.
    const holder = await holdWithQemuIo([], p('locked.qcow2'));
    try {
      expect(qemuImg(['info', p('locked.qcow2')]).stderr).toMatch(/lock/);
      const before = readFileSync(p('locked.qcow2'));
      for (const args of [['--add', p('locked.qcow2'), 'b'], ['--merge', 'old', '-b', p('locked.qcow2'), p('other.qcow2'), 'x']]) {
        const q = qemuImg(['bitmap', ...args]);
        const t = tsimg(['bitmap', ...args]);
        expect(q.stderr).toMatch(/lock/);
        expect({ args, status: t.status, stderr: normal(t.stderr) }).toEqual({ args, status: q.status, stderr: normal(q.stderr) });
      }
      expect(readFileSync(p('locked.qcow2')).equals(before)).toBe(true);
    } finally {
      await killAndWait(holder);
    }
  });

  // ---- bitmaps kept on write ------------------------------------------------------------

  /** A fresh image with enabled bitmaps of three granularities and a disabled one, and data. */
  function tracked(name: string): string {
    img('create', '-q', '-f', 'qcow2', p(name), '8M');
    io('-c', 'write -P 1 0 64k', p(name));
    img('bitmap', '--add', '-g', '4k', p(name), 'a');
    img('bitmap', '--add', '-g', '512', '--disable', p(name), 'off');
    img('bitmap', '--add', '-g', '128k', p(name), 'c');
    io('-c', 'write -P 2 6M 1k', p(name));
    return p(name);
  }

  /** The file's bytes with the first snapshot's date (the only field that differs run to run) zeroed. */
  function undated(file: string): Buffer {
    const b = readFileSync(file);
    const table = Number(b.readBigUInt64BE(64));
    if (b.readUInt32BE(60) > 0) b.fill(0, table + 16, table + 24);
    return b;
  }

  function expectSameImages(q: string, t: string): void {
    expect(bitmapContent(t)).toEqual(bitmapContent(q));
    // (disk size is the host's allocation, which copies and hole punching change; the bytes
    // are compared below)
    const info = (f: string): string =>
      img('info', f).replace(f, 'IMG').replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, 'DATE').replace(/^disk size: .*$/m, 'disk size: N').replace(/\(actual path: .*\)/, '(actual path)');
    expect(info(t)).toBe(info(q));
    const check = (f: string): { status: number; out: string } => {
      const r = qemuImg(['check', f]);
      return { status: r.status, out: (r.stdout + r.stderr).replaceAll(f, 'IMG') };
    };
    expect(check(t)).toEqual(check(q));
    expect(undated(t).equals(undated(q)), 'files byte-identical').toBe(true);
  }

  it('library writes, zero writes and discards set the bits of the enabled bitmaps, as qemu-io', async () => {
    tracked('w.qcow2');
    copyFileSync(p('w.qcow2'), p('wq.qcow2'));
    copyFileSync(p('w.qcow2'), p('wt.qcow2'));
    io('-c', 'write -P 7 1000 5000', '-c', 'write -z 2M 70k', '-c', 'discard 4M 64k', '-c', 'write -P 7 8388096 512', p('wq.qcow2'));
    const image = await openImage(p('wt.qcow2'), { format: 'qcow2', readOnly: false });
    await image.write(1000, new Uint8Array(5000).fill(7));
    await image.writeZeroes(2 << 20, 70 << 10, {});
    await image.discard(4 << 20, 64 << 10);
    await image.write(8388096, new Uint8Array(512).fill(7));
    await image.close();
    expectSameImages(p('wq.qcow2'), p('wt.qcow2'));
    // the enabled bitmaps saw the writes, the disabled one did not
    const bits = bitmapContent(p('wt.qcow2'));
    expect(bits.find((b) => b.name === 'a')!.dirty).toContainEqual([0, 2]);
    expect(bits.find((b) => b.name === 'off')!.dirty).toEqual([]);
    expect(bits.find((b) => b.name === 'c')!.dirty).toEqual([[0, 1], [16, 17], [32, 33], [48, 49], [63, 64]]);
  });

  it('a read/write open that writes nothing still marks and stores the bitmaps, as qemu', async () => {
    tracked('n.qcow2');
    copyFileSync(p('n.qcow2'), p('nq.qcow2'));
    copyFileSync(p('n.qcow2'), p('nt.qcow2'));
    io('-c', 'sleep 0', p('nq.qcow2'));
    await (await openImage(p('nt.qcow2'), { format: 'qcow2', readOnly: false })).close();
    expectSameImages(p('nq.qcow2'), p('nt.qcow2'));
  });

  it('while open, the bitmaps are in use on disk', async () => {
    tracked('o.qcow2');
    const image = await openImage(p('o.qcow2'), { format: 'qcow2', readOnly: false });
    try {
      expect(bitmapContent(p('o.qcow2')).map((b) => b.flags & 1)).toEqual([1, 1, 1]);
    } finally {
      await image.close();
    }
    expect(bitmapContent(p('o.qcow2')).map((b) => b.flags & 1)).toEqual([0, 0, 0]);
  });

  it('convert -n into an image with bitmaps', () => {
    tracked('cn.qcow2');
    img('create', '-q', '-f', 'qcow2', p('src.qcow2'), '8M');
    io('-c', 'write -P 9 1M 200k', '-c', 'write -z 5M 64k', p('src.qcow2'));
    copyFileSync(p('cn.qcow2'), p('cnq.qcow2'));
    copyFileSync(p('cn.qcow2'), p('cnt.qcow2'));
    img('convert', '-n', '-O', 'qcow2', p('src.qcow2'), p('cnq.qcow2'));
    sh(tsimg(['convert', '-n', '-O', 'qcow2', p('src.qcow2'), p('cnt.qcow2')]), 'tsimg convert -n');
    expectSameImages(p('cnq.qcow2'), p('cnt.qcow2'));
    // with --bitmaps too: the copies join the target's own bitmaps, stored together at the close
    copyFileSync(p('cn.qcow2'), p('cnbq.qcow2'));
    copyFileSync(p('cn.qcow2'), p('cnbt.qcow2'));
    img('convert', '-n', '--bitmaps', '-O', 'qcow2', p('other.qcow2'), p('cnbq.qcow2'));
    sh(tsimg(['convert', '-n', '--bitmaps', '-O', 'qcow2', p('other.qcow2'), p('cnbt.qcow2')]), 'tsimg convert -n --bitmaps');
    expectSameImages(p('cnbq.qcow2'), p('cnbt.qcow2'));
    // qemu-img convert --bitmaps copies the kept bitmaps out again
    img('convert', '--bitmaps', '-O', 'qcow2', p('cnt.qcow2'), p('cnt-copy.qcow2'));
    expect(bitmapContent(p('cnt-copy.qcow2'))).toEqual(bitmapContent(p('cnt.qcow2')));
  });

  it('resize, snapshot -c/-d and check -r keep the bitmaps as qemu-img does', () => {
    tracked('rs.qcow2');
    // (check -r only without snapshots: qemu-img 7.2's check -r of an image with persistent
    // bitmaps and internal snapshots drops the snapshots — its header update at the open writes
    // no snapshot table — which tsimg does not copy)
    for (const args of [['resize', '@', '+1M'], ['check', '-r', 'leaks', '@'], ['snapshot', '-c', 's1', '@'], ['resize', '--shrink', '@', '6M'], ['snapshot', '-d', 's1', '@'], ['check', '-r', 'all', '@']]) {
      copyFileSync(p('rs.qcow2'), p('rsq.qcow2'));
      copyFileSync(p('rs.qcow2'), p('rst.qcow2'));
      const q = qemuImg(args.map((a) => a.replace('@', p('rsq.qcow2'))));
      const t = tsimg(args.map((a) => a.replace('@', p('rst.qcow2'))));
      expect({ args, status: t.status }).toEqual({ args, status: q.status });
      expectSameImages(p('rsq.qcow2'), p('rst.qcow2'));
      copyFileSync(p('rst.qcow2'), p('rs.qcow2'));
    }
  });

  it('rebase (safe, flatten, -u) keeps the bitmaps as qemu-img does; commit keeps the same bits', () => {
    tracked('cb.qcow2');
    img('create', '-q', '-f', 'qcow2', '-b', 'cb.qcow2', '-F', 'qcow2', p('ct.qcow2'));
    img('bitmap', '--add', '-g', '512', p('ct.qcow2'), 'tb');
    // (whole clusters: the order tsimg commit copies a cluster that starts inside an earlier
    // request in is not yet qemu's, with or without bitmaps)
    io('-c', 'write -P 2 128k 256k', '-c', 'write -P 3 3M 64k', '-c', 'write -P 4 5M 1k', p('ct.qcow2'));
    img('create', '-q', '-f', 'qcow2', p('nb.qcow2'), '8M');
    // (commit: the same bits in both images, a clean check, but not yet the same file — with
    // bitmaps in the base, tsimg commit places the copied clusters elsewhere than qemu)
    const cases = [['commit', 'ct.qcow2'], ['commit', '-d', 'ct.qcow2'], ['rebase', '-b', 'nb.qcow2', '-F', 'qcow2', 'ct.qcow2'], ['rebase', '-u', '-b', 'nb.qcow2', '-F', 'qcow2', 'ct.qcow2'], ['rebase', '-b', '', 'ct.qcow2']];
    for (const args of cases) {
      // the chain names its files relative to the directory: each tool runs in a copy of its own
      for (const side of ['q', 't']) {
        mkdirSync(p(side), { recursive: true });
        for (const f of ['cb.qcow2', 'ct.qcow2', 'nb.qcow2']) copyFileSync(p(f), p(`${side}/${f}`));
      }
      const q = qemuImg(args, { cwd: p('q') });
      const t = tsimg(args, { cwd: p('t') });
      expect({ args, status: t.status, stderr: t.stderr }).toEqual({ args, status: q.status, stderr: asTsimg(q.stderr) });
      for (const f of ['cb.qcow2', 'ct.qcow2']) {
        if (args[0] === 'rebase') expectSameImages(p(`q/${f}`), p(`t/${f}`));
        else {
          expect(bitmapContent(p(`t/${f}`))).toEqual(bitmapContent(p(`q/${f}`)));
          expect(qemuImg(['check', p(`t/${f}`)]).status).toBe(0);
        }
      }
    }
  });

  it('an inconsistent bitmap stays in use through writes and check -r, the others are kept', async () => {
    tracked('iu.qcow2');
    qemuIo(['-c', 'sigraise 9', p('iu.qcow2')]);
    img('bitmap', '--add', p('iu.qcow2'), 'fresh');
    copyFileSync(p('iu.qcow2'), p('iuq.qcow2'));
    copyFileSync(p('iu.qcow2'), p('iut.qcow2'));
    io('-c', 'write -P 7 1M 4k', p('iuq.qcow2'));
    img('check', '-r', 'all', p('iuq.qcow2'));
    const image = await openImage(p('iut.qcow2'), { format: 'qcow2', readOnly: false });
    await image.write(1 << 20, new Uint8Array(4096).fill(7));
    await image.close();
    sh(tsimg(['check', '-r', 'all', p('iut.qcow2')]), 'tsimg check -r all');
    expectSameImages(p('iuq.qcow2'), p('iut.qcow2'));
    expect(bitmapContent(p('iut.qcow2')).map((b) => [b.name, b.flags & 1])).toEqual([['a', 1], ['off', 1], ['c', 1], ['fresh', 0]]);
  });

  it('an image whose bitmaps are stale (autoclear bit clear) is written without them', async () => {
    tracked('st.qcow2');
    const bytes = readFileSync(p('st.qcow2'));
    bytes[95] = bytes[95]! & ~1;
    writeFileSync(p('st.qcow2'), bytes);
    copyFileSync(p('st.qcow2'), p('stq.qcow2'));
    io('-c', 'write -P 7 0 4k', p('stq.qcow2'));
    const image = await openImage(p('st.qcow2'), { format: 'qcow2', readOnly: false });
    await image.write(0, new Uint8Array(4096).fill(7));
    await image.close();
    expectSameImages(p('stq.qcow2'), p('st.qcow2'));
  });
});
