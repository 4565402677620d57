/** openImage: format probing, backing chains, snapshots, and qemu's refusals with its wording. */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { openSync, writeSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImage, RawImage, resolveRelative } from '@tsimg/image';
import { Qcow2Image } from '@tsimg/qcow2';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';

function poke(file: string, offset: number, bytes: number[]): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, Buffer.from(bytes), 0, bytes.length, offset);
  closeSync(fd);
}

/** qemu-img's message for opening `file` (what follows "qemu-img: "). */
function qemuOpenError(file: string, args: string[] = []): string {
  const r = qemuImg(['info', ...args, file]);
  expect(r.status).not.toBe(0);
  return r.stderr.trim().replace(/^qemu-img: /, '');
}

it('resolves names like qemu path_combine', () => {
  expect(resolveRelative('a.qcow2', 'b.qcow2')).toBe('b.qcow2');
  expect(resolveRelative('dir/a.qcow2', 'b.qcow2')).toBe('dir/b.qcow2');
  expect(resolveRelative('/x/y/a.qcow2', '../b.qcow2')).toBe('/x/y/../b.qcow2');
  expect(resolveRelative('/x/a.qcow2', '/abs/b')).toBe('/abs/b');
});

describeQemu('openImage', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-open-'));
  });
  afterAll(() => cleanup());

  it('probes qcow2 and raw, and honours an explicit format', async () => {
    const q = join(dir, 'p.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', q, '1M']);
    const r = join(dir, 'p.raw');
    writeFileSync(r, new Uint8Array(100001).fill(1));
    const a = await openImage(q);
    expect(a).toBeInstanceOf(Qcow2Image);
    expect(a.format).toBe('qcow2');
    expect((a as Qcow2Image).clusterSize).toBe(65536);
    await a.close();
    const b = await openImage(r);
    expect(b).toBeInstanceOf(RawImage);
    expect(b.size()).toBe(100352); // qemu counts raw images in whole sectors
    await b.close();
    const c = await openImage(q, { format: 'raw' });
    expect(c.format).toBe('raw');
    await c.close();
  });

  it('words file errors like qemu', async () => {
    const missing = join(dir, 'nothere');
    await expect(openImage(missing)).rejects.toThrow(qemuOpenError(missing));
  });

  it('opens backing chains relative to the image, detects loops, reports missing backing files', async () => {
    const sub = join(dir, 'chain');
    qemuImg(['create', '-q', '-f', 'raw', join(dir, 'chain-base.raw'), '1M']);
    qemuIo(['-f', 'raw', '-c', 'write -P 9 0 1M', join(dir, 'chain-base.raw')]);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'chain-base.raw', '-F', 'raw', join(dir, 'chain-mid.qcow2')]);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'chain-mid.qcow2', '-F', 'qcow2', join(dir, 'chain-top.qcow2')]);
    const top = (await openImage(join(dir, 'chain-top.qcow2'))) as Qcow2Image;
    expect(top.backingFile).toBe('chain-mid.qcow2');
    expect(top.backingFormat).toBe('qcow2');
    expect(top.backing?.filename).toBe(join(dir, 'chain-mid.qcow2'));
    expect(top.backing?.backing?.format).toBe('raw');
    const buf = new Uint8Array(4);
    await top.read(1000, buf);
    expect([...buf]).toEqual([9, 9, 9, 9]);
    await top.close();
    void sub;

    const dangling = join(dir, 'dangling.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'nonexist.qcow2', '-F', 'qcow2', '-u', dangling, '1M']);
    const io = qemuIo(['-c', 'read 0 512', dangling]);
    const want = io.stderr.trim().replace(`qemu-io: can't open device ${dangling}: `, '');
    await expect(openImage(dangling)).rejects.toThrow(`Could not open '${dangling}': ${want}`);
    const noBacking = await openImage(dangling, { backing: false });
    await noBacking.close();

    const a1 = join(dir, 'loop1.qcow2');
    const a2 = join(dir, 'loop2.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', a1, '1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'loop1.qcow2', '-F', 'qcow2', a2]);
    qemuImg(['rebase', '-u', '-b', 'loop2.qcow2', '-F', 'qcow2', a1]);
    await expect(openImage(a2)).rejects.toThrow(/creates an infinite loop/);
  });

  it('refuses unknown incompatible features, corrupt images for writing, and encryption', async () => {
    const f = join(dir, 'feat.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '1M']);
    poke(f, 79, [0x20 | 0x00]); // incompatible bit 5
    await expect(openImage(f)).rejects.toThrow(qemuOpenError(f));

    const c = join(dir, 'corrupt.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', c, '1M']);
    poke(c, 79, [0x02]);
    const ro = await openImage(c);
    await ro.close();
    await expect(openImage(c, { readOnly: false })).rejects.toThrow('qcow2: Image is corrupt; cannot be opened read/write');

    const e = join(dir, 'enc.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', e, '1M']);
    poke(e, 35, [1]); // crypt_method = AES
    // qemu without the key (tsimg takes none) fails in the crypto layer's words
    await expect(openImage(e)).rejects.toThrow("Parameter 'encrypt.key-secret' is required for cipher");
  });

  it('reads internal snapshots like qemu-img convert -l', async () => {
    const f = join(dir, 'snap.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '2M']);
    qemuIo(['-c', 'write -P 1 0 1M', f]);
    qemuImg(['snapshot', '-c', 'first', f]);
    qemuIo(['-c', 'write -P 2 512k 1M', f]);
    qemuImg(['snapshot', '-c', 'second', f]);
    qemuIo(['-c', 'write -z 0 2M', f]);
    for (const [sel, arg] of [
      [{ name: 'first' }, 'snapshot.name=first'],
      [{ id: '2' }, 'snapshot.id=2'],
      ['second', 'second'],
    ] as const) {
      const out = join(dir, 'snap.raw');
      expect(qemuImg(['convert', '-O', 'raw', '-l', arg, f, out]).status).toBe(0);
      const img = await openImage(f, { snapshot: sel });
      const got = new Uint8Array(img.size());
      await img.read(0, got);
      await img.close();
      expect(Buffer.from(got).equals(readFileSync(out))).toBe(true);
    }
    const missing = qemuImg(['convert', '-O', 'raw', '-l', 'snapshot.name=nope', f, join(dir, 'x.raw')]);
    await expect(openImage(f, { snapshot: { name: 'nope' } })).rejects.toThrow(missing.stderr.trim().replace(/^qemu-img: /, ''));
    await expect(openImage(f, { snapshot: 'first', readOnly: false })).rejects.toThrow(/not readonly/);
  });
});
