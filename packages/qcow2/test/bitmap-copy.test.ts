/**
 * Tests of bitmap-copy.ts (`convert --bitmaps` in the library): the bitmaps tsimg stores in a
 * target are read back with an independent decoder of the file (test-images/bitmap-dump.ts) and by qemu-img, and
 * compared with the source's.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImage } from '@tsimg/image';
import { copyPersistentBitmaps, type Qcow2Image } from '@tsimg/qcow2';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';
import { dumpBitmaps } from '../../../test-images/bitmap-dump.js';

/** What must survive a copy: everything but where the tables are. */
function content(b: DumpedBitmap[]): Omit<DumpedBitmap, 'tableOffset' | 'table'>[] {
  return b.map(({ tableOffset: _o, table: _t, ...rest }) => rest);
}

function sh(cmd: 'qemu-img' | 'qemu-io', ...args: string[]): string {
  const r = cmd === 'qemu-img' ? qemuImg(args) : qemuIo(args);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function open(path: string, readOnly: boolean): Promise<Qcow2Image> {
  return (await openImage(path, { readOnly })) as Qcow2Image;
}

/** Copies the bitmaps of `src` into the existing qcow2 `dst` through the library. */
async function copyInto(src: string, dst: string): Promise<void> {
  const s = await open(src, true);
  const d = await open(dst, false);
  try {
    await copyPersistentBitmaps(s, d);
  } finally {
    await d.close();
    await s.close();
  }
}

function infoBitmaps(path: string): unknown {
  return JSON.parse(sh('qemu-img', 'info', '--output=json', path))['format-specific'].data.bitmaps;
}

function checkClean(path: string): void {
  const r = qemuImg(['check', path]);
  expect(r.stdout + r.stderr).toContain('No errors were found on the image.');
  expect(r.stdout + r.stderr).not.toContain('leaked');
  expect(r.status).toBe(0);
}

describeQemu('persistent bitmap copy (library)', () => {
  let dir: string;
  let cleanup: () => void;
  const p = (name: string): string => join(dir, name);

  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-bmcopy-'));
    // three bitmaps: default granularity, 4k, and a disabled one; two dirty areas
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', p('src.qcow2'), '64M');
    sh('qemu-img', 'bitmap', '--add', p('src.qcow2'), 'b0');
    sh('qemu-img', 'bitmap', '--add', '-g', '4k', p('src.qcow2'), 'b1');
    sh('qemu-img', 'bitmap', '--add', '--disable', p('src.qcow2'), 'b2');
    sh('qemu-io', '-c', 'write 0 64k', '-c', 'write 10M 1M', '-c', 'write 33k 1k', p('src.qcow2'));
    // a bitmap over several clusters of bitmap data (512-byte granules on 1 GiB: 4 clusters),
    // dirty only in the first and the last
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', p('big.qcow2'), '1G');
    sh('qemu-img', 'bitmap', '--add', '-g', '512', p('big.qcow2'), 'fine');
    sh('qemu-io', '-c', 'write -z 0 4k', '-c', 'write -z 1000M 64k', '-c', 'write -z 1073741312 512', p('big.qcow2'));
  });
  afterAll(() => cleanup());

  it('lists bitmaps in qemu order (reverse directory) with their consistency', async () => {
    const img = await open(p('src.qcow2'), true);
    expect(await img.listBitmaps()).toEqual([
      { name: 'b2', granularity: 65536, inconsistent: false },
      { name: 'b1', granularity: 4096, inconsistent: false },
      { name: 'b0', granularity: 65536, inconsistent: false },
    ]);
    await img.close();
    copyFileSync(p('src.qcow2'), p('inuse.qcow2'));
    // qemu-io marks the bitmaps in use when it opens the image; dying leaves them so
    qemuIo(['-c', 'sigraise 9', p('inuse.qcow2')]);
    const bad = await open(p('inuse.qcow2'), true);
    expect((await bad.listBitmaps())?.map((b) => b.inconsistent)).toEqual([true, true, true]);
    await bad.close();
  });

  it('has no bitmaps list for a v2 source, and ignores bitmaps whose autoclear bit is gone', async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', p('v2.qcow2'), '1M');
    const v2 = await open(p('v2.qcow2'), true);
    expect(await v2.listBitmaps()).toBeUndefined();
    await v2.close();
    copyFileSync(p('src.qcow2'), p('stale.qcow2'));
    const bytes = readFileSync(p('stale.qcow2'));
    bytes[95] = bytes[95]! & ~1; // autoclear bit 0 (bitmaps)
    writeFileSync(p('stale.qcow2'), bytes);
    const stale = await open(p('stale.qcow2'), true);
    expect(await stale.listBitmaps()).toEqual([]);
    await stale.close();
  });

  it('copies name, granularity, the auto flag and every dirty bit', async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', p('dst.qcow2'), '64M');
    await copyInto(p('src.qcow2'), p('dst.qcow2'));
    const src = dumpBitmaps(p('src.qcow2'));
    expect(content(src).map((b) => [b.name, b.flags, b.granularityBits])).toEqual([
      ['b0', 2, 16],
      ['b1', 2, 12],
      ['b2', 0, 16],
    ]);
    expect(src[0]!.dirty).toEqual([[0, 1], [160, 176]]);
    expect(content(dumpBitmaps(p('dst.qcow2')))).toEqual(content(src));
    expect(infoBitmaps(p('dst.qcow2'))).toEqual(infoBitmaps(p('src.qcow2')));
    checkClean(p('dst.qcow2'));
  });

  it('writes only the clusters of bitmap data that hold dirty bits', async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', p('bigdst.qcow2'), '1G');
    await copyInto(p('big.qcow2'), p('bigdst.qcow2'));
    const [bm] = dumpBitmaps(p('bigdst.qcow2'));
    expect(bm!.table.length).toBe(4);
    expect(bm!.table.map((e) => e !== 0n)).toEqual([true, false, false, true]);
    expect(bm!.dirty).toEqual([
      [0, 8],
      [2048000, 2048128],
      [2097151, 2097152],
    ]);
    expect(content(dumpBitmaps(p('bigdst.qcow2')))).toEqual(content(dumpBitmaps(p('big.qcow2'))));
    checkClean(p('bigdst.qcow2'));
    // with 4 KiB clusters in the target the same bits take 32 clusters of bitmap data
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', p('bigsmall.qcow2'), '1G');
    await copyInto(p('big.qcow2'), p('bigsmall.qcow2'));
    const [small] = dumpBitmaps(p('bigsmall.qcow2'));
    expect(small!.table.length).toBe(64);
    expect(small!.table.filter((e) => e !== 0n).length).toBe(3);
    expect(small!.dirty).toEqual(bm!.dirty);
    checkClean(p('bigsmall.qcow2'));
  });

  it('expands an all-ones table entry of the source into data', async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', p('ones.qcow2'), '64M');
    sh('qemu-img', 'bitmap', '--add', p('ones.qcow2'), 'full');
    const [full] = dumpBitmaps(p('ones.qcow2'));
    expect(full!.table).toEqual([0n]);
    const bytes = readFileSync(p('ones.qcow2'));
    bytes.writeBigUInt64BE(1n, full!.tableOffset);
    writeFileSync(p('ones.qcow2'), bytes);
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', p('onesdst.qcow2'), '64M');
    await copyInto(p('ones.qcow2'), p('onesdst.qcow2'));
    const [copy] = dumpBitmaps(p('onesdst.qcow2'));
    expect(copy!.dirty).toEqual([[0, 1024]]);
    expect(copy!.table[0]).not.toBe(0n);
    // bits past the disk's end stay clear in the stored cluster (1024 bits = 128 bytes)
    const data = readFileSync(p('onesdst.qcow2')).subarray(Number(copy!.table[0]!), Number(copy!.table[0]!) + 256);
    expect([...data.subarray(0, 128)].every((b) => b === 0xff)).toBe(true);
    expect([...data.subarray(128)].every((b) => b === 0)).toBe(true);
    checkClean(p('onesdst.qcow2'));
  });

  it("keeps the target's own valid bitmaps before the copies and frees the old directory", async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', p('has.qcow2'), '64M');
    sh('qemu-img', 'bitmap', '--add', '-g', '128k', p('has.qcow2'), 'mine');
    await copyInto(p('src.qcow2'), p('has.qcow2'));
    expect(dumpBitmaps(p('has.qcow2')).map((b) => b.name)).toEqual(['mine', 'b0', 'b1', 'b2']);
    checkClean(p('has.qcow2'));
  });

  it("stops at a name the target has (qemu's message), storing the bitmaps added before it", async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', p('clash.qcow2'), '64M');
    sh('qemu-img', 'bitmap', '--add', p('clash.qcow2'), 'b1');
    await expect(copyInto(p('src.qcow2'), p('clash.qcow2'))).rejects.toThrow('Failed to create bitmap b1: Bitmap already exists: b1');
    // qemu adds b2 first (its list runs backwards), then fails on b1
    expect(dumpBitmaps(p('clash.qcow2')).map((b) => b.name)).toEqual(['b1', 'b2']);
    checkClean(p('clash.qcow2'));
  });

  it('refuses a target of another size, and a v2 target', async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', p('other.qcow2'), '32M');
    await expect(copyInto(p('src.qcow2'), p('other.qcow2'))).rejects.toThrow(
      "Failed to populate bitmap b2: Bitmaps are of different sizes (destination size is 33554432, source size is 67108864) and can't be merged",
    );
    expect(dumpBitmaps(p('other.qcow2'))).toEqual([]);
    checkClean(p('other.qcow2'));
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', p('v2dst.qcow2'), '64M');
    await expect(copyInto(p('src.qcow2'), p('v2dst.qcow2'))).rejects.toThrow("Format driver 'qcow2' does not support bitmaps");
  });

  it('engine: updateBitmapsExtension(undefined) drops the extension and the autoclear bit', async () => {
    copyFileSync(p('src.qcow2'), p('drop.qcow2'));
    const img = await open(p('drop.qcow2'), false);
    await img.updateBitmapsExtension(undefined);
    await img.close();
    expect(infoBitmaps(p('drop.qcow2'))).toBeUndefined();
    expect(readFileSync(p('drop.qcow2'))[95]! & 1).toBe(0);
    // the directory, tables and data are left behind, as qemu leaves them
    expect(qemuImg(['check', p('drop.qcow2')]).stdout).toContain('leaked clusters were found');
  });

  it('stores nothing when every bitmap of the source is inconsistent', async () => {
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', p('none.qcow2'), '64M');
    const before = readFileSync(p('none.qcow2'));
    await copyInto(p('inuse.qcow2'), p('none.qcow2'));
    expect(readFileSync(p('none.qcow2')).equals(before)).toBe(true);
  });
});
