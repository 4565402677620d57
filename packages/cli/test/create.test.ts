/**
 * Cross-checks of `tsimg create` against `qemu-img create` (QEMU 7.2): for each command line,
 * run in two copies of the same fixture directory, stdout, stderr (qemu-img's name read as
 * tsimg's), the exit status, the set of files left behind and every file's bytes must be equal.
 *
 * Needs `npm run build` first (spawns packages/cli/bin/tsimg.js).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { closeSync, cpSync, mkdirSync, openSync, readdirSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describeQemu, expectSameAsQemu, qemuImg, tempDir, tsimg } from '../../../test-images/qemu.js';

/** Command lines (after `create`) whose whole behaviour must match, errors included. */
const CASES: string[][] = [
  ["x.raw", "0"],
  ["x.raw", "1"],
  ["x.raw", "1.5G"],
  ["x.raw", "1.k"],
  ["x.raw", "1..5"],
  ["x.raw", "0x1k"],
  ["x.raw", "1e3"],
  ["x.raw", "1kb"],
  ["x.raw", "8E"],
  ["x.raw", "7E"],
  ["x.raw", "1p"],
  ["x.raw", "9223372036854775807"],
  ["x.raw", "99999999999999999999"],
  ["x.raw", "99999999999999999999k"],
  ["x.raw", "1.999999999999999999999k"],
  ["x.raw", "1.5b"],
  ["x.raw", "abc"],
  ["x.raw", ""],
  ["x.raw", " 1G"],
  ["x.raw", "+1G"],
  ["x.raw", "1.5e"],
  ["-f", "raw", "x.raw", "1M", "extra"],
  ["-f", "raw"],
  ["-f", "qcow2"],
  ["-x", "x.raw", "1M"],
  ["-f"],
  ["--foo", "x.raw"],
  ["-o", "", "x.raw", "1M"],
  ["-o", ",a", "x.raw", "1M"],
  ["-o", "a,", "x.raw", "1M"],
  ["-o", "size=1M,,", "x.raw"],
  ["-o", "size=1M,,,", "x.raw"],
  ["x.raw", "1M", "-f", "qcow2"],
  ["-q", "-f", "qcow2", "q.qcow2", "1M"],
  ["-f", "raw", "-o", "help", "x.raw"],
  ["-f", "raw", "-o", "help"],
  ["-f", "qcow2", "-o", "help", "x.qcow2"],
  ["-f", "qcow2", "-o", "?", "x.qcow2"],
  ["-f", "qcow2", "-o", "size=1M,help", "x.qcow2"],
  ["-f", "qcow2", "-o", "size=help", "x.qcow2"],
  ["-f", "foo", "x", "1M"],
  ["-f", "foo", "-o", "help"],
  ["-f", "bochs", "x", "1M"],
  ["-f", "raw", "-o", "preallocation=metadata", "x.raw", "1M"],
  ["-f", "raw", "-o", "preallocation=falloc", "x.raw", "1M"],
  ["-f", "raw", "-o", "preallocation=full", "x.raw", "1M"],
  ["-f", "raw", "-o", "preallocation=foo", "x.raw", "1M"],
  ["-f", "raw", "-o", "preallocation=full,nocow=on,extent_size_hint=0", "x.raw", "1M"],
  ["-f", "raw", "-o", "cluster_size=1k", "x.raw", "1M"],
  ["-f", "raw", "-o", "size=1k,size=2k", "x.raw"],
  ["-f", "raw", "-o", "size=1k", "x.raw", "1k"],
  ["-f", "raw", "-b", "base.raw", "-F", "raw", "x.raw", "1M"],
  ["-f", "raw", "-F", "raw", "x.raw", "1M"],
  ["-f", "raw", "x.raw"],
  ["-f", "file", "x.file", "1M"],
  ["-f", "qcow2", "x.qcow2"],
  ["-f", "qcow2", "-o", "size=1G,size=2G", "x.qcow2"],
  ["-f", "qcow2", "-o", "size=abc", "x.qcow2"],
  ["-f", "qcow2", "-o", "size=16E", "x.qcow2"],
  ["-f", "qcow2", "-o", "size=9E", "x.qcow2"],
  ["-f", "qcow2", "-o", "size=8E", "x.qcow2"],
  ["-f", "qcow2", "-o", "size=18446744073709551615", "x.qcow2"],
  ["-f", "qcow2", "-o", "size=18446744073709551104", "x.qcow2"],
  ["-f", "qcow2", "x.qcow2", "9223372036854775296"],
  ["-f", "qcow2", "x.qcow2", "9223372036854775807"],
  ["-f", "qcow2", "x.qcow2", "7E"],
  ["-f", "qcow2", "x.qcow2", "1P"],
  ["-f", "qcow2", "x.qcow2", "0"],
  ["-f", "qcow2", "x.qcow2", "1"],
  ["-f", "qcow2", "x.qcow2", "1001"],
  ["-f", "qcow2", "x.qcow2", "100T"],
  ["-f", "qcow2", "-o", "compat=0.10", "x.qcow2", "1G"],
  ["-f", "qcow2", "-o", "compat=v2", "x.qcow2", "1G"],
  ["-f", "qcow2", "-o", "compat=1.1", "x.qcow2", "1G"],
  ["-f", "qcow2", "-o", "compat=v3", "x.qcow2", "1G"],
  ["-f", "qcow2", "-o", "compat=foo", "x.qcow2", "1G"],
  ["-f", "qcow2", "-o", "cluster_size=1000", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "cluster_size=256", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "cluster_size=4M", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "cluster_size=abc", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "cluster_size=4294967296", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "cluster_size=4295032832", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "refcount_bits=3", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "refcount_bits=128", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "refcount_bits=0", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "refcount_bits=abc", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "refcount_bits=-1", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "refcount_bits=0x10", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "refcount_bits=010", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "refcount_bits=99999999999999999999", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "refcount_bits=18446744073709551615", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "compat=0.10,refcount_bits=8", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "lazy_refcounts=foo", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "lazy_refcounts=yes", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "lazy_refcounts", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "nolazy_refcounts", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "extended_l2=on", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "compat=0.10,extended_l2=on", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "cluster_size=8k,extended_l2=on", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "cluster_size=16k,extended_l2=on", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "compression_type=zstd", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "compression_type=foo", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "compat=0.10,compression_type=zstd", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "compat=0.10,compression_type=zlib", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "data_file_raw=on", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "data_file=d.raw", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "compat=0.10,data_file=d.raw", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "data_file=d.raw,data_file_raw=on", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "data_file=/nonexist/d", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "preallocation=foo", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "preallocation=metadata", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "preallocation=falloc", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "preallocation=full", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encryption=on", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encryption=yes", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encryption=off", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encryption=on,encrypt.format=luks", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encryption=off,encrypt.format=luks,encrypt.key-secret=s", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encrypt.format=aes", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encrypt.format=luks", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encrypt.format=foo", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encrypt.key-secret=x", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encrypt.format=aes,encrypt.cipher-alg=aes-128", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=s", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encrypt.format=luks,compat=foo", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encrypt.format=luks,cluster_size=1000", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "encrypt.iter-time=abc", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "foo=bar", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "foo", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "x=1,y=2", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "size=1M,,x", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "nocow=on", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "extent_size_hint=1M", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "extent_size_hint=abc", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "compat=foo,compression_type=bar,preallocation=baz", "x.qcow2", "1M"],
  ["-f", "qcow2", "-o", "compression_type=bar,preallocation=baz", "x.qcow2", "1M"],
  ["-f", "qcow2", "-b", "base.qcow2", "x.qcow2"],
  ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "x.qcow2"],
  ["-f", "qcow2", "-b", "base.raw", "-F", "raw", "x.qcow2"],
  ["-f", "qcow2", "-b", "base.raw", "-F", "qcow2", "x.qcow2"],
  ["-f", "qcow2", "-b", "nonexist", "-F", "qcow2", "x.qcow2"],
  ["-f", "qcow2", "-b", "nonexist", "-F", "qcow2", "-u", "x.qcow2"],
  ["-f", "qcow2", "-b", "nonexist", "-F", "qcow2", "-u", "x.qcow2", "1M"],
  ["-f", "qcow2", "-b", "nonexist", "-u", "x.qcow2", "1M"],
  ["-f", "qcow2", "-b", "nonexist", "-F", "foo", "-u", "x.qcow2", "1M"],
  ["-f", "qcow2", "-b", "nonexist", "-F", "foo", "x.qcow2", "1M"],
  ["-f", "qcow2", "-F", "qcow2", "x.qcow2", "1M"],
  ["-f", "qcow2", "-b", "", "-F", "qcow2", "x.qcow2", "1M"],
  ["-f", "qcow2", "-b", "x.qcow2", "-F", "qcow2", "x.qcow2", "1M"],
  ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "backing_file=base.raw", "x.qcow2"],
  ["-f", "qcow2", "-o", "backing_file=base.raw,backing_fmt=raw", "x.qcow2"],
  ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "preallocation=metadata", "x.qcow2"],
  ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "preallocation=metadata,extended_l2=on", "x.qcow2"],
  ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "preallocation=full,extended_l2=on", "x.qcow2"],
  ["-f", "qcow2", "-o", "data_file_raw=on,backing_file=base.raw,backing_fmt=raw,data_file=d", "x.qcow2", "1M"],
  ["-f", "qcow2", "-b", "nonexist", "-F", "qcow2", "sub/o.qcow2"],
  ["-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "sub/o.qcow2"],
  ["-f", "qcow2", "-b", "b.qcow2", "-F", "raw", "sub/o2.qcow2"],
  ["-f", "qcow2", "-b", "sub", "-F", "raw", "o4.qcow2"],
  ["-f", "qcow2", "-o", "backing_file=x,,y", "-u", "-F", "raw", "x.qcow2", "1M"],
  ["-f", "qcow2", "o,x.qcow2", "1M"],
  ["-f", "qcow2", "foo:bar", "1M"],
  ["-f", "qcow2", "file:x.qcow2", "1M"],
  ["-f", "qcow2", "/nonexistdir/x.qcow2", "1M"],
  ["-f", "raw", "/nonexistdir/x.raw", "1M"],
  ["-f", "qcow2", "-o", "cluster_size=512", "-b", "base.qcow2", "-F", "qcow2", "x.qcow2"],
];

