/**
 * SIGINT and SIGTERM sent to real `tsimg` processes while they write (issue 11, "clean
 * failure"): the process ends as qemu-img 7.2 ends — killed by that signal, as a parent sees it
 * — but only after the writes in flight and the metadata are written, so `qemu-img check` finds
 * the image clean (no leaks either) and what was copied reads back; a convert target the command
 * created itself is removed. Signals land at a chosen point (after the first progress step of a
 * rate-limited convert) or at seeded pseudo-random moments; the assertions hold for any moment.
 * Needs `npm run build` first.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { prng } from '../../../test-images/prng.mjs';
import { describeQemu, qemuImg, qemuIo, tempDir, tsimgBin } from '../../../test-images/qemu.js';

const M = 1024 * 1024;
/** The source: 32 MiB raw, every other MiB data (MiB i filled with byte i + 1), holes between. */
const SOURCE_MIB = 32;

let dir = '';
let cleanup = (): void => {};

/** How a child process ended, as its parent sees it, and what it printed. */
interface Ended {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `cmd args` in `dir`; `when(stdout, child)` is called as output arrives and on a timer and
 * returns true once the signal is to be sent (or never: then the process runs to its end).
 */
function runAndSignal(cmd: string, args: string[], sig: NodeJS.Signals, when: (stdout: string) => boolean): Promise<Ended> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let sent = false;
    const poll = (): void => {
      if (!sent && child.exitCode === null && child.signalCode === null && when(stdout)) {
        sent = true;
        // Stopped first, so the signal is handled at the moment `when` saw, not a bit later.
        child.kill('SIGSTOP');
        child.kill(sig);
        child.kill('SIGCONT');
      }
    };
    const timer = setInterval(poll, 2);
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      poll();
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearInterval(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

const tsimgArgs = (args: string[]): string[] => [tsimgBin, ...args];

/** True once a `-p` line shows progress past 0 %. */
const pastZero = (stdout: string): boolean => /\((?!0\.00)\d+\.\d\d\/100%\)/.test(stdout);

/** A moment `ms` after the command started (a signal at a pseudo-random point). */
function after(ms: number): () => boolean {
  const start = process.hrtime.bigint();
  return () => Number(process.hrtime.bigint() - start) / 1e6 >= ms;
}

function sourceBytes(): Buffer {
  const b = Buffer.alloc(SOURCE_MIB * M);
  for (let i = 0; i < SOURCE_MIB; i += 2) b.fill(i + 1, i * M, (i + 1) * M);
  return b;
}

/** The guest bytes of `image` (any format qemu-img reads), through a raw copy made by qemu-img. */
function guestBytes(image: string): Buffer {
  const out = join(dir, `readback-${Math.random().toString(36).slice(2)}.raw`);
  const r = qemuImg(['convert', '-O', 'raw', image, out]);
  expect(r.status, r.stderr).toBe(0);
  return readFileSync(out);
}

/** A cluster: the unit a partial copy is made of (convert -c writes one at a time). */
const UNIT = 64 * 1024;
/** How many units of the source hold data. */
const DATA_UNITS = (SOURCE_MIB / 2) * (M / UNIT);

/**
 * What a partial copy of the source must read as: each cluster either the source's or zeroes
 * (never other bytes); returns how many data clusters were copied.
 */
function expectPartialCopy(image: string): number {
  const src = sourceBytes();
  const got = guestBytes(image);
  expect(got.length).toBe(src.length);
  let copied = 0;
  for (let at = 0; at < src.length; at += UNIT) {
    const mine = got.subarray(at, at + UNIT);
    const theirs = src.subarray(at, at + UNIT);
    if (mine.equals(theirs)) {
      if (theirs[0] !== 0) copied++;
    } else {
      expect(mine.every((x) => x === 0), `the cluster at ${at} of ${image} is neither the source's nor zeroes`).toBe(true);
    }
  }
  return copied;
}

/** qemu-img check's status and output: 0 and "No errors" for a clean image. */
function check(image: string): { status: number; stdout: string } {
  const r = qemuImg(['check', image]);
  return { status: r.status, stdout: r.stdout };
}

describeQemu('signals during writing commands', () => {
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-signals-'));
    const fd = join(dir, 'src.raw');
    writeFileSync(fd, Buffer.alloc(0));
    // Written MiB by MiB so the holes stay holes.
    const src = sourceBytes();
    const r = qemuImg(['create', '-f', 'raw', fd, `${SOURCE_MIB}M`]);
    expect(r.status).toBe(0);
    for (let i = 0; i < SOURCE_MIB; i += 2) {
      const w = qemuIo(['-f', 'raw', '-c', `write -P ${i + 1} ${i}M 1M`, fd]);
      expect(w.status, w.stderr).toBe(0);
    }
    expect(readFileSync(fd).equals(src)).toBe(true);
  });
  afterAll(() => cleanup());

  it('qemu-img itself dies of the signal mid-convert and leaves its target behind', async () => {
    const t = join(dir, 'qemu-target.qcow2');
    const ended = await runAndSignal('qemu-img', ['convert', '-p', '-r', '4M', '-O', 'qcow2', 'src.raw', t], 'SIGINT', pastZero);
    expect({ code: ended.code, signal: ended.signal }).toEqual({ code: null, signal: 'SIGINT' });
    expect(existsSync(t)).toBe(true);
    // Its progress line is cut off where it was, not ended.
    expect(ended.stdout).toMatch(/\/100%\)\r$/);
  });

