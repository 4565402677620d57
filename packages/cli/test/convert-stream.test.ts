/**
 * `tsimg convert` to a stream (`-`, a FIFO, /dev/stdout on a pipe) and from standard input,
 * where qemu-img convert fails ("Could not resize file"): qemu-img check must call every
 * qcow2 written forward clean, and qemu-img compare must find it identical to the source —
 * for the option sets that change the layout (cluster size, refcount width, extended L2, v2,
 * compression with zlib and zstd). Also the refusals a stream target gives, in one line, and a
 * reader that goes away. Needs `npm run build` first.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeQemu, must, qemuImg, shIn, tempDir, tsimg, tsimgBin } from '../../../test-images/qemu.js';

let dir = '';
let cleanup = (): void => {};

/** Runs a shell pipeline in the test directory, with $T the tsimg command. */
function sh(script: string): { status: number; stderr: string } {
  const r = spawnSync('sh', ['-c', script], {
    cwd: dir,
    encoding: 'utf8',
    env: { ...process.env, T: `${process.execPath} ${tsimgBin}` },
  });
  return { status: r.status ?? -1, stderr: r.stderr };
}

/** qemu-img check is clean and compare finds `out` identical to `src`. */
function expectCleanCopy(src: string, out: string): void {
  const check = qemuImg(['check', out], { cwd: dir });
  expect([out, check.status, check.stderr]).toEqual([out, 0, '']);
  const cmp = qemuImg(['compare', src, out], { cwd: dir });
  expect([out, cmp.stdout, cmp.status]).toEqual([out, 'Images are identical.\n', 0]);
}