CASES.push(
  ['-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', 'sub/o3.qcow2'],
  ['-f', 'qcow2', '-b', 'junk.qcow2', '-F', 'qcow2', 'sub/o3.qcow2'],
  ['-f', 'qcow2', '-b', 'junk.qcow2', 'sub/o3.qcow2'],
  ['-f', 'qcow2', '-b', 'sub/mid.qcow2', '-F', 'qcow2', '-u', 'o3.qcow2'],
  ['-f', 'qcow2', '-b', 'withdata.qcow2', '-F', 'qcow2', 'o.qcow2'],
  ['-f', 'qcow2', '-b', 'chain.qcow2', '-F', 'qcow2', 'o.qcow2'],
  ['-f', 'qcow2', '-b', 'chain.qcow2', '-F', 'raw', 'o.qcow2'],
  ['-f', 'qcow2', '-b', 'base.qcow2', '-F', 'file', 'x.qcow2'],
  ['-f', 'qcow2', 'adir', '1M'],
  ['-f', 'raw', 'adir', '1M'],
  ['-f', 'qcow2', '-o', 'data_file=adir', 'x.qcow2', '1M'],
  ['-f', 'qcow2', '-o', 'data_file=x.qcow2', 'x.qcow2', '1M'],
  ['-f', 'qcow2', '-o', 'data_file=./x.qcow2', 'x.qcow2', '1M'],
  ['-f', 'qcow2', '-o', 'data_file=file:dd2.raw,preallocation=metadata', 'file:x.qcow2', '1M'],
  ['-f', 'qcow2', 'base.qcow2', '1M'],
  ['-qfqcow2', 'x.qcow2', '1M'],
  ['-qx', 'x.qcow2', '1M'],
  ['--help=x'],
  ['--obj', 'secret,id=x,data=y', 'x.raw', '1M'],
  ['-f', 'qcow2', '--', 'x.qcow2', '1M'],
  ['-f', 'qcow2', '-o', 'size=1M', '-o', 'cluster_size=4k', 'x.qcow2'],
  ['-f', 'qcow2', '-o', 'size=1M', '-o', ',', 'x.qcow2'],
  ['-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', '-o', 'backing_fmt=qcow2', 'x.qcow2'],
  ['-f', 'qcow2', '-o', 'backing_file=b.qcow2', '-F', 'qcow2', 'sub/x.qcow2'],
  ['-f', 'qcow2', '-b', './b.qcow2', '-F', 'qcow2', 'sub/x.qcow2'],
  ['-f', 'qcow2', '-b', 'b.qcow2', '-F', 'qcow2', './sub/x.qcow2'],
  ['-f', 'file', '-o', 'preallocation=full', 'x.raw', '1000'],
  ['-f', 'file', '-o', 'help'],
  ['-f', 'raw', '-o', 'preallocation=full', 'x.raw', '100T'],
  ['-f', 'qcow2', '-o', 'preallocation=metadata,extended_l2=on', 'x.qcow2', '3000'],
  ['-f', 'qcow2', '-o', 'preallocation=metadata,extended_l2=on,data_file=d.raw', 'x.qcow2', '1001k'],
);

