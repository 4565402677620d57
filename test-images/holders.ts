/**
 * Background qemu-io processes that hold an image's locks, for the tests of what tsimg does with
 * an image in use. A holder is known to be ready from /proc/locks, never by probing the image
 * with qemu-img: a probe such as `qemu-img info` unshares "write" while it is open, and a
 * read-write qemu-io starting in that window fails on the probe's lock and exits 1 (this failed
 * the suite under load).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import { resolve } from 'node:path';

/** One line of /proc/locks on a file: its kind (OFDLCK, POSIX) and the bytes it covers. */
export interface HeldLock {
  readonly kind: string;
  readonly bytes: number[];
}

/** The locks on `file` (any owner), from /proc/locks. */
export function procLocks(file: string): HeldLock[] {
  const ino = fs.statSync(file).ino;
  const out: HeldLock[] = [];
  for (const line of fs.readFileSync('/proc/locks', 'utf8').split('\n')) {
    const f = line.trim().split(/\s+/); // "1: OFDLCK ADVISORY READ -1 fe:00:123 100 101"
    if (f.length < 8 || Number(f[5]!.split(':')[2]) !== ino) continue;
    const [start, end] = [Number(f[6]), Number(f[7])];
    out.push({ kind: f[1]!, bytes: Array.from({ length: end - start + 1 }, (_, i) => start + i) });
  }
  return out;
}

/** The bytes locked on `file` (any owner), sorted. */
export const heldBytes = (file: string): number[] =>
  procLocks(file)
    .flatMap((l) => l.bytes)
    .sort((a, b) => a - b);

/**
 * Starts `qemu-io ARGS -c 'sleep 600000' FILE` and resolves once the locks on `file` have grown
 * and stayed the same for 50 ms (qemu takes and changes them in steps while it opens). A holder
 * that exits or takes no lock within 5 s rejects with what it printed. `file` is resolved
 * against `cwd` when given.
 */
export async function holdWithQemuIo(args: readonly string[], file: string, cwd?: string): Promise<ChildProcess> {
  const path = resolve(cwd ?? '.', file);
  const before = heldBytes(path).join();
  const child = spawn('qemu-io', [...args, '-c', 'sleep 600000', file], { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const what = `qemu-io ${[...args, file].join(' ')}`;
  let last = before;
  let stableSince = 0;
  for (let waited = 0; waited < 5000; waited += 10) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}) before it held the image: ${err.trim()}`);
    }
    const now = heldBytes(path).join();
    if (now !== last) [last, stableSince] = [now, waited];
    else if (now !== before && waited - stableSince >= 50) return child;
    await new Promise((r) => setTimeout(r, 10));
  }
  await killAndWait(child);
  throw new Error(`${what} took no lock within 5 s: ${err.trim()}`);
}

/** Kills a child and waits for its exit; one that is gone already has emitted its 'exit'. */
export async function killAndWait(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}
