/**
 * Cross-checks of `tsimg dd` against `qemu-img dd` (QEMU 7.2): the output files must be
 * byte-identical (raw and qcow2 outputs), and messages and exit statuses the same, over bs /
 * count / skip combinations including qemu's quirks (count counts skipped blocks too, a skip past
 * the end makes an empty image with a warning). Needs `npm run build` first.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describeQemu, qemuImg, tempDir, tsimg, type RunResult } from '../../../test-images/qemu.js';

let dir = '';
let cleanup = (): void => {};

function sh(cmd: string, ...args: string[]): void {
  execFileSync(cmd, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

function asOurs(r: RunResult, theirOut: string, ourOut: string): RunResult {
  const fix = (s: string) =>
    s.replaceAll('qemu-img:', 'tsimg:').replaceAll("Try 'qemu-img --help'", "Try 'tsimg --help'").replaceAll(theirOut, ourOut);
  return { stdout: r.stdout, stderr: fix(r.stderr), status: r.status };
}

/** Runs both with `of=` pointing at different files; compares streams, status and the files. */
function expectSame(args: string[]): void {
  for (const f of ['q.out', 't.out']) rmSync(join(dir, f), { force: true });
  const theirs = qemuImg(['dd', ...args, 'of=q.out'], { cwd: dir });
  const ours = tsimg(['dd', ...args, 'of=t.out'], { cwd: dir });
  expect(ours, args.join(' ')).toEqual(asOurs(theirs, 'q.out', 't.out'));
  expect(existsSync(join(dir, 't.out')), args.join(' ')).toBe(existsSync(join(dir, 'q.out')));
  if (existsSync(join(dir, 'q.out'))) {
    const same = Buffer.compare(readFileSync(join(dir, 'q.out')), readFileSync(join(dir, 't.out'))) === 0;
    expect(same, `output bytes of dd ${args.join(' ')}`).toBe(true);
  }
}

describeQemu('tsimg dd vs qemu-img dd', () => {
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-dd-'));
    writeFileSync(join(dir, 'in.bin'), randomBytes(5000));
    sh('truncate', '-s', '3M', 'sparse.raw');
    const fd = openSync(join(dir, 'sparse.raw'), 'r+');
    writeSync(fd, randomBytes(7000), 0, 7000, 2_500_000);
    writeSync(fd, Buffer.from('hello'), 0, 5, 1_500_000);
    closeSync(fd);
    sh('qemu-img', 'create', '-q', '-f', 'qcow2', 'src.qcow2', '4M');
    sh('qemu-io', '-c', 'write -P 1 0 1M', '-c', 'write -z 1M 64k', '-c', 'write -c -P 2 2M 128k', 'src.qcow2');
  });
  afterAll(() => cleanup());

  it('writes the same raw output', () => {
    for (const ops of [
      ['bs=100', 'count=3'],
      ['bs=100', 'count=3', 'skip=1'],
      ['bs=1000', 'skip=5'],
      ['bs=1000', 'skip=10'],
      ['bs=1k'],
      ['bs=4k', 'count=1'],
      ['count=0'],
      ['skip=100'],
      ['bs=300', 'count=7', 'skip=2'],
    ]) {
      expectSame(['-f', 'raw', 'if=in.bin', ...ops]);
    }
    for (const src of ['sparse.raw', 'src.qcow2']) {
      expectSame([`if=${src}`]);
      expectSame([`if=${src}`, 'bs=1M', 'skip=1']);
      expectSame([`if=${src}`, 'bs=64k', 'count=30', 'skip=3']);
    }
  });

  it('writes the same qcow2 output, byte for byte', () => {
    expectSame(['-O', 'qcow2', 'if=src.qcow2']);
    expectSame(['-O', 'qcow2', 'if=sparse.raw', 'bs=1M', 'skip=1']);
    expectSame(['-O', 'qcow2', '-f', 'raw', 'if=in.bin', 'bs=300', 'count=7', 'skip=2']);
    expectSame(['-O', 'qcow2', 'if=src.qcow2', 'bs=1000', 'count=100']);
    expectSame(['--image-opts', 'if=driver=qcow2,file.filename=src.qcow2', 'bs=64k']);
  });

  it('creates the output through its format: -O file is raw, -O luks needs a key secret', () => {
    expectSame(['-O', 'file', 'if=src.qcow2']);
    expectSame(['-O', 'file', '-f', 'raw', 'if=in.bin', 'bs=300', 'count=7']);
    expectSame(['-O', 'luks', 'if=in.bin']);
    expectSame(['--object', 'secret,id=s0,data=x', '-O', 'luks', 'if=in.bin']);
  });

  it('fails like qemu-img', () => {
    expectSame(['if=missing']);
    expectSame(['-O', 'foo', 'if=in.bin']);
    expectSame(['-O', 'http', 'if=in.bin']);
    expectSame(['if=in.bin', 'bs=0']);
    expectSame(['if=in.bin', 'bs=1x']);
    expectSame(['if=in.bin', 'count=-1']);
    expectSame(['if=in.bin', 'foo']);
    expectSame(['if=in.bin', 'bar=1']);
    expectSame(['-x', 'if=in.bin']);
    const theirs = qemuImg(['dd', 'if=in.bin'], { cwd: dir });
    expect(tsimg(['dd', 'if=in.bin'], { cwd: dir })).toEqual(asOurs(theirs, '', ''));
  });
});
