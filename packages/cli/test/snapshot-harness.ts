/**
 * The cross-check harness of the `tsimg snapshot` suites: a command sequence run through
 * qemu-img on one copy of an image and through tsimg on another, compared step by step (the
 * DATE column of `-l` masked) and at the end byte for byte (the snapshot table's date fields
 * masked), plus qemu-img check of tsimg's image and every snapshot read back by qemu-img.
 * tsimg runs in-process here (main), to keep the suites fast; the messages suite spawns the
 * real command.
 */
import { expect } from 'vitest';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '@tsimg/cli';
import { must, qemuAsTsimg, qemuImg, type RunResult } from '../../../test-images/qemu.js';

/** The image file with date_sec / date_nsec of every snapshot table entry zeroed. */
export function maskedImage(path: string): Buffer {
  const b = readFileSync(path);
  const count = b.readUInt32BE(60);
  let at = Number(b.readBigUInt64BE(64));
  for (let i = 0; i < count; i++) {
    at = Math.ceil(at / 8) * 8;
    b.fill(0, at + 16, at + 24);
    at += 40 + b.readUInt32BE(at + 36) + b.readUInt16BE(at + 12) + b.readUInt16BE(at + 14);
  }
  return b;
}

/** A result with the DATE column of snapshot lists masked (qemu and tsimg ran a moment apart). */
export function maskDates(r: RunResult): RunResult {
  return { ...r, stdout: r.stdout.replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, 'YYYY-MM-DD hh:mm:ss') };
}

/** One step of a sequence: a snapshot command (run by each tool) or qemu-io writes (run on both). */
export type Step = { snap: string[] } | { io: string[] };

/** `tsimg snapshot args` in-process, in `cwd`. */
async function tsimgSnapshot(args: string[], cwd: string): Promise<RunResult> {
  let stdout = '';
  let stderr = '';
  const home = process.cwd();
  process.chdir(cwd);
  try {
    const status = await main(['snapshot', ...args], { stdout: (t) => void (stdout += t), stderr: (t) => void (stderr += t), isTTY: false });
    return { stdout, stderr, status };
  } finally {
    process.chdir(home);
  }
}

/** Runs `steps` on copies of `image` in `dir`, qemu-img on q.qcow2 and tsimg on t.qcow2. */
export async function runBoth(dir: string, image: string, steps: readonly Step[]): Promise<void> {
  const q = join(dir, 'q.qcow2');
  const t = join(dir, 't.qcow2');
  copyFileSync(join(dir, image), q);
  copyFileSync(join(dir, image), t);
  for (const step of steps) {
    if ('io' in step) {
      for (const f of [q, t]) must('qemu-io', [...step.io.flatMap((c) => ['-c', c]), f]);
      continue;
    }
    const theirs = maskDates(qemuAsTsimg(qemuImg(['snapshot', ...step.snap, q], { cwd: dir })));
    const ours = maskDates(await tsimgSnapshot([...step.snap, t], dir));
    expect(ours, step.snap.join(' ')).toEqual(theirs);
  }
  expect(maskedImage(t).equals(maskedImage(q)), 'images identical apart from the dates').toBe(true);
  const check = qemuImg(['check', t]);
  expect(check.stdout + check.stderr).toContain('No errors were found on the image.');
  const names = qemuImg(['snapshot', '-l', q]).stdout.split('\n').slice(2).filter((l) => l !== '').map((l) => l.split(/\s+/)[1]!);
  for (const name of names) {
    for (const [src, out] of [[q, 'qs.raw'], [t, 'ts.raw']] as const) {
      must('qemu-img', ['convert', '-O', 'raw', '-l', `snapshot.name=${name}`, src, join(dir, out)]);
    }
    expect(readFileSync(join(dir, 'ts.raw')).equals(readFileSync(join(dir, 'qs.raw'))), `snapshot ${name}`).toBe(true);
  }
}

/** Several snapshots, writes between them, applies in any order, deletes by name and ID. */
export const MULTI_LEVEL: readonly Step[] = [
  { snap: ['-l'] },
  { snap: ['-c', 's1'] },
  { io: ['write -P 3 512k 128k', 'write -z 2M 32k'] },
  { snap: ['-c', 's2'] },
  { io: ['write -P 4 3M 64k', 'discard 0 64k'] },
  { snap: ['-a', 's1'] },
  { snap: ['-c', 's3'] },
  { snap: ['-l'] },
  { snap: ['-d', 's2'] },
  { snap: ['-a', '3'] },
  { io: ['write -P 5 100k 300k'] },
  { snap: ['-c', 's1'] }, // a second snapshot called s1
  { snap: ['-a', 's1'] }, // the first of them
  { snap: ['-d', '3'] }, // -d takes names only: not found
  { snap: ['-d', 's1'] },
  { snap: ['-a', 's4'] },
  { snap: ['-l'] },
  { snap: ['-d', 's3'] },
  { snap: ['-d', 's1'] },
  { snap: ['-l'] },
];


/** A layout of the image a multi-level sequence runs on. */
export interface LayoutCase {
  name: string;
  /** qemu-img create's -o list. */
  options: string;
  /** The image is bk.qcow2 (4 MiB of data) converted with -c, so its clusters are compressed. */
  compressed?: boolean;
}

/**
 * MULTI_LEVEL on an image of layout `c` in `dir` (which holds bk.qcow2, 4 MiB of 0x09), after
 * data, zero and discard writes made by qemu-io.
 */
export async function multiLevelCase(dir: string, c: LayoutCase): Promise<void> {
  const img = join(dir, 'base.qcow2');
  if (c.compressed) must('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', c.options, join(dir, 'bk.qcow2'), img]);
  else must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', c.options, img, '4M']);
  must('qemu-io', ['-c', 'write -P 1 0 1M', '-c', 'write -P 2 2M 64k', '-c', 'write -z 1M 128k', img]);
  await runBoth(dir, 'base.qcow2', MULTI_LEVEL);
}

/** A directory with bk.qcow2 (4 MiB of 0x09), for multiLevelCase. */
export function makeBackingImage(dir: string): void {
  must('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'bk.qcow2'), '4M']);
  must('qemu-io', ['-c', 'write -P 9 0 4M', join(dir, 'bk.qcow2')]);
}
