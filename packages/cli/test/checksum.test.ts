/**
 * `tsimg checksum`: blksum's output line (`<hex>  <filename>`), the value of a plain blkhash
 * reference over qemu-img's raw conversion for every format and allocation of one content,
 * `-f`, `--image-opts`, one-line errors, `-p` text and `--progress=json` lines — and the JSON
 * progress of the other long commands (convert, compare, commit, rebase, bench), which must end
 * at done = total. Needs `npm run build` first.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { copyWithCorruptL1, describeQemu, shIn, tempDir, tsimg } from '../../../test-images/qemu.js';

let dir = '';
let cleanup = (): void => {};

function reference(bytes: Uint8Array): string {
  const outer = createHash('sha256');
  for (let i = 0; i < bytes.length; i += 65536) outer.update(createHash('sha256').update(bytes.subarray(i, i + 65536)).digest());
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(bytes.length));
  return outer.update(len).digest('hex');
}

/** The JSON progress lines of stderr. */
function jsonLines(stderr: string): { done: number; total: number; percent: number; rate: number }[] {
  return stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
}

/** JSON lines that end at done = total (`total` when given: commit's is the job's, not the size). */
function expectJsonProgress(stderr: string, total?: number): void {
  const lines = jsonLines(stderr);
  expect(lines.length).toBeGreaterThan(0);
  for (const l of lines) {
    expect(Object.keys(l)).toEqual(['done', 'total', 'percent', 'rate']);
    expect(l.total).toBe(total ?? lines.at(-1)!.total);
    expect(l.rate).toBeGreaterThanOrEqual(0);
  }
  expect(lines.map((l) => l.done)).toEqual([...lines.map((l) => l.done)].sort((a, b) => a - b));
  expect(lines.at(-1)!.done).toBe(lines.at(-1)!.total);
  expect(lines.at(-1)!.total).toBeGreaterThan(0);
}

