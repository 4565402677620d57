/**
 * Image locks end to end: every tsimg command against real qemu-io processes holding the images
 * (read-write, `-r`, `-r -U`; the image, a backing file and a data file), with stdout, stderr and
 * status equal to qemu-img's in the same situation and the images undamaged afterwards; the
 * reverse (a tsimg convert in progress keeps qemu and a second tsimg out); no self-destruction;
 * and the loud warning without the native module. Needs `npm run build` first.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { join } from 'node:path';
import { lockingAvailable } from '@tsimg/raw';
import { heldBytes, holdWithQemuIo, killAndWait } from '../../../test-images/holders.js';
import { describeQemu, qemuAsTsimg, qemuImg, qemuIo, shIn, tempDir, tsimg, tsimgBin } from '../../../test-images/qemu.js';

let dir = '';
let cleanup = (): void => {};
const started: ChildProcess[] = [];

async function until(what: string, test: () => boolean, child?: ChildProcess): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (test()) return;
    if (child && child.exitCode !== null) throw new Error(`${what}: the process exited (${child.exitCode})`);
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`${what}: not within 5 s`);
}

/** `qemu-io ARGS -c 'sleep 600000' FILE` in the background, once its locks show. */
async function hold(args: string[], file: string): Promise<ChildProcess> {
  const child = await holdWithQemuIo(args, file, dir);
  started.push(child);
  return child;
}

/** qemu-img and tsimg with `args` (OUT: a file of each's own), expected to say the same. */
function expectSame(args: string): void {
  const argv = (out: string): string[] => args.split(' ').map((a) => a.replace('OUT', out).replace('of=OUT', `of=${out}`));
  for (const f of ['q.out', 't.out']) fs.rmSync(join(dir, f), { force: true });
  const theirs = qemuAsTsimg(qemuImg(argv('q.out'), { cwd: dir }));
  const ours = tsimg(argv('t.out'), { cwd: dir });
  const fix = (s: string): string => s.replaceAll('q.out', 't.out');
  expect(ours, args).toEqual({ stdout: fix(theirs.stdout), stderr: fix(theirs.stderr), status: theirs.status });
}

const READ_ONLY = [
  'info live.qcow2', 'info -U live.qcow2', 'info --backing-chain ontop.qcow2', 'info -f raw lr.raw',
  'check live.qcow2', 'check -U live.qcow2', 'check ontop.qcow2', 'check df2.qcow2', 'check -U df2.qcow2',
  'map live.qcow2', 'map -U live.qcow2', 'map ontop.qcow2', 'map lrtop.qcow2', 'map df2.qcow2',
  'compare r.raw live.qcow2', 'compare -U r.raw ontop.qcow2', 'compare r.raw lrtop.qcow2',
  'measure -O qcow2 live.qcow2', 'measure -U -O qcow2 ontop.qcow2',
  'convert -O raw live.qcow2 OUT', 'convert -U -O raw live.qcow2 OUT', 'convert -O raw lrtop.qcow2 OUT',
  'convert -O raw df2.qcow2 OUT', 'convert -f raw -O raw lr.raw OUT',
  'dd if=live.qcow2 of=OUT', 'dd -U if=ontop.qcow2 of=OUT',
  'info --image-opts driver=qcow2,file.filename=live.qcow2,file.locking=off',
  'map --image-opts driver=qcow2,file.filename=live.qcow2,file.locking=bad',
];
/** Commands that write: with the holders used, they fail without writing (or only repair). */
const WRITING = [
  'check -r all live.qcow2', 'check -U -r all live.qcow2', 'check -r all df2.qcow2', 'check -r all ontop.qcow2',
  'convert -n r.raw live.qcow2', 'convert -n -U r.raw live.qcow2', 'convert -O qcow2 r.raw live.qcow2',
  'dd if=r.raw of=live.qcow2 -O qcow2', 'dd if=r.raw of=live.qcow2',
  'create -f qcow2 live.qcow2 1M', 'create -f raw live.qcow2 1M', 'create -q -f qcow2 -b live.qcow2 -F qcow2 OUT',
  'resize live.qcow2 32M', 'resize --shrink live.qcow2 1M', 'resize -f raw lr.raw 32M', 'resize df2.qcow2 32M',
  'commit ontop.qcow2', 'commit -b live.qcow2 ontop.qcow2', 'commit lrtop.qcow2',
  'rebase -u -b x -F raw live.qcow2', 'rebase -b lr.raw -F raw ontop.qcow2',
  'amend -o compat=0.10 live.qcow2', 'amend -o refcount_bits=8 df2.qcow2',
];
/** The cases where a read-only holder makes a difference (it shares write with readers). */
const WITH_READER = [
  'info live.qcow2', 'check live.qcow2', 'map ontop.qcow2', 'map df2.qcow2', 'convert -O raw lrtop.qcow2 OUT',
  'convert -f raw -O raw lr.raw OUT', 'check -r all live.qcow2', 'check -r all df2.qcow2', 'convert -n r.raw live.qcow2',
  'create -f qcow2 live.qcow2 1M', 'dd if=r.raw of=live.qcow2 -O qcow2', 'resize live.qcow2 32M',
  'commit ontop.qcow2', 'commit lrtop.qcow2',
  'amend -o compat=0.10 live.qcow2',
];
/** With `-r -U` only writers of the image are kept out, so only harmless writes are tried. */
const WITH_SHARING_READER = ['info live.qcow2', 'map ontop.qcow2', 'convert -O raw df2.qcow2 OUT', 'compare r.raw lrtop.qcow2', 'check -r all df2.qcow2'];