  for (const [sig, extra] of [
    ['SIGINT', []],
    ['SIGTERM', []],
    ['SIGTERM', ['-c']],
  ] as const) {
    it(`convert -n ${extra.join(' ')} into a qcow2: ${sig} ends it as qemu-img's status after the metadata is written`, async () => {
      const t = join(dir, `n-${sig}${extra.join('')}.qcow2`);
      expect(qemuImg(['create', '-f', 'qcow2', t, `${SOURCE_MIB}M`]).status).toBe(0);
      const args = ['convert', '-p', '-r', '4M', '-n', ...extra, '-O', 'qcow2', 'src.raw', t];
      const ended = await runAndSignal(process.execPath, tsimgArgs(args), sig, pastZero);
      expect({ code: ended.code, signal: ended.signal, stderr: ended.stderr }).toEqual({ code: null, signal: sig, stderr: '' });
      expect(ended.stdout).toMatch(/\/100%\)\r$/);
      const c = check(t);
      expect(c, 'qemu-img check of the interrupted target').toEqual({ status: 0, stdout: expect.stringContaining('No errors were found on the image.') });
      const copied = expectPartialCopy(t);
      // Stopped mid-way: some data was copied and mapped, not all of it.
      expect(copied).toBeGreaterThan(0);
      expect(copied).toBeLessThan(DATA_UNITS);
    });
  }

  for (const [sig, fmt] of [
    ['SIGINT', 'qcow2'],
    ['SIGTERM', 'raw'],
  ] as const) {
    it(`convert -O ${fmt}: ${sig} removes the target the command created`, async () => {
      const t = join(dir, `created-${sig}.${fmt}`);
      const ended = await runAndSignal(process.execPath, tsimgArgs(['convert', '-p', '-r', '4M', '-O', fmt, 'src.raw', t]), sig, pastZero);
      expect({ code: ended.code, signal: ended.signal }).toEqual({ code: null, signal: sig });
      expect(existsSync(t)).toBe(false);
    });
  }

  it('convert -O qcow2 over an existing file: the file is left (qemu-img overwrote it), consistent', async () => {
    const t = join(dir, 'existing.qcow2');
    writeFileSync(t, 'not an image yet');
    const ended = await runAndSignal(process.execPath, tsimgArgs(['convert', '-p', '-r', '4M', '-O', 'qcow2', 'src.raw', t]), 'SIGINT', pastZero);
    expect({ code: ended.code, signal: ended.signal }).toEqual({ code: null, signal: 'SIGINT' });
    expect(check(t).status).toBe(0);
    expect(expectPartialCopy(t)).toBeGreaterThan(0);
  });

  it('dd -O qcow2: a signal once the output grows leaves what was copied mapped', async () => {
    const out = join(dir, 'dd-grown.qcow2');
    const grown = (): boolean => existsSync(out) && statSync(out).size > 4 * M;
    const ended = await runAndSignal(process.execPath, tsimgArgs(['dd', '-O', 'qcow2', 'bs=64k', 'if=src.raw', `of=${out}`]), 'SIGINT', grown);
    expect({ code: ended.code, signal: ended.signal, stderr: ended.stderr }).toEqual({ code: null, signal: 'SIGINT', stderr: '' });
    expect(check(out).status).toBe(0);
    // More than 4 MiB were in the file when the signal came: its L2 tables were written too.
    expect(expectPartialCopy(out)).toBeGreaterThan(0);
  });

  it('dd -O qcow2 at seeded moments: killed by the signal (or done first), the output always consistent', async () => {
    const next = prng(11);
    for (let round = 0; round < 6; round++) {
      const sig = round % 2 ? 'SIGTERM' : 'SIGINT';
      const out = join(dir, `dd-${round}.qcow2`);
      const ended = await runAndSignal(process.execPath, tsimgArgs(['dd', '-O', 'qcow2', 'bs=64k', 'if=src.raw', `of=${out}`]), sig, after(next() % 400));
      if (ended.code !== 0) expect({ code: ended.code, signal: ended.signal, stderr: ended.stderr }).toEqual({ code: null, signal: sig, stderr: '' });
      if (!existsSync(out)) continue; // killed before it created the output
      expect(check(out).status, `round ${round}`).toBe(0);
      expectPartialCopy(out);
    }
  });

  it('create -o preallocation=full at seeded moments: no file, or a complete image', async () => {
    const next = prng(5);
    for (let round = 0; round < 6; round++) {
      const sig = round % 2 ? 'SIGINT' : 'SIGTERM';
      const out = join(dir, `create-${round}.qcow2`);
      const args = ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=full', out, '64M'];
      const ended = await runAndSignal(process.execPath, tsimgArgs(args), sig, after(next() % 300));
      if (ended.code !== 0) expect({ code: ended.code, signal: ended.signal, stderr: ended.stderr }).toEqual({ code: null, signal: sig, stderr: '' });
      if (!existsSync(out)) continue;
      expect(check(out).status, `round ${round}`).toBe(0);
      const info = JSON.parse(qemuImg(['info', '--output=json', out]).stdout) as { 'virtual-size': number; 'actual-size': number };
      expect(info['virtual-size']).toBe(64 * M);
      expect(info['actual-size']).toBeGreaterThanOrEqual(64 * M);
    }
  });

  it('commit, snapshot -c and resize at seeded moments: killed by the signal (or done first), every image consistent', async () => {
    // A 2-image chain with 16 MiB in the top; a snapshot to delete; 8 MiB of data to resize over.
    expect(qemuImg(['create', '-q', '-f', 'qcow2', join(dir, 'cbase.qcow2'), '64M']).status).toBe(0);
    expect(qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'cbase.qcow2', '-F', 'qcow2', join(dir, 'ctop.qcow2'), '64M']).status).toBe(0);
    expect(qemuIo(['-c', 'write -P 3 0 16M', join(dir, 'ctop.qcow2')]).status).toBe(0);
    const base0 = readFileSync(join(dir, 'cbase.qcow2'));
    const top0 = readFileSync(join(dir, 'ctop.qcow2'));
    const view = guestBytes(join(dir, 'ctop.qcow2'));
    const next = prng(17);
    const jobs: { name: string; args: (i: number) => string[]; files: (i: number) => string[] }[] = [
      { name: 'commit', args: (i) => ['commit', join(dir, `ctop-${i}.qcow2`)], files: (i) => [`cbase-${i}.qcow2`, `ctop-${i}.qcow2`] },
      { name: 'snapshot -c', args: (i) => ['snapshot', '-c', 'new', join(dir, `ctop-${i}.qcow2`)], files: (i) => [`ctop-${i}.qcow2`] },
      { name: 'resize', args: (i) => ['resize', join(dir, `ctop-${i}.qcow2`), '+64M'], files: (i) => [`ctop-${i}.qcow2`] },
    ];
    for (const [j, job] of jobs.entries()) {
      for (let round = 0; round < 3; round++) {
        const i = j * 10 + round;
        writeFileSync(join(dir, `cbase-${i}.qcow2`), base0);
        // Each copy's top names its own base.
        writeFileSync(join(dir, `ctop-${i}.qcow2`), top0);
        expect(qemuImg(['rebase', '-u', '-b', `cbase-${i}.qcow2`, '-F', 'qcow2', join(dir, `ctop-${i}.qcow2`)]).status).toBe(0);
        const sig = round % 2 ? 'SIGTERM' : 'SIGINT';
        const ended = await runAndSignal(process.execPath, tsimgArgs(job.args(i)), sig, after(next() % 200));
        if (ended.code !== 0) expect({ code: ended.code, signal: ended.signal, stderr: ended.stderr }, job.name).toEqual({ code: null, signal: sig, stderr: '' });
        for (const f of job.files(i)) expect(check(join(dir, f)).status, `${job.name} round ${round}: ${f}`).toBe(0);
        // The guest view of the top is the same whatever was done (commit keeps it, resize adds zeroes).
        expect(guestBytes(join(dir, `ctop-${i}.qcow2`)).subarray(0, view.length).equals(view), `${job.name} round ${round}`).toBe(true);
      }
    }
  });

  it('check -r all at seeded moments: the image is repaired or untouched, never damaged', async () => {
    // 16 MiB of data whose L1 entry (the first 512 MiB) is then dropped: 257 leaked clusters
    // to repair; the MiB at 600M, under the second L1 entry, must survive.
    const base = join(dir, 'leaky.qcow2');
    expect(qemuImg(['create', '-f', 'qcow2', base, '1G']).status).toBe(0);
    expect(qemuIo(['-c', 'write -P 7 0 16M', '-c', 'write -P 8 600M 1M', base]).status).toBe(0);
    const bytes = readFileSync(base);
    const l1 = Number(bytes.readBigUInt64BE(40));
    bytes.fill(0, l1, l1 + 8);
    const next = prng(3);
    for (let round = 0; round < 6; round++) {
      const img = join(dir, `leaky-${round}.qcow2`);
      writeFileSync(img, bytes);
      const sig = round % 2 ? 'SIGTERM' : 'SIGINT';
      const ended = await runAndSignal(process.execPath, tsimgArgs(['check', '-r', 'all', img]), sig, after(next() % 250));
      if (ended.code !== 0) expect({ code: ended.code, signal: ended.signal }).toEqual({ code: null, signal: sig });
      const c = check(img);
      // 3: untouched (only the leaks it had); 0: repaired. Never 2 (corruption).
      expect([0, 3], `round ${round}: ${c.stdout}`).toContain(c.status);
      if (ended.code === 0) expect(c.status).toBe(0);
      const r = qemuIo(['-c', 'read -P 8 600M 1M', img]);
      expect(r.stdout, `round ${round}`).not.toContain('Pattern verification failed');
    }
  });
});
