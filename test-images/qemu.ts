/**
 * Test support for cross-checks against the real qemu-img / qemu-io (QEMU 7.2).
 *
 * `describeQemu` wraps a suite that needs qemu: without qemu-img it is skipped with a loud
 * message, but when the CI variable is set a missing qemu-img fails the run instead.
 */
import { describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

function probe(cmd: string): boolean {
  const r = spawnSync(cmd, ['--version'], { encoding: 'utf8' });
  return r.status === 0;
}

/** True when qemu-img and qemu-io can be run. */
export const hasQemu: boolean = probe('qemu-img') && probe('qemu-io');

/** A suite of cross-checks: skipped loudly without qemu, failing without it when CI is set. */
export function describeQemu(name: string, fn: () => void): void {
  if (hasQemu) {
    describe(name, fn);
    return;
  }
  if (process.env.CI) {
    describe(name, () => {
      it('needs qemu-img and qemu-io (CI is set, so this fails instead of skipping)', () => {
        throw new Error('qemu-img/qemu-io not found: install qemu-utils (apt-get install -y qemu-utils)');
      });
    });
    return;
  }
  console.warn(
    `\n!!! SKIPPING cross-checks "${name}": qemu-img/qemu-io not found. ` +
      `Install qemu-utils (apt-get install -y qemu-utils) to run them. !!!\n`,
  );
  describe.skip(name, fn);
}

/** Result of running a command: stdout, stderr and exit status. */
export interface RunResult {
  stdout: string;
  stderr: string;
  status: number;
}

/** Runs a command without a shell; never throws on a non-zero exit. */
export function run(cmd: string, args: string[], options: { cwd?: string; input?: string } = {}): RunResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: options.cwd, input: options.input, maxBuffer: 1 << 28 });
  if (r.error) throw r.error;
  return { stdout: r.stdout, stderr: r.stderr, status: r.status ?? -1 };
}

/** Runs qemu-img with `args`. */
export function qemuImg(args: string[], options: { cwd?: string } = {}): RunResult {
  // This qemu build's PBKDF2 calibration (LUKS create, convert, measure or amend) times its first
  // round of iterations with the thread's CPU clock, and gives up when that reads 0 ms ("Unable
  // to get accurate CPU usage"): on a fast CPU the round can end within one accounting tick, in
  // up to half the runs here. That failure of qemu's own is run again (each try is a few ms);
  // any other answer is returned as it is.
  for (let attempt = 0; ; attempt++) {
    const r = run('qemu-img', args, options);
    if (r.status === 0 || attempt >= 19 || !r.stderr.includes('Unable to get accurate CPU usage')) return r;
  }
}

/** Runs qemu-io with `args` (e.g. ['-c', 'write -P 0xab 0 64k', 'img.qcow2']). */
export function qemuIo(args: string[], options: { cwd?: string } = {}): RunResult {
  return run('qemu-io', args, options);
}

/** Absolute path of the built tsimg launcher (bin/tsimg.js; `npm test` builds first). */
export const tsimgBin: string = fileURLToPath(new URL('../packages/cli/bin/tsimg.js', import.meta.url));

/** Runs the built `tsimg` command with `args`. */
export function tsimg(args: string[], options: { cwd?: string; input?: string } = {}): RunResult {
  return run(process.execPath, [tsimgBin, ...args], options);
}

/** Makes a fresh temporary directory; call the returned function to remove it. */
export function tempDir(prefix = 'tsimg-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** qemu-img's output with `qemu-img` replaced by `tsimg`, for comparing messages. */
export function asTsimg(text: string): string {
  return text.replaceAll('qemu-img:', 'tsimg:');
}

/** Runs a command and returns stdout, throwing with stderr on failure. */
export function must(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 28 });
}

/**
 * qemu-img's result as tsimg words it: `qemu-img:` message prefixes and the
 * `Try 'qemu-img --help'` hint name tsimg instead (stdout and status are left as they are).
 */
export function qemuAsTsimg(r: RunResult): RunResult {
  const fix = (s: string): string =>
    s.replaceAll('qemu-img:', 'tsimg:').replaceAll("Try 'qemu-img --help'", "Try 'tsimg --help'");
  return { stdout: r.stdout, stderr: fix(r.stderr), status: r.status };
}

/**
 * Where `expectSameAsQemu` runs each tool: one directory for both (commands that only read), or
 * one each (commands that write, run in two copies of the same fixture).
 */
export type QemuTsimgCwd = string | { qemu: string; tsimg: string };

/**
 * Runs `qemu-img args` and `tsimg args` (qemu-img first) and expects the same stdout, stderr
 * (read through `qemuAsTsimg`) and exit status. Returns tsimg's result for further checks.
 */
export function expectSameAsQemu(args: string[], cwd: QemuTsimgCwd, label: string = args.join(' ')): RunResult {
  const dirs = typeof cwd === 'string' ? { qemu: cwd, tsimg: cwd } : cwd;
  const theirs = qemuAsTsimg(qemuImg(args, { cwd: dirs.qemu }));
  const ours = tsimg(args, { cwd: dirs.tsimg });
  expect(ours, label).toEqual(theirs);
  return ours;
}

/**
 * For failures whose earlier stderr lines may differ: stdout and exit status equal, and the last
 * stderr line (qemu-img's own message, read through `qemuAsTsimg`) equal.
 */
export function expectSameFailureAsQemu(args: string[], cwd: string): void {
  const theirs = qemuAsTsimg(qemuImg(args, { cwd }));
  const ours = tsimg(args, { cwd });
  const last = (s: string) => s.trimEnd().split('\n').at(-1);
  expect({ stdout: ours.stdout, status: ours.status, last: last(ours.stderr) }, args.join(' ')).toEqual({
    stdout: theirs.stdout,
    status: theirs.status,
    last: last(theirs.stderr),
  });
}

/** Writes `data` into `file` at `offset`, keeping the rest (holes stay holes in a sparse file). */
export function pokeFile(file: string, offset: number, data: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

/**
 * Copies the qcow2 image `src` to `dst` (both under `dir`) with its first L1 entry pointing at an
 * unaligned L2 table: qemu reports the image corrupt and fails block status / reads with EIO.
 */
export function copyWithCorruptL1(dir: string, src: string, dst: string): void {
  const buf = readFileSync(join(dir, src));
  const l1 = Number(buf.readBigUInt64BE(40));
  buf.writeBigUInt64BE(buf.readBigUInt64BE(l1) | 0x200n, l1);
  writeFileSync(join(dir, dst), buf);
}

/** Runs a fixture step in `cwd` (no shell): its output is dropped, a failure throws with stderr. */
export function shIn(cwd: string, cmd: string, ...args: string[]): void {
  execFileSync(cmd, args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}
