/**
 * Encryption through `tsimg` against qemu-img / qemu-io (QEMU 7.2): LUKS qcow2 and raw LUKS
 * images made by either tool and read, written, checked, mapped, compared, converted and
 * amended by the other; `--object secret` forms and the messages for missing or wrong secrets;
 * the legacy AES method. Images use a small iter-time. Needs `npm run build` first.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createCipheriv, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeQemu, expectSameAsQemu, pokeFile, qemuAsTsimg, qemuImg, qemuIo, run, shIn, tempDir, tsimg } from '../../../test-images/qemu.js';

let dir = '';
let cleanup = (): void => {};
const sh = (cmd: string, ...args: string[]): void => shIn(dir, cmd, ...args);

/** qemu-img create of an encrypted image (qemuImg retries qemu's calibration failure). */
function qemuCreate(...args: string[]): void {
  const r = qemuImg(['create', '-q', ...args], { cwd: dir });
  if (r.status !== 0) throw new Error(`qemu-img create failed: ${r.stderr}`);
}
const SEC = ['--object', 'secret,id=sec0,data=abc'];
const qcow2Opts = (file: string, secret = 'sec0') => `driver=qcow2,file.filename=${file},encrypt.key-secret=${secret}`;
const luksOpts = (file: string, secret = 'sec0') => `driver=luks,key-secret=${secret},file.filename=${file}`;
/** The same options as a json: name, for commands whose other image is a plain file. */
const qcow2Json = (file: string) => `json:{"driver":"qcow2","encrypt.key-secret":"sec0","file":{"filename":"${file}"}}`;
const luksJson = (file: string) => `json:{"driver":"luks","key-secret":"sec0","file":{"filename":"${file}"}}`;

