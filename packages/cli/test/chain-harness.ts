/**
 * What the commit and rebase cross-checks share: one backing chain built twice by the same shell
 * script (qemu-img create / qemu-io), the same command run by qemu-img in one copy and by tsimg in
 * the other, and every file of the two copies compared byte for byte, with stdout, stderr and the
 * exit status.
 */
import { expect } from 'vitest';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { qemuAsTsimg, qemuImg, run, tsimg, type RunResult } from '../../../test-images/qemu.js';

/** tsimg's warning when the native lock module is missing: not part of qemu's output. */
const NO_LOCKS = /^tsimg: warning: File locking is unavailable[^\n]*\n/gm;

/** Chains built so far, by setup script: built once, then copied. */
const built = new Map<string, string>();

/** Builds the chain `setup` (a shell script) describes in a new directory `dir/name`. */
export function buildChain(dir: string, name: string, setup: string): string {
  const at = join(dir, name);
  let template = built.get(setup);
  if (template === undefined || !existsSync(template)) {
    template = join(dir, `.template${built.size}`);
    mkdirSync(template, { recursive: true });
    const r = run('sh', ['-ec', setup], { cwd: template });
    if (r.status !== 0) throw new Error(`setup failed (${r.status}): ${r.stderr}`);
    built.set(setup, template);
  }
  cpSync(template, at, { recursive: true });
  return at;
}

/** Every file below `dir` (relative names), sorted. */
export function filesBelow(dir: string, prefix = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(dir, prefix)).sort()) {
    const rel = prefix === '' ? e : `${prefix}/${e}`;
    if (statSync(join(dir, rel)).isDirectory()) out.push(...filesBelow(dir, rel));
    else out.push(rel);
  }
  return out;
}

/** The outcome of one command run by both tools on copies of one chain. */
export interface BothRuns {
  qemu: RunResult;
  ours: RunResult;
  qemuDir: string;
  oursDir: string;
}

/** Builds `setup` twice under `dir/label`, runs `args` with qemu-img in one and tsimg in the other. */
export function runBoth(dir: string, label: string, setup: string, args: string[], cwd = '.'): BothRuns {
  const qemuDir = buildChain(dir, `${label}/q`, setup);
  const oursDir = buildChain(dir, `${label}/t`, setup);
  const qemu = qemuAsTsimg(qemuImg(args, { cwd: join(qemuDir, cwd) }));
  const raw = tsimg(args, { cwd: join(oursDir, cwd) });
  const ours = { ...raw, stderr: raw.stderr.replace(NO_LOCKS, '') };
  return { qemu, ours, qemuDir, oursDir };
}

/** Expects every file of the two copies to be byte-identical. */
export function expectSameFiles(r: BothRuns, what: string): void {
  const names = filesBelow(r.qemuDir);
  expect(filesBelow(r.oursDir), `${what}: files`).toEqual(names);
  for (const f of names) {
    const same = readFileSync(join(r.qemuDir, f)).equals(readFileSync(join(r.oursDir, f)));
    expect(same, `${what}: ${f} differs from qemu-img's`).toBe(true);
  }
}

/**
 * Runs `args` with both tools on copies of the chain and expects the same files, stdout, stderr
 * and exit status.
 */
export function expectSameAsQemuOnChain(dir: string, label: string, setup: string, args: string[], cwd = '.'): BothRuns {
  const r = runBoth(dir, label, setup, args, cwd);
  expect(r.ours, `${label}: ${args.join(' ')}`).toEqual(r.qemu);
  expectSameFiles(r, `${label}: ${args.join(' ')}`);
  return r;
}

/** The percentages of a `-p` output (`    (NN.NN/100%)\r` lines), in order. */
export function progressValues(stdout: string): number[] {
  return [...stdout.matchAll(/ {4}\((\d+\.\d\d)\/100%\)\r/g)].map((m) => Number(m[1]));
}
