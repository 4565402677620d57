/**
 * Shared machinery of the convert cross-checks: the same command line run through qemu-img and
 * tsimg in twin directories (so relative names, and the messages that quote them, are the
 * same), compared on exit status, stdout, stderr and the files each one wrote.
 */
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '@tsimg/cli';
import { asTsimg, qemuImg, tsimgBin, type RunResult } from '../../../test-images/qemu.js';

/** Runs a command without a shell, asynchronously, so a few cases can overlap. */
export function runAsync(cmd: string, args: string[], cwd: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ stdout, stderr, status: code ?? (signal ? 128 : -1) }));
  });
}

/** A counting semaphore: at most `n` callers run `fn` at once. */
export function limiter(n: number): <T>(fn: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: (() => void)[] = [];
  return async (fn) => {
    if (active >= n) await new Promise<void>((r) => waiting.push(r));
    active++;
    try {
      return await fn();
    } finally {
      active--;
      waiting.shift()?.();
    }
  };
}

/** How the files a case wrote are compared. */
export type FileCheck =
  /** Byte for byte (cmp). */
  | 'bytes'
  /**
   * -c: node:zlib's deflate bytes may differ from the system zlib's, so the guest contents are
   * compared (`qemu-img compare`), tsimg's file must pass `qemu-img check`, and its size must be
   * within 1% of qemu's.
   */
  | 'compressed'
  /** Guest contents only (qemu-img compare). */
  | 'contents'
  /** Not compared (what a failed convert leaves behind). */
  | 'none';

/** One row of a cross-check table. */
export interface ConvertCase {
  name: string;
  /** convert's arguments (after `convert`), run in a fresh directory next to `src/`. */
  args: string[];
  /** Files written in the case directory before the run (e.g. an existing target for -n). */
  before?: (dir: string) => void;
  /** Files to compare afterwards (default: `out` when qemu made it). */
  files?: string[];
  /** Format of the compared files for `qemu-img compare` (default from the args' -O). */
  check?: FileCheck;
  /**
   * A difference that stays (say why): only the exit status is compared, and the files by
   * guest contents.
   */
  knownDifference?: string;
  /**
   * A known bug (say which): the row runs as `it.fails`, so fixing the bug makes it report
   * that this marker should go.
   */
  failing?: string;
  /** Run the built bin/tsimg.js as a process (default: the CLI's `main` in this process). */
  spawn?: boolean;
}

export interface CaseResult {
  qemu: RunResult;
  ts: RunResult;
  qdir: string;
  tdir: string;
  /** The compared files that were there before the run (written by `before`). */
  existed: ReadonlySet<string>;
}

/** Runs one case in `<root>/<index>/{q,t}`. */
export async function runCase(root: string, index: number, c: ConvertCase): Promise<CaseResult> {
  const qdir = join(root, String(index), 'q');
  const tdir = join(root, String(index), 't');
  mkdirSync(qdir, { recursive: true });
  mkdirSync(tdir, { recursive: true });
  c.before?.(qdir);
  c.before?.(tdir);
  const existed = new Set((c.files ?? ['out']).filter((f) => existsSync(join(tdir, f))));
  if (process.env.CONVERT_KEEP) writeFileSync(join(root, String(index), 'case.txt'), `${c.name}\n${c.args.join(' ')}\n`);
  const [qemu, ts] = await Promise.all([
    runAsync('qemu-img', ['convert', ...c.args], qdir),
    c.spawn || process.env.CONVERT_SPAWN ? runAsync(process.execPath, [tsimgBin, 'convert', ...c.args], tdir) : inProcess(c.args, tdir),
  ]);
  return { qemu, ts, qdir, tdir, existed };
}

/**
 * `tsimg convert args` through the CLI's `main` in this process, in `cwd` (a process costs a
 * Node start-up, ~0.3 s on a busy machine, for every row). Calls must not overlap: they chdir.
 */
