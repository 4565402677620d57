/**
 * What the resize cross-checks share: fixtures made by a shell line in a fresh directory, and
 * running `resize` through qemu-img and tsimg on two copies of one fixture, expecting the same
 * stdout, stderr and exit status and byte-identical files afterwards.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { expectSameAsQemu, tempDir, type RunResult } from '../../../test-images/qemu.js';

/** A scratch root for one test file's fixtures and copies. */
export class ResizeBench {
  readonly root: string;
  readonly cleanup: () => void;
  #serial = 0;

  constructor(prefix: string) {
    ({ dir: this.root, cleanup: this.cleanup } = tempDir(prefix));
  }

  /** A fresh directory under the root. */
  newDir(kind: string): string {
    const dir = join(this.root, `${kind}${this.#serial++}`);
    mkdirSync(dir);
    return dir;
  }

  /** Runs `setup` (a shell line) in a fresh directory; returns it. */
  fixture(setup: string): string {
    const dir = this.newDir('f');
    execFileSync('sh', ['-c', setup], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
    return dir;
  }

  /** Two copies of `src`, for qemu-img and for tsimg. */
  copies(src: string): { qemu: string; tsimg: string } {
    const qemu = join(this.root, `q${this.#serial}`);
    const tsimg = join(this.root, `t${this.#serial++}`);
    cpSync(src, qemu, { recursive: true });
    cpSync(src, tsimg, { recursive: true });
    return { qemu, tsimg };
  }

  /** Runs `resize args` through both tools on copies of `src`; same output, status and files. Returns tsimg's result. */
  expectSameResize(src: string, args: string[]): RunResult {
    return expectSameResizeIn(this.copies(src), args);
  }

  /** Every command line of `argLists` on one fixture. */
  expectAllSame(setup: string, argLists: string[][]): void {
    const src = this.fixture(setup);
    for (const args of argLists) this.expectSameResize(src, args);
  }
}

/** `resize args` through qemu-img in `dirs.qemu` and tsimg in `dirs.tsimg`; then the files compared. */
export function expectSameResizeIn(dirs: { qemu: string; tsimg: string }, args: string[], label = `resize ${args.join(' ')}`): RunResult {
  const result = expectSameAsQemu(['resize', ...args], dirs, label);
  expectSameFiles(dirs, label);
  return result;
}

/** Every file of `dirs.qemu` is byte-identical to the one of the same name in `dirs.tsimg`. */
export function expectSameFiles(dirs: { qemu: string; tsimg: string }, label: string): void {
  expect(readdirSync(dirs.tsimg).sort(), label).toEqual(readdirSync(dirs.qemu).sort());
  for (const name of readdirSync(dirs.qemu)) {
    const same = Buffer.compare(readFileSync(join(dirs.qemu, name)), readFileSync(join(dirs.tsimg, name))) === 0;
    expect(same, `${name} after ${label}`).toBe(true);
  }
}