/** Options crossed into a byte-level matrix of the "Formatting" line and the files. */
const QCOW2_OPTIONS = [
  '',
  'compat=0.10',
  'compat=v3,cluster_size=512',
  'cluster_size=2M,lazy_refcounts=on',
  'cluster_size=16k,extended_l2=on,compression_type=zstd',
  'refcount_bits=1',
  'refcount_bits=64,cluster_size=4k',
  'data_file=d.raw',
  'data_file=d.raw,data_file_raw=on,preallocation=falloc',
  'preallocation=metadata',
  'preallocation=falloc,cluster_size=4k',
  'preallocation=full,refcount_bits=8',
  'extended_l2=on,preallocation=metadata,backing_file=base.raw,backing_fmt=raw',
  'backing_file=base.qcow2,backing_fmt=qcow2,compat=0.10,cluster_size=1k',
  'backing_file=base.qcow2,backing_fmt=qcow2,lazy_refcounts=on',
];
const SIZES = ['0', '1001', '1.5M', '1T'];
for (const o of QCOW2_OPTIONS) {
  for (const size of SIZES) {
    if (o.includes('prealloc') && size === '1T') continue;
    CASES.push(['-f', 'qcow2', ...(o ? ['-o', o] : []), 'x.qcow2', size]);
  }
}
for (const p of ['off', 'falloc', 'full']) for (const size of ['0', '1', '1001', '1.5M']) CASES.push(['-o', `preallocation=${p}`, 'x.raw', size]);