describeQemu('tsimg checksum', () => {
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-checksum-cli-'));
    shIn(dir, 'qemu-img', 'create', '-q', '-f', 'qcow2', 'base.qcow2', '9M');
    shIn(dir, 'qemu-io', '-c', 'write -P 7 0 200k', '-c', 'write -P 8 3M 64k', 'base.qcow2');
    shIn(dir, 'qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', '9M');
    shIn(dir, 'qemu-io', '-c', 'write -P 9 100k 64k', '-c', 'write -z 3M 4k', 'top.qcow2');
    shIn(dir, 'qemu-img', 'convert', '-O', 'raw', 'top.qcow2', 'top.raw');
    shIn(dir, 'qemu-img', 'convert', '-c', '-O', 'qcow2', 'top.qcow2', 'comp.qcow2');
    shIn(dir, 'qemu-img', 'convert', '-O', 'qcow2', '-o', 'cluster_size=4096', 'top.qcow2', 'small.qcow2');
  });
  afterAll(() => cleanup());

  it('is listed in --help and answers -h', () => {
    expect(tsimg(['--help']).stdout).toMatch(/^ {2}checksum \[--object objectdef\] .*filename$/m);
    expect(tsimg(['checksum', '-h']).stdout).toMatch(/^usage: tsimg checksum /);
  });

  it('prints blksum\'s line with the same value for every format and allocation of one content', () => {
    const want = reference(new Uint8Array(readFileSync(join(dir, 'top.raw'))));
    for (const name of ['top.qcow2', 'top.raw', 'comp.qcow2', 'small.qcow2']) {
      const r = tsimg(['checksum', name], { cwd: dir });
      expect([name, r.status, r.stdout, r.stderr]).toEqual([name, 0, `${want}  ${name}\n`, '']);
    }
    const opts = tsimg(['checksum', '--image-opts', 'driver=qcow2,file.filename=comp.qcow2'], { cwd: dir });
    expect(opts.stdout).toBe(`${want}  driver=qcow2,file.filename=comp.qcow2\n`);
    // -f raw of a qcow2 file: the file's own bytes (zero-padded to a sector)
    const file = readFileSync(join(dir, 'comp.qcow2'));
    const padded = new Uint8Array(Math.ceil(file.length / 512) * 512);
    padded.set(file);
    expect(tsimg(['checksum', '-f', 'raw', 'comp.qcow2'], { cwd: dir }).stdout).toBe(`${reference(padded)}  comp.qcow2\n`);
  });

  it('fails in one line', () => {
    copyWithCorruptL1(dir, 'comp.qcow2', 'corrupt.qcow2');
    const cases: [string[], number, RegExp][] = [
      [['checksum', 'missing.qcow2'], 1, /^tsimg: Could not open 'missing.qcow2': Could not open 'missing.qcow2': No such file or directory\n$/],
      [['checksum'], 1, /^tsimg: Expecting one image file name\nTry 'tsimg --help' for more information\n$/],
      [['checksum', '-T', 'bogus', 'top.raw'], 1, /^tsimg: Invalid source cache option: bogus\n$/],
      [['checksum', '--progress=xml', 'top.raw'], 1, /^tsimg: --progress must be used with human or json as argument.\n$/],
      [['checksum', '-f', 'vmdk', 'top.raw'], 1, /^tsimg: .*\n$/],
      [['checksum', 'corrupt.qcow2'], 1, /^(qcow2: .*\n)?tsimg: Error while computing the checksum of corrupt.qcow2: .*\n$/],
    ];
    for (const [args, status, stderr] of cases) {
      const r = tsimg(args, { cwd: dir });
      expect([args, r.status, r.stdout]).toEqual([args, status, '']);
      expect(r.stderr).toMatch(stderr);
    }
  });

  it('shows -p text before the line, and --progress=json lines on stderr', () => {
    const p = tsimg(['checksum', '-p', 'top.qcow2'], { cwd: dir });
    expect(p.stdout).toMatch(/^ {4}\(0\.00\/100%\)\r.* {4}\(100\.00\/100%\)\r\n[0-9a-f]{64} {2}top\.qcow2\n$/s);
    const j = tsimg(['checksum', '--progress=json', 'top.qcow2'], { cwd: dir });
    expect(j.stdout).toMatch(/^[0-9a-f]{64} {2}top\.qcow2\n$/);
    expectJsonProgress(j.stderr, 9 * 1024 * 1024);
  });

  it('gives convert, compare, commit, rebase and bench JSON progress too', () => {
    const size = 9 * 1024 * 1024;
    const run = (args: string[]) => {
      const r = tsimg(args, { cwd: dir });
      expect([args, r.status]).toEqual([args, 0]);
      return r;
    };
    expectJsonProgress(run(['convert', '--progress=json', '-O', 'qcow2', 'top.qcow2', 'conv.qcow2']).stderr, size);
    expectJsonProgress(run(['compare', '--progress=json', 'top.qcow2', 'conv.qcow2']).stderr, size);
    shIn(dir, 'qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'conv.qcow2', '-F', 'qcow2', 'over.qcow2');
    shIn(dir, 'qemu-io', '-c', 'write -P 3 1M 1M', 'over.qcow2');
    expectJsonProgress(run(['rebase', '--progress=json', '-b', 'base.qcow2', '-F', 'qcow2', 'over.qcow2']).stderr, size);
    expectJsonProgress(run(['commit', '--progress=json', 'over.qcow2']).stderr);
    expectJsonProgress(run(['bench', '--progress=json', '-c', '300', '-s', '4k', 'top.raw']).stderr, 300 * 4096);
    // -p text is unchanged beside it
    const both = run(['compare', '-p', '--progress=json', 'top.raw', 'conv.qcow2']);
    expect(both.stdout).toBe(run(['compare', '-p', 'top.raw', 'conv.qcow2']).stdout);
    expect(both.stdout).toMatch(/^ {4}\(0\.00\/100%\)\r.*\(100\.00\/100%\)\rImages are identical\.\n\n$/s);
  });
});