/** qemu-io on an encrypted image: the output, failing the test on a pattern mismatch. */
function io(opts: string, ...cmds: string[]): string {
  const args = [...SEC, '--image-opts', opts];
  for (const c of cmds) args.push('-c', c);
  const r = qemuIo(args, { cwd: dir });
  expect(r.stdout + r.stderr).not.toMatch(/Pattern verification failed|can't open|error/i);
  return r.stdout;
}

/** The info lines that do not depend on random salts, uuids or calibrated iteration counts. */
function stableInfo(text: string): string {
  return text
    .replace(/uuid: \S+/g, 'uuid: U')
    .replace(/"uuid": "[^"]+"/g, '"uuid": "U"')
    .replace(/iters: \d+/g, 'iters: N')
    .replace(/"(master-key-)?iters": \d+/g, '"$1iters": N')
    .replace(/^image: .*$/m, 'image: X')
    .replace(/"filename": "[^"]+"/, '"filename": "X"')
    .replace(/disk size: .*$/m, 'disk size: D')
    .replace(/"actual-size": \d+/, '"actual-size": D');
}

describeQemu('encryption: tsimg vs qemu-img/qemu-io', () => {
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-enc-'));
    qemuCreate('-f', 'qcow2', ...SEC, '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10', 'q.qcow2', '4M');
    io(qcow2Opts('q.qcow2'), 'write -P 0x11 1000 70000', 'write -P 0x22 3M 64k');
    qemuCreate('-f', 'luks', ...SEC, '-o', 'key-secret=sec0,iter-time=10,cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv', 'q.luks', '2M');
    io(luksOpts('q.luks'), 'write -P 0x33 512 8k');
    sh('qemu-img', 'create', '-q', '-f', 'raw', 'plain.raw', '4M');
    sh('qemu-io', '-f', 'raw', '-c', 'write -P 0x44 0 1M', '-c', 'write -P 0x55 2M 4k', 'plain.raw');
  });
  afterAll(() => cleanup());

  it('tsimg create -o encrypt.format=luks: qemu-img sees the same layout and info, qemu-io reads and writes it', () => {
    const args = ['create', '-f', 'qcow2', ...SEC, '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10', 't.qcow2', '4M'];
    const r = tsimg(args, { cwd: dir });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe(
      "Formatting 't.qcow2', fmt=qcow2 encrypt.format=luks encrypt.key-secret=sec0 encrypt.iter-time=10 cluster_size=65536 extended_l2=off compression_type=zlib size=4194304 lazy_refcounts=off refcount_bits=16\n",
    );
    for (const output of ['human', 'json']) {
      const ours = run('qemu-img', ['info', `--output=${output}`, 't.qcow2'], { cwd: dir });
      const theirs = run('qemu-img', ['info', `--output=${output}`, 'q.qcow2'], { cwd: dir });
      expect(stableInfo(ours.stdout)).toBe(stableInfo(theirs.stdout));
      expect(tsimg(['info', `--output=${output}`, 't.qcow2'], { cwd: dir }).stdout).toBe(ours.stdout);
    }
    // Byte for byte up to the LUKS header (the clusters before it hold no random data).
    const a = readFileSync(join(dir, 't.qcow2'));
    qemuCreate('-f', 'qcow2', ...SEC, '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10', 'fresh.qcow2', '4M');
    const b = readFileSync(join(dir, 'fresh.qcow2'));
    expect(a.length).toBe(b.length);
    // The LUKS header starts at cluster 4; up to its salts (offset 112 in it) the bytes are qemu's.
    expect(a.subarray(0, 4 * 65536 + 112).equals(b.subarray(0, 4 * 65536 + 112))).toBe(true);
    io(qcow2Opts('t.qcow2'), 'write -P 0x66 4k 128k', 'read -P 0x66 4k 128k');
    expect(run('qemu-img', ['check', ...SEC, '--image-opts', qcow2Opts('t.qcow2')], { cwd: dir }).status).toBe(0);
  });

  it('reads what qemu wrote (convert to raw, compare, map, check) the same as qemu-img', () => {
    sh('qemu-img', 'convert', ...SEC, '--image-opts', qcow2Opts('q.qcow2'), '-O', 'raw', 'q-by-qemu.raw');
    const r = tsimg(['convert', ...SEC, '--image-opts', qcow2Opts('q.qcow2'), '-O', 'raw', 'q-by-tsimg.raw'], { cwd: dir });
    expect(r).toEqual({ stdout: '', stderr: '', status: 0 });
    expect(readFileSync(join(dir, 'q-by-tsimg.raw')).equals(readFileSync(join(dir, 'q-by-qemu.raw')))).toBe(true);
    expectSameAsQemu(['compare', ...SEC, `json:{"driver":"qcow2","encrypt.key-secret":"sec0","file":{"filename":"q.qcow2"}}`, 'q-by-qemu.raw'], dir);
    for (const output of ['human', 'json']) expectSameAsQemu(['map', ...SEC, `--output=${output}`, '--image-opts', qcow2Opts('q.qcow2')], dir);
    expectSameAsQemu(['check', ...SEC, '--image-opts', qcow2Opts('q.qcow2')], dir);
    expectSameAsQemu(['map', ...SEC, '--output=json', '--image-opts', luksOpts('q.luks')], dir);
    expectSameAsQemu(['check', ...SEC, '--image-opts', luksOpts('q.luks')], dir);
    for (const output of ['human', 'json']) {
      expectSameAsQemu(['info', `--output=${output}`, 'q.luks'], dir);
      // With the key secret among the options, qemu names the image by a json: filename.
      expectSameAsQemu(['info', `--output=${output}`, '--image-opts', luksOpts('q.luks')], dir);
      expectSameAsQemu(['info', `--output=${output}`, qcow2Json('q.qcow2')], dir);
    }
  });

  it("missing and wrong secrets get qemu's messages and statuses", () => {
    const wrong = ['--object', 'secret,id=sec0,data=abd'];
    for (const args of [
      ['convert', '-O', 'raw', 'q.qcow2', 'x.raw'],
      ['convert', ...SEC, '-O', 'raw', '--image-opts', 'driver=qcow2,file.filename=q.qcow2', 'x.raw'],
      ['convert', ...wrong, '-O', 'raw', '--image-opts', qcow2Opts('q.qcow2'), 'x.raw'],
      ['convert', ...SEC, '-O', 'raw', '--image-opts', qcow2Opts('q.qcow2', 'nosuch'), 'x.raw'],
      ['map', ...wrong, '--image-opts', luksOpts('q.luks')],
      ['map', 'q.luks'],
      ['check', 'q.qcow2'],
      ['compare', 'q.luks', 'plain.raw'],
      ['create', '-f', 'qcow2', '-o', 'encrypt.format=luks', 'y.qcow2', '1M'],
      ['create', '-f', 'qcow2', '-o', 'encrypt.format=luks,encrypt.key-secret=nosuch', 'y.qcow2', '1M'],
      ['create', '-f', 'qcow2', ...SEC, '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=foo', 'y.qcow2', '1M'],
      ['create', '-f', 'luks', 'y.luks', '1M'],
    ]) {
      expectSameAsQemu(args, dir);
    }
  });

  it('measure with LUKS targets: the header area as qemu counts it', () => {
    const obj = ['--object', 'secret,id=s,data=x'];
    for (const args of [
      ['-O', 'qcow2', '--size', '1G', ...obj, '-o', 'encrypt.format=luks,encrypt.key-secret=s'],
      ['-O', 'qcow2', '--size', '1G', ...obj, '-o', 'encrypt.format=luks,encrypt.key-secret=s,encrypt.cipher-alg=aes-128,cluster_size=4k'],
      ['-O', 'qcow2', '--size', '1G', '-o', 'encrypt.format=luks,encrypt.key-secret=s'],
      ['-O', 'qcow2', '--output=json', ...obj, '-o', 'encrypt.format=luks,encrypt.key-secret=s,encrypt.cipher-mode=cbc', 'plain.raw'],
      ['-O', 'luks', '--size', '1G', ...obj, '-o', 'key-secret=s'],
      ['-O', 'luks', '--size', '1G'],
      ['-O', 'luks', ...obj, '-o', 'key-secret=s,cipher-alg=aes-128,ivgen-alg=essiv', 'plain.raw'],
    ]) {
      // measure -O luks builds a header in memory, so qemu calibrates PBKDF2 there too (its
      // calibration failure is retried by qemuImg).
      const theirs = qemuAsTsimg(qemuImg(['measure', ...args], { cwd: dir }));
      expect(tsimg(['measure', ...args], { cwd: dir }), args.join(' ')).toEqual(theirs);
    }
  });

  it("--object secret forms and qemu's refusals", () => {
    writeFileSync(join(dir, 'pw.txt'), 'abc');
    const base64 = Buffer.from('abc').toString('base64');
    for (const obj of ['secret,id=sec0,file=pw.txt', `secret,id=sec0,data=${base64},format=base64`]) {
      expectSameAsQemu(['compare', '--object', obj, luksJson('q.luks'), 'l-by-qemu.raw'], dir);
    }
    // An encrypted secret: AES-256-CBC with the 32-byte key of secret `mk` (keyid), base64 IV.
    const key = randomBytes(32);
    const iv = randomBytes(16);
    const c = createCipheriv('aes-256-cbc', key, iv);
    const cipherText = Buffer.concat([c.update('abc'), c.final()]).toString('base64');
    const mk = ['--object', `secret,id=mk,data=${key.toString('base64')},format=base64`];
    expectSameAsQemu(['compare', ...mk, '--object', `secret,id=sec0,data=${cipherText},format=base64,keyid=mk,iv=${iv.toString('base64')}`, luksJson('q.luks'), 'l-by-qemu.raw'], dir);
    expectSameAsQemu(['compare', ...mk, '--object', `secret,id=sec0,data=${cipherText},format=base64,keyid=mk`, luksJson('q.luks'), 'l-by-qemu.raw'], dir);
    expectSameAsQemu(['compare', ...mk, '--object', `secret,id=sec0,data=${cipherText},format=base64,keyid=mk,iv=AAAA`, luksJson('q.luks'), 'l-by-qemu.raw'], dir);
    for (const obj of [
      'secret,id=s', 'secret,data=x', 'foo,id=s', 'id=s,data=x', 'secret,id=s,data=x,format=bogus', 'secret,id=s,data=!!,format=base64',
      'secret,id=s,data=x,file=pw.txt', 'secret,id=s,data=x,bogus=1', 'secret,id=1s,data=x', 'secret,id=s,file=nonexistent',
      'secret,id=s,data=x,keyid=nokey',
    ]) {
      expectSameAsQemu(['map', '--object', obj, 'plain.raw'], dir);
    }
  });

  it('raw LUKS both ways: tsimg convert -O luks read by qemu, and tsimg reading qemu-made luks', () => {
    const r = tsimg(['convert', ...SEC, '-O', 'luks', '-o', 'key-secret=sec0,iter-time=10,cipher-alg=aes-192,ivgen-alg=plain', 'plain.raw', 'p.luks'], { cwd: dir });
    expect(r).toEqual({ stdout: '', stderr: '', status: 0 });
    sh('qemu-img', 'compare', ...SEC, luksJson('p.luks'), 'plain.raw');
    expect(stableInfo(tsimg(['info', 'p.luks'], { cwd: dir }).stdout)).toBe(stableInfo(run('qemu-img', ['info', 'p.luks'], { cwd: dir }).stdout));
    sh('qemu-img', 'convert', ...SEC, '--image-opts', luksOpts('q.luks'), '-O', 'raw', 'l-by-qemu.raw');
    expect(tsimg(['convert', ...SEC, '--image-opts', luksOpts('q.luks'), '-O', 'raw', 'l-by-tsimg.raw'], { cwd: dir }).status).toBe(0);
    expect(readFileSync(join(dir, 'l-by-tsimg.raw')).equals(readFileSync(join(dir, 'l-by-qemu.raw')))).toBe(true);
  });

  it('convert raw to LUKS qcow2 (-o encrypt.*) and back, qemu-img agreeing; -n with --target-image-opts', () => {
    const o = 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.hash-alg=sha1';
    expect(tsimg(['convert', ...SEC, '-O', 'qcow2', '-o', o, 'plain.raw', 'c.qcow2'], { cwd: dir }).status).toBe(0);
    sh('qemu-img', 'compare', ...SEC, qcow2Json('c.qcow2'), 'plain.raw');
    sh('qemu-img', 'check', ...SEC, '--image-opts', qcow2Opts('c.qcow2'));
    // Preallocated and encrypted: no zero init (qcow2_has_zero_init), so zeroes are written too.
    const pre = 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,preallocation=metadata';
    expect(tsimg(['convert', ...SEC, '-O', 'qcow2', '-o', pre, 'plain.raw', 'cp.qcow2'], { cwd: dir }).status).toBe(0);
    sh('qemu-img', 'compare', ...SEC, qcow2Json('cp.qcow2'), 'plain.raw');
    expectSameAsQemu(['map', ...SEC, '--output=json', '--image-opts', qcow2Opts('c.qcow2')], dir);
    qemuCreate('-f', 'qcow2', ...SEC, '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10', 'n.qcow2', '4M');
    const n = tsimg(['convert', ...SEC, '-n', '--target-image-opts', 'plain.raw', qcow2Opts('n.qcow2')], { cwd: dir });
    expect(n).toEqual({ stdout: '', stderr: '', status: 0 });
    sh('qemu-img', 'compare', ...SEC, qcow2Json('n.qcow2'), 'plain.raw');
  });

  it("amend key slots: the same results as qemu-img step by step, and qemu reads what tsimg changed", () => {
    sh('mkdir', 'qa', 'ta');
    sh('cp', 'q.qcow2', 'qa/a.qcow2');
    sh('cp', 'q.qcow2', 'ta/a.qcow2');
    const objs = [...SEC, '--object', 'secret,id=sec1,data=def'];
    const steps: [string, string][] = [
      ['sec0', 'encrypt.keyslot=1'],
      ['sec0', 'encrypt.state=foo'],
      ['sec0', 'encrypt.state=active,encrypt.new-secret=sec1,encrypt.iter-time=10'],
      ['sec0', 'encrypt.state=active,encrypt.new-secret=sec1,encrypt.keyslot=1'],
      ['sec0', 'encrypt.state=active,encrypt.new-secret=nosuch'],
      ['sec0', 'encrypt.state=inactive,encrypt.new-secret=sec1'],
      ['sec0', 'encrypt.state=inactive'],
      ['sec0', 'encrypt.state=inactive,encrypt.old-secret=sec1,encrypt.keyslot=0'],
      ['sec0', 'encrypt.state=inactive,encrypt.keyslot=0'],
      ['sec1', 'encrypt.state=inactive,encrypt.keyslot=1'],
      ['sec1', 'encrypt.state=inactive,encrypt.old-secret=sec1'],
      ['sec1', 'encrypt.state=active,encrypt.new-secret=sec0,encrypt.keyslot=7,encrypt.iter-time=10'],
    ];
    for (const [key, o] of steps) {
      expectSameAsQemu(['amend', ...objs, '--image-opts', qcow2Opts('a.qcow2', key), '-o', o], { qemu: join(dir, 'qa'), tsimg: join(dir, 'ta') });
    }
    expect(stableInfo(tsimg(['info', 'ta/a.qcow2'], { cwd: dir }).stdout)).toBe(stableInfo(run('qemu-img', ['info', 'qa/a.qcow2'], { cwd: dir }).stdout));
    for (const key of ['sec0', 'sec1']) {
      const r = run('qemu-io', [...objs, '--image-opts', qcow2Opts('ta/a.qcow2', key), '-c', 'read -P 0x11 1000 70000'], { cwd: dir });
      expect(r.stdout).toContain('read 70000/70000 bytes');
    }
  });

  it('encrypted backing chains, commit, rebase, resize and snapshots: the same results as qemu-img', () => {
    const create = (f: string, ...more: string[]) =>
      qemuCreate('-f', 'qcow2', ...SEC, ...more, '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10', f, '4M');
    create('base.qcow2');
    io(qcow2Opts('base.qcow2'), 'write -P 0x31 0 1M');
    create('top.qcow2', '-b', 'base.qcow2', '-F', 'qcow2');
    const chain = (f: string) => `${qcow2Opts(f)},backing.encrypt.key-secret=sec0`;
    io(chain('top.qcow2'), 'write -P 0x32 512k 1M');
    sh('qemu-img', 'convert', ...SEC, '--image-opts', chain('top.qcow2'), '-O', 'raw', 'chain.raw');
    expect(tsimg(['convert', ...SEC, '--image-opts', chain('top.qcow2'), '-O', 'raw', 'chain-t.raw'], { cwd: dir }).status).toBe(0);
    expect(readFileSync(join(dir, 'chain-t.raw')).equals(readFileSync(join(dir, 'chain.raw')))).toBe(true);
    // Without the backing image's key: qemu's message, from the backing file's open.
    expectSameAsQemu(['map', ...SEC, '--image-opts', qcow2Opts('top.qcow2')], dir);
    expectSameAsQemu(['map', ...SEC, '--output=json', '--image-opts', chain('top.qcow2')], dir);
    for (const d of ['qc', 'tc']) {
      sh('mkdir', d);
      sh('cp', 'base.qcow2', 'top.qcow2', d);
    }
    const both = { qemu: join(dir, 'qc'), tsimg: join(dir, 'tc') };
    expectSameAsQemu(['resize', ...SEC, '--image-opts', qcow2Opts('top.qcow2'), '+2M'], both);
    expectSameAsQemu(['snapshot', ...SEC, '--image-opts', qcow2Opts('top.qcow2'), '-c', 's1'], both);
    expectSameAsQemu(['commit', ...SEC, '--image-opts', chain('top.qcow2')], both);
    sh('qemu-img', 'convert', ...SEC, '--image-opts', qcow2Opts('tc/base.qcow2'), '-O', 'raw', 'committed.raw');
    expect(readFileSync(join(dir, 'committed.raw')).equals(readFileSync(join(dir, 'chain.raw')))).toBe(true);
    sh('cp', 'base.qcow2', 'top.qcow2', 'tc');
    expect(tsimg(['rebase', ...SEC, '--image-opts', chain('top.qcow2'), '-b', ''], { cwd: join(dir, 'tc') }).status).toBe(0);
    sh('qemu-img', 'convert', ...SEC, '--image-opts', qcow2Opts('tc/top.qcow2'), '-O', 'raw', 'rebased.raw');
    expect(readFileSync(join(dir, 'rebased.raw')).equals(readFileSync(join(dir, 'chain.raw')))).toBe(true);
  });

  it("hostile LUKS headers: qemu's one-line refusals", () => {
    const damaged = (name: string, from: string, at: number, bytes: number[]) => {
      sh('cp', from, name);
      pokeFile(join(dir, name), at, Buffer.from(bytes));
    };
    sh('cp', 'q.luks', 'short.luks');
    sh('truncate', '-s', '400', 'short.luks');
    sh('cp', 'q.luks', 'nopayload.luks');
    sh('truncate', '-s', '100000', 'nopayload.luks');
    damaged('stripes.luks', 'q.luks', 208 + 44, [0, 0, 0, 3]);
    damaged('overlap.luks', 'q.luks', 208 + 48 + 40, [0, 0, 0, 8]);
    damaged('mode.luks', 'q.luks', 40, [0x78, 0x74, 0x73, 0]);
    // q.qcow2's LUKS header starts at cluster 4 (its crypto header extension says so).
    damaged('magic.qcow2', 'q.qcow2', 4 * 65536, [0]);
    damaged('slots.qcow2', 'q.qcow2', 4 * 65536 + 208 + 40, [0xff, 0xff, 0xff, 0xff]);
    for (const f of ['short.luks', 'nopayload.luks', 'stripes.luks', 'overlap.luks', 'mode.luks', 'magic.qcow2', 'slots.qcow2']) {
      expectSameAsQemu(['info', f], dir);
    }
    expectSameAsQemu(['map', ...SEC, luksJson('nopayload.luks')], dir);
    expectSameAsQemu(['map', ...SEC, qcow2Json('magic.qcow2')], dir);
  });

  it('legacy AES (encryption=on): tsimg creates what qemu reads and reads what qemu writes', () => {
    const args = (f: string) => ['create', '-q', '-f', 'qcow2', ...SEC, '-o', 'encryption=on,encrypt.key-secret=sec0', f, '1M'];
    expect(tsimg(args('aes-t.qcow2'), { cwd: dir }).status).toBe(0);
    sh('qemu-img', ...args('aes-q.qcow2'));
    expect(readFileSync(join(dir, 'aes-t.qcow2')).equals(readFileSync(join(dir, 'aes-q.qcow2')))).toBe(true);
    io(qcow2Opts('aes-q.qcow2'), 'write -P 0x77 512 4k');
    sh('qemu-img', 'convert', ...SEC, '--image-opts', qcow2Opts('aes-q.qcow2'), '-O', 'raw', 'aes-q.raw');
    expect(tsimg(['compare', ...SEC, qcow2Json('aes-q.qcow2'), 'aes-q.raw'], { cwd: dir }).status).toBe(0);
    expect(tsimg(['convert', ...SEC, '--image-opts', qcow2Opts('aes-q.qcow2'), '-O', 'raw', 'aes-t.raw'], { cwd: dir }).status).toBe(0);
    expect(readFileSync(join(dir, 'aes-t.raw')).equals(readFileSync(join(dir, 'aes-q.raw')))).toBe(true);
    const w = tsimg(['convert', ...SEC, '-n', '--target-image-opts', 'aes-q.raw', qcow2Opts('aes-t.qcow2')], { cwd: dir });
    expect(w.status).toBe(0);
    sh('qemu-img', 'compare', ...SEC, qcow2Json('aes-t.qcow2'), 'aes-q.raw');
  });
});