let root = '';
let cleanup = (): void => {};
let template = '';

const SAMPLE = 4 * 1024 * 1024;

/** Up to 4 MiB of a file at `offset`. */
function chunk(path: string, offset: number): Buffer {
  const buf = Buffer.alloc(SAMPLE);
  const fd = openSync(path, 'r');
  try {
    return buf.subarray(0, readSync(fd, buf, 0, SAMPLE, offset));
  } finally {
    closeSync(fd);
  }
}

/**
 * Whether two files are equal: sizes, and the bytes — all of them up to 64 MiB, else the first
 * and last 4 MiB (the big ones here are sparse data files of 1 TiB, all holes).
 */
function sameFile(a: string, b: string): boolean {
  const size = statSync(a).size;
  if (statSync(b).size !== size) return false;
  const offsets = [];
  if (size <= 64 * 1024 * 1024) for (let o = 0; o < size; o += SAMPLE) offsets.push(o);
  else offsets.push(0, size - SAMPLE);
  return offsets.every((o) => chunk(a, o).equals(chunk(b, o)));
}

/** Every file under `dir`, relative, sorted. */
function files(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

describeQemu('tsimg create against qemu-img create', () => {
  beforeAll(() => {
    ({ dir: root, cleanup } = tempDir('tsimg-create-cli-'));
    template = join(root, 'template');
    mkdirSync(join(template, 'sub'), { recursive: true });
    for (const args of [
      ['-f', 'qcow2', 'base.qcow2', '10M'],
      ['-f', 'raw', 'base.raw', '1000'],
      ['-f', 'qcow2', 'sub/b.qcow2', '5M'],
      ['-f', 'qcow2', '-u', '-b', 'nonexist', '-F', 'qcow2', 'sub/mid.qcow2', '5M'],
      ['-f', 'qcow2', '-o', 'data_file=dd.raw', 'withdata.qcow2', '3M'],
      ['-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'chain.qcow2'],
    ]) {
      const r = qemuImg(['create', '-q', ...args], { cwd: template });
      if (r.status !== 0) throw new Error(r.stderr);
    }
    writeFileSync(join(template, 'sub', 'junk.qcow2'), 'junk\n');
    mkdirSync(join(template, 'adir'));
  });
  afterAll(() => cleanup());

  it.each(CASES.map((args, i) => [args.map((a) => (a === '' ? "''" : a)).join(' '), args, i] as const))(
    'create %s',
    (_name, args, i) => {
      const qdir = join(root, `q${i}`);
      const tdir = join(root, `t${i}`);
      cpSync(template, qdir, { recursive: true });
      cpSync(template, tdir, { recursive: true });
      expectSameAsQemu(['create', ...args], { qemu: qdir, tsimg: tdir });
      const names = files(qdir);
      expect(files(tdir)).toEqual(names);
      for (const name of names) {
        expect(sameFile(join(qdir, name), join(tdir, name)), `${name} differs`).toBe(true);
      }
      rmSync(qdir, { recursive: true, force: true });
      rmSync(tdir, { recursive: true, force: true });
    },
  );

  // qemu writes zeroes over the first block of a grown empty file (allocate_first_block) and
  // leaves the rest of a short L1 table's cluster a hole: `disk size` must agree too (within
  // one 4 KiB block: ext4 may count an extent-tree block for either file).
  it.each([
    [['-f', 'raw', 'x.raw', '100M']],
    [['-f', 'raw', 'x.raw', '1000']],
    [['-f', 'raw', '-o', 'preallocation=full', 'x.raw', '3M']],
    [['-f', 'qcow2', 'x.qcow2', '100M']],
    [['-f', 'qcow2', '-o', 'preallocation=metadata', 'x.qcow2', '100M']],
    [['-f', 'qcow2', '-o', 'preallocation=falloc', 'x.qcow2', '20M']],
    [['-f', 'qcow2', '-o', 'data_file=d.raw', 'x.qcow2', '100M']],
  ])('allocates the blocks qemu-img allocates: %j', (args) => {
    const qdir = join(root, 'alloc-q');
    const tdir = join(root, 'alloc-t');
    for (const d of [qdir, tdir]) {
      rmSync(d, { recursive: true, force: true });
      mkdirSync(d);
    }
    expect(qemuImg(['create', '-q', ...args], { cwd: qdir }).status).toBe(0);
    expect(tsimg(['create', '-q', ...args], { cwd: tdir }).status).toBe(0);
    for (const name of files(qdir)) {
      const q = statSync(join(qdir, name)).blocks * 512;
      const t = statSync(join(tdir, name)).blocks * 512;
      expect(Math.abs(q - t), `${name}: qemu ${q}, tsimg ${t}`).toBeLessThanOrEqual(4096);
    }
  });

  it('asks for the backing format and names the detected one, without a final newline', () => {
    const dir = join(root, 'detect');
    cpSync(template, dir, { recursive: true });
    const t = tsimg(['create', '-f', 'qcow2', '-b', 'b.qcow2', 'sub/o.qcow2'], { cwd: dir });
    expect(t.stderr).toBe('tsimg: sub/o.qcow2: Backing file specified without backing format\nDetected format of qcow2.');
    expect(t.status).toBe(1);
  });
});