export async function inProcess(args: string[], cwd: string): Promise<RunResult> {
  let stdout = '';
  let stderr = '';
  const home = process.cwd();
  process.chdir(cwd);
  try {
    const status = await main(['convert', ...args], {
      stdout: (t) => void (stdout += t),
      stderr: (t) => void (stderr += t),
      isTTY: false,
    });
    return { stdout, stderr, status };
  } finally {
    process.chdir(home);
  }
}

/** What differs between the two runs' status/stdout/stderr, as a comparable object. */
export function textOf(r: RunResult): { status: number; stdout: string; stderr: string } {
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** qemu's run with its name replaced by tsimg's, for comparing messages. */
export function expectedText(r: RunResult): { status: number; stdout: string; stderr: string } {
  return { status: r.status, stdout: asTsimg(r.stdout), stderr: asTsimg(r.stderr).replaceAll('qemu-img convert', 'tsimg convert').replaceAll("Try 'qemu-img --help'", "Try 'tsimg --help'") };
}

/** Index of the first differing byte of two files, -1 when equal, -2 when sizes differ only. */
export function cmpFiles(a: string, b: string): string | undefined {
  const sa = statSync(a).size;
  const sb = statSync(b).size;
  const r = qemuImgCmp(a, b);
  if (r === undefined && sa === sb) return undefined;
  return `${a} (${sa} bytes) and ${b} (${sb} bytes) differ${r ? `: ${r}` : ''}`;
}

function qemuImgCmp(a: string, b: string): string | undefined {
  // Files are small here (a few MiB); read them whole.
  const x = readFileSync(a);
  const y = readFileSync(b);
  if (x.equals(y)) return undefined;
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return `first difference at byte ${i} (0x${i.toString(16)}): qemu 0x${x[i]!.toString(16)}, tsimg 0x${y[i]!.toString(16)}`;
  return `one is a prefix of the other`;
}

/** The output format a case's args ask for. */
export function outFormat(args: string[]): string {
  const i = args.lastIndexOf('-O');
  return i >= 0 ? args[i + 1]! : 'raw';
}

/** Compares the written files; returns a list of problems (empty when all agree). */
export function compareFiles(c: ConvertCase, r: CaseResult): string[] {
  const problems: string[] = [];
  const files = c.files ?? ['out'];
  // Beyond qemu-img (docs/clean-failure.md): a convert that fails removes the files it created
  // for its target; qemu-img leaves them. A -n target, or a file that was there, stays.
  const removesItsOwn = r.qemu.status !== 0 && !c.args.includes('-n');
  for (const f of files) {
    const q = join(r.qdir, f);
    const t = join(r.tdir, f);
    if (removesItsOwn && !r.existed.has(f)) {
      if (existsSync(t)) problems.push(`the failed convert left ${f} behind`);
      continue;
    }
    if (!existsSync(q)) {
      if (existsSync(t) && !(c.before && existsSync(t))) problems.push(`tsimg wrote ${f}, qemu did not`);
      continue;
    }
    if (!existsSync(t)) {
      problems.push(`qemu wrote ${f}, tsimg did not`);
      continue;
    }
    const mode = c.check ?? 'bytes';
    if (mode === 'none') continue;
    if (mode === 'bytes') {
      const d = cmpFiles(q, t);
      if (d) problems.push(d);
      continue;
    }
    if (f !== (c.files ?? ['out'])[0]) continue; // contents: the image file only
    const fmt = outFormat(c.args);
    const cmp = qemuImg(['compare', '-U', '-f', fmt, '-F', fmt, q, t]);
    if (cmp.status !== 0) problems.push(`qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
    if (mode === 'compressed') {
      const chk = qemuImg(['check', '-U', '-f', fmt, t]);
      if (chk.status !== 0) problems.push(`qemu-img check of tsimg's output: ${chk.stdout}${chk.stderr}`);
      const sq = statSync(q).size;
      const st = statSync(t).size;
      if (Math.abs(sq - st) > sq * 0.01) problems.push(`size ${st} vs qemu's ${sq}: more than 1% apart`);
    }
  }
  return problems;
}

/** Copies `from` into the directory `dir` under `name`. */
export function copyInto(dir: string, from: string, name: string): void {
  copyFileSync(from, join(dir, name));
}
