/**
 * Test support for cross-checks against the real qemu-img / qemu-io (QEMU 7.2).
 *
 * `describeQemu` wraps a suite that needs qemu: without qemu-img it is skipped with a loud
 * message, but when the CI variable is set a missing qemu-img fails the run instead.
 */
import { describe, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
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
  return run('qemu-img', args, options);
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