function expectUndamaged(): void {
  for (const img of ['live.qcow2', 'livedf.qcow2', 'df2.qcow2', 'ontop.qcow2', 'lrtop.qcow2']) {
    expect(qemuImg(['check', '-U', img], { cwd: dir }).status, img).toBe(0);
  }
  expect(qemuIo(['-U', '-r', '-c', 'read -P 0x5a 0 1M', 'live.qcow2'], { cwd: dir }).stdout).toMatch(/^read 1048576/);
  expect(qemuIo(['-U', '-r', '-f', 'raw', '-c', 'read -P 0x6b 0 1M', 'lr.raw'], { cwd: dir }).stdout).toMatch(/^read 1048576/);
  expect(qemuIo(['-U', '-r', '-c', 'read -P 0x7c 0 1M', 'livedf.qcow2'], { cwd: dir }).stdout).toMatch(/^read 1048576/);
}

const native = lockingAvailable();
const describeLocks = native ? describeQemu : (name: string, fn: () => void) => describeQemu.call(null, `${name} (skipped: no native module)`, () => it.skip('needs tsimg_fs', fn));

describeLocks('tsimg and qemu lock each other out as qemu-img does', () => {
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-locking-'));
    const sh = (...a: string[]): void => shIn(dir, a[0]!, ...a.slice(1));
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'live.qcow2', '16M');
    sh('qemu-io', '-c', 'write -P 0x5a 0 1M', 'live.qcow2');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'live.qcow2', '-F', 'qcow2', 'ontop.qcow2');
    sh('qemu-img', 'create', '-q', '-f', 'raw', 'lr.raw', '16M');
    sh('qemu-io', '-f', 'raw', '-c', 'write -P 0x6b 0 1M', 'lr.raw');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'lr.raw', '-F', 'raw', 'lrtop.qcow2');
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=df.raw', 'livedf.qcow2', '16M');
    // Creating df2.qcow2 empties the data file both share, so the data goes in afterwards.
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'data_file=df.raw', 'df2.qcow2', '16M');
    sh('qemu-io', '-c', 'write -P 0x7c 0 1M', 'livedf.qcow2');
    sh('qemu-img', 'create', '-q', '-f', 'raw', 'r.raw', '16M');
  });
  afterAll(async () => {
    for (const c of started) await killAndWait(c);
    cleanup();
  });

  for (const [label, args, lists] of [
    ['read-write', [], [READ_ONLY, WRITING]],
    ['-r', ['-r'], [WITH_READER]],
    ['-r -U', ['-r', '-U'], [WITH_SHARING_READER]],
  ] as const) {
    it(`every command while qemu-io ${label} holds the image, its backing files and a data file`, async () => {
      const holders = [
        await hold([...args], 'live.qcow2'),
        await hold([...args, '-f', 'raw'], 'lr.raw'),
        await hold([...args], 'livedf.qcow2'),
      ];
      try {
        for (const list of lists) for (const c of list) expectSame(c);
      } finally {
        for (const h of holders) await killAndWait(h);
      }
      expectUndamaged();
    }, 60_000);
  }

  it('a tsimg convert in progress: qemu-img info fails, -U works, qemu-io cannot write its source, a second convert -n fails', async () => {
    shIn(dir, 'qemu-img', 'create', '-q', '-f', 'qcow2', 'tgt.qcow2', '16M');
    fs.writeFileSync(join(dir, 'src.raw'), Buffer.alloc(3 << 20, 0x3d)); // ≈ 6 s at -r 512k
    const slow = spawn(process.execPath, [tsimgBin, 'convert', '-n', '-r', '512k', '-f', 'raw', '-O', 'qcow2', 'src.raw', 'tgt.qcow2'], { cwd: dir, stdio: 'ignore' });
    started.push(slow);
    const done = new Promise<number | null>((r) => slow.once('exit', (code) => r(code)));
    await until('tsimg convert locks its target', () => heldBytes(join(dir, 'tgt.qcow2')).includes(101), slow);
    // qemu-img convert's bytes: the qcow2 target read-write, the raw source with BDRV_O_NO_SHARE.
    expect(heldBytes(join(dir, 'tgt.qcow2'))).toEqual([100, 101, 103, 201, 203]);
    expect(heldBytes(join(dir, 'src.raw'))).toEqual([100, 201, 203]);
    const info = qemuImg(['info', 'tgt.qcow2'], { cwd: dir });
    expect(info.stderr).toBe(`qemu-img: Could not open 'tgt.qcow2': Failed to get shared "write" lock\nIs another process using the image [tgt.qcow2]?\n`);
    expect(info.status).toBe(1);
    expect(qemuImg(['info', '-U', 'tgt.qcow2'], { cwd: dir }).status).toBe(0);
    expect(qemuIo(['-f', 'raw', '-c', 'write 0 512', 'src.raw'], { cwd: dir }).stderr).toMatch(/Failed to get "write" lock/);
    const second = tsimg(['convert', '-n', '-f', 'raw', '-O', 'qcow2', 'r.raw', 'tgt.qcow2'], { cwd: dir });
    expect(second).toEqual({
      stdout: '', status: 1,
      stderr: `tsimg: Could not open 'tgt.qcow2': Failed to get "write" lock\nIs another process using the image [tgt.qcow2]?\n`,
    });
    expect(await done).toBe(0);
    // src.raw is smaller than the target: compare warns of that, then finds the same data.
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', 'src.raw', 'tgt.qcow2'], { cwd: dir })).toMatchObject({ status: 0, stdout: 'Warning: Image size mismatch!\nImages are identical.\n' });
  }, 30_000);

  it('a commit in progress locks the chain as qemu-img commit does (base and top read-write, the images between unreadable)', async () => {
    const chains = [
      { files: ['cb.qcow2', 'cm.qcow2', 'ct.qcow2'], base: ['-b', 'cb.qcow2'], setup: [
        ['qemu-img', 'create', '-q', '-f', 'qcow2', 'cb.qcow2', '16M'],
        ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'cb.qcow2', '-F', 'qcow2', 'cm.qcow2'],
        ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'cm.qcow2', '-F', 'qcow2', 'ct.qcow2'],
      ] },
      // A raw base the same size as the top: written, not resized, and not read by the job.
      { files: ['cr.raw', 'crt.qcow2'], base: [], setup: [
        ['qemu-img', 'create', '-q', '-f', 'raw', 'cr.raw', '16M'],
        ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'cr.raw', '-F', 'raw', 'crt.qcow2'],
      ] },
    ];
    for (const chain of chains) {
      const top = chain.files.at(-1)!;
      const held: Record<string, number[][]> = {};
      for (const [who, cmd, args] of [
        ['qemu', 'qemu-img', ['commit', '-q', '-r', '256k', ...chain.base, top]],
        ['tsimg', process.execPath, [tsimgBin, 'commit', '-q', '-r', '256k', ...chain.base, top]],
      ] as const) {
        for (const c of chain.setup) shIn(dir, c[0]!, ...c.slice(1));
        shIn(dir, 'qemu-io', '-c', 'write -P 0x21 0 4M', top);
        const before = fs.readFileSync(join(dir, chain.files[0]!));
        const slow = spawn(cmd, [...args], { cwd: dir, stdio: 'ignore' });
        started.push(slow);
        // Once data reaches the base, the job runs: every lock is the job's.
        await until(`${who} commit writes its base`, () => !fs.readFileSync(join(dir, chain.files[0]!)).equals(before), slow);
        held[who] = chain.files.map((f) => heldBytes(join(dir, f)));
        await killAndWait(slow);
      }
      expect(held.tsimg, chain.files.join(' ')).toEqual(held.qemu);
    }
  }, 30_000);

  it('no self-destruction: dd and convert refuse a target they read, through any path or the backing chain', () => {
    shIn(dir, 'qemu-img', 'create', '-q', '-f', 'qcow2', 's1.qcow2', '4M');
    shIn(dir, 'qemu-io', '-c', 'write -P 0x11 0 1M', 's1.qcow2');
    shIn(dir, 'qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 's1.qcow2', '-F', 'qcow2', 's2.qcow2');
    fs.symlinkSync('s1.qcow2', join(dir, 'link.qcow2'));
    for (const c of [
      'dd if=s1.qcow2 of=s1.qcow2 -O qcow2', 'dd if=s1.qcow2 of=s1.qcow2', 'convert -n s1.qcow2 s1.qcow2',
      'convert -O qcow2 s1.qcow2 s1.qcow2', 'convert -n -O qcow2 s2.qcow2 link.qcow2', 'convert -O qcow2 s2.qcow2 link.qcow2',
      'dd if=s2.qcow2 of=link.qcow2 -O qcow2', 'convert -n -O qcow2 link.qcow2 s1.qcow2',
    ]) expectSame(c);
    expect(qemuImg(['check', 's1.qcow2'], { cwd: dir }).status).toBe(0);
    expect(qemuIo(['-r', '-c', 'read -P 0x11 0 1M', 's1.qcow2'], { cwd: dir }).stdout).toMatch(/^read 1048576/);
  });

  it('without the native module, a writing command says loudly (once) that nothing is locked; reading ones stay quiet', () => {
    const run = (args: string[]) => spawnSync(process.execPath, [tsimgBin, ...args], { cwd: dir, encoding: 'utf8', env: { ...process.env, TSIMG_NATIVE: 'off' } });
    shIn(dir, 'qemu-img', 'create', '-q', '-f', 'qcow2', 'n.qcow2', '4M');
    const w = run(['convert', '-n', '-O', 'qcow2', 's2.qcow2', 'n.qcow2']);
    expect(w.status).toBe(0);
    expect(w.stderr).toBe(
      'tsimg: warning: File locking is unavailable (the native module tsimg_fs is disabled by TSIMG_NATIVE): ' +
        'this image is not protected against concurrent use by qemu or tsimg\n',
    );
    for (const args of [['check', '-r', 'all', 'n.qcow2'], ['create', '-q', '-f', 'qcow2', 'n2.qcow2', '1M'], ['dd', 'if=n.qcow2', 'of=n3.raw']]) {
      expect(run(args).stderr, args.join(' ')).toMatch(/^tsimg: warning: File locking is unavailable[^\n]*\n$/);
    }
    expect(run(['info', 'n.qcow2']).stderr).toBe('');
    expect(run(['map', 'n.qcow2']).stderr).toBe('');
    // Even unlocked, a convert never writes the image it reads.
    expect(run(['convert', '-n', 'n.qcow2', 'n.qcow2']).status).toBe(1);
  });
});