describeQemu('tsimg convert to and from streams', () => {
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-stream-'));
    shIn(dir, 'qemu-img', 'create', '-q', '-f', 'qcow2', 'base.qcow2', '24M');
    shIn(dir, 'qemu-io', '-c', 'write -P 1 0 100k', '-c', 'write -P 2 5M 1M', '-c', 'write -z 7M 1M', 'base.qcow2');
    shIn(dir, 'qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'src.qcow2', '24M');
    shIn(dir, 'qemu-io', '-c', 'write -P 3 5M 64k', '-c', 'write -P 4 23M 4k', '-c', 'write -c -P 5 12M 128k', 'src.qcow2');
    // random data too, so compression leaves some clusters uncompressed
    shIn(dir, 'sh', '-c', 'head -c 200000 /dev/urandom > rnd && qemu-io -c "write -s rnd 9M 200000" src.qcow2 >/dev/null');
    shIn(dir, 'qemu-img', 'convert', '-O', 'raw', 'src.qcow2', 'src.raw');
  });
  afterAll(() => cleanup());

  it('qemu-img itself cannot write to a pipe (the reason for this)', () => {
    const r = sh('qemu-img convert -O raw src.qcow2 /dev/stdout | cat >/dev/null');
    expect(r.stderr).toMatch(/Could not resize file/);
  });

  it('writes raw to standard output (several sources concatenated, with -r and --salvage too)', () => {
    expect(sh('$T convert -r 100M --salvage -O raw src.raw src.qcow2 - | cat > cat.raw').status).toBe(0);
    const one = readFileSync(join(dir, 'src.raw'));
    expect(readFileSync(join(dir, 'cat.raw')).equals(Buffer.concat([one, one]))).toBe(true);
    expect(sh('$T convert -O raw src.qcow2 - | cat > out.raw').status).toBe(0);
    expect(readFileSync(join(dir, 'out.raw')).equals(readFileSync(join(dir, 'src.raw')))).toBe(true);
    expect(sh('$T convert -O raw src.qcow2 /dev/stdout | cat > out2.raw').status).toBe(0);
    expect(readFileSync(join(dir, 'out2.raw')).equals(readFileSync(join(dir, 'src.raw')))).toBe(true);
  });

  it.each([
    ['', ''],
    ['-c', ''],
    ['', 'cluster_size=4096'],
    ['-c', 'cluster_size=2M'],
    ['', 'extended_l2=on'],
    ['-c', 'extended_l2=on,cluster_size=128k'],
    ['-c', 'refcount_bits=1'],
    ['', 'refcount_bits=64,lazy_refcounts=on'],
    ['-c', 'compat=0.10'],
    ['-c', 'compression_type=zstd'],
  ])('writes qcow2 %s -o %s forward that qemu-img calls clean and identical', (c, o) => {
    const args = [c, o ? `-o ${o}` : ''].join(' ');
    expect(sh(`$T convert ${args} -O qcow2 src.qcow2 - | cat > out.qcow2`)).toEqual({ status: 0, stderr: '' });
    expectCleanCopy('src.qcow2', 'out.qcow2');
  });

  it('writes into a FIFO, with -p on stdout', () => {
    must('mkfifo', [join(dir, 'fifo')]);
    const r = sh('cat fifo > fifo.qcow2 & $T convert -p -O qcow2 src.qcow2 fifo > progress.txt; s=$?; wait; exit $s');
    expect(r).toEqual({ status: 0, stderr: '' });
    expectCleanCopy('src.qcow2', 'fifo.qcow2');
    expect(readFileSync(join(dir, 'progress.txt'), 'utf8')).toMatch(/\(100\.00\/100%\)\r\n$/);
  });

  it('moves -p text to stderr when the image goes to stdout', () => {
    const r = sh('$T convert -p -O raw src.qcow2 - | cmp - src.raw');
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/\(100\.00\/100%\)\r\n$/);
  });

  it('reads a raw image from standard input (a pipe), into a file or a stream', () => {
    expect(sh('cat src.raw | $T convert -f raw -O qcow2 - in.qcow2')).toEqual({ status: 0, stderr: '' });
    expectCleanCopy('src.raw', 'in.qcow2');
    // stdin → compressed qcow2 on a pipe → back to raw from stdin
    expect(sh('cat src.raw | $T convert -c -O qcow2 /dev/stdin - | $T convert -O raw - - | cmp - src.raw').status).toBe(0);
    // a redirect from a file is read as the file
    expect(sh('$T convert -f raw -O qcow2 - redir.qcow2 < src.raw').status).toBe(0);
    expectCleanCopy('src.raw', 'redir.qcow2');
  });

  it('refuses what a stream target cannot do, in one line', () => {
    const cases: [string, string][] = [
      ['-n -O raw src.raw -', 'tsimg: A stream target cannot be opened as an existing image (-n)\n'],
      ['-B base.qcow2 -F qcow2 -O qcow2 src.qcow2 -', 'tsimg: A backing file is not supported when writing a stream\n'],
      ['-o preallocation=full -O qcow2 src.qcow2 -', 'tsimg: Preallocation is not supported when writing a stream\n'],
      ['-o preallocation=falloc -O raw src.qcow2 -', 'tsimg: Preallocation is not supported when writing a stream\n'],
      ['--bitmaps -O qcow2 src.qcow2 -', 'tsimg: Copying bitmaps to a stream target is not supported\n'],
      ['-O qcow2 src.qcow2 src.raw -', 'tsimg: A qcow2 stream is written from one source image\n'],
      ['--salvage -O qcow2 src.qcow2 -', 'tsimg: --salvage is not supported when writing a qcow2 stream\n'],
      ['-r 1M -O qcow2 src.qcow2 -', 'tsimg: A rate limit is not supported when writing a qcow2 stream\n'],
    ];
    for (const [args, stderr] of cases) {
      const r = tsimg(['convert', ...args.split(' ')], { cwd: dir });
      expect([args, r.status, r.stderr, r.stdout]).toEqual([args, 1, stderr, '']);
    }
  });

  it('fails in one line when the reader goes away', () => {
    const r = sh('$T convert -O qcow2 src.qcow2 - | head -c 1000 > /dev/null; exit 0');
    expect(r.stderr).toBe('tsimg: Could not write to the output stream: Broken pipe\n');
  });
});
