/**
 * Cross-checks of `tsimg amend` against `qemu-img amend` (QEMU 7.2): for each fixture and command
 * line, qemu-img and tsimg run on two copies of the same qemu-made files and must print the same
 * stdout (the -p lines included) and stderr, exit with the same status and leave every file
 * byte-identical — compat both ways (zero clusters with and without a backing file, compressed
 * clusters, snapshots, bitmaps), every refcount width both ways, lazy refcounts, data-file bits,
 * size, and qemu's refusals. Needs `npm run build` first.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuAsTsimg, qemuImg, tsimg } from '../../../test-images/qemu.js';
import { expectSameFiles, ResizeBench } from './resize-harness.js';

let bench: ResizeBench;

/** `amend args` through both tools on copies of the fixture `setup` makes; same output and files. */
function expectAllSame(setup: string, argLists: string[][]): void {
  const src = bench.fixture(setup);
  for (const args of argLists) {
    const dirs = bench.copies(src);
    const label = `${setup} | amend ${args.join(' ')}`;
    const theirs = qemuAsTsimg(qemuImg(['amend', ...args], { cwd: dirs.qemu }));
    const ours = tsimg(['amend', ...args], { cwd: dirs.tsimg });
    // qemu's hint names its own rebase command; tsimg's names tsimg's.
    theirs.stderr = theirs.stderr.replaceAll("'qemu-img rebase'", "'tsimg rebase'");
    expect(ours, label).toEqual(theirs);
    expectSameFiles(dirs, label);
  }
}

const CREATE = 'qemu-img create -q -f qcow2';
const DATA = "qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 2M 64k' a.qcow2";
/** Data, plain and preallocated zero clusters, a compressed cluster. */
const MIXED = "qemu-io -c 'write -P 1 0 128k' -c 'write -z 1M 128k' -c 'write -z -u 64k 64k' -c 'write -c -P 5 3M 64k' a.qcow2";
/** A snapshot sharing clusters with the active layer, which then diverges (zeroes included). */
const SNAPSHOT = `${MIXED} && qemu-img snapshot -c s1 a.qcow2 && qemu-io -c 'write -z 2M 64k' -c 'write -P 3 0 64k' -c 'write -z 1M 64k' a.qcow2`;

describeQemu('tsimg amend vs qemu-img amend', () => {
  beforeAll(() => {
    bench = new ResizeBench('tsimg-amend-');
  });
  afterAll(() => bench.cleanup());

  it('downgrades to v2: zero clusters expanded, with or without a backing file, snapshots included', () => {
    expectAllSame(`${CREATE} a.qcow2 4M && ${MIXED}`, [['-o', 'compat=0.10'], ['-p', '-o', 'compat=v2']]);
    expectAllSame(`${CREATE} b.qcow2 4M && ${CREATE} -b b.qcow2 -F qcow2 a.qcow2 4M && ${MIXED}`, [['-p', '-o', 'compat=0.10', 'a.qcow2']]);
    expectAllSame(`${CREATE} a.qcow2 4M && ${SNAPSHOT}`, [['-p', '-o', 'compat=0.10', 'a.qcow2']]);
    expectAllSame(`${CREATE} b.qcow2 4M && ${CREATE} -b b.qcow2 -F qcow2 a.qcow2 4M && ${SNAPSHOT}`, [['-o', 'compat=0.10', 'a.qcow2']]);
    expectAllSame(`${CREATE} -o cluster_size=512,lazy_refcounts=on a.qcow2 4M && ${MIXED}`, [['-p', '-o', 'compat=0.10', 'a.qcow2']]);
    // Thousands of zero clusters over a backing file: refcount blocks added while expanding.
    expectAllSame(`${CREATE} b.qcow2 4M && ${CREATE} -o cluster_size=512 -b b.qcow2 -F qcow2 a.qcow2 4M && qemu-io -c 'write -z 0 3M' a.qcow2`, [
      ['-p', '-o', 'compat=0.10', 'a.qcow2'],
    ]);
  });

  // The image's read/write open holds its bitmaps and the close stores them into the v2 file
  // (qemu's memory still trusts the directory), freeing the old tables as qemu does.
  it('downgrades to v2 with a persistent bitmap like qemu-img', () => {
    expectAllSame(`${CREATE} a.qcow2 4M && ${DATA} && qemu-img bitmap --add a.qcow2 b0 && ${MIXED}`, [
      ['-o', 'compat=0.10', 'a.qcow2'],
      ['-o', 'compat=0.10,size=8M', 'a.qcow2'],
    ]);
  });

  it('keeps a snapshot whose cluster the active layer zeroed without unmapping (where qemu 7.2 zeroes it)', () => {
    // qemu's downgrade zeroes a preallocated zero cluster in place even when a snapshot still
    // uses it, so the snapshot then reads zeroes (and check finds a wrong COPIED flag); tsimg
    // gives the active layer its own zeroed cluster instead.
    const setup =
      `${CREATE} b.qcow2 1M && qemu-io -c 'write -P 9 0 1M' b.qcow2 && ${CREATE} -o cluster_size=4k -b b.qcow2 -F qcow2 a.qcow2 1M && ` +
      "qemu-io -c 'write -P 5 0 16k' a.qcow2 && qemu-img snapshot -c s a.qcow2 && qemu-io -c 'write -z 8k 4k' a.qcow2";
    const dirs = bench.copies(bench.fixture(setup));
    const ours = tsimg(['amend', '-o', 'compat=0.10', 'a.qcow2'], { cwd: dirs.tsimg });
    expect(ours).toEqual({ stdout: '', stderr: '', status: 0 });
    expect(qemuImg(['check', 'a.qcow2'], { cwd: dirs.tsimg }).status).toBe(0);
    const read = (snapshot: string[]): Buffer => {
      expect(qemuImg(['convert', ...snapshot, '-O', 'raw', 'a.qcow2', 'out.raw'], { cwd: dirs.tsimg }).status).toBe(0);
      return readFileSync(join(dirs.tsimg, 'out.raw'));
    };
    const fill = (v: number, n: number): Buffer => Buffer.alloc(n, v);
    expect(read(['-l', 's']).subarray(0, 16384).equals(fill(5, 16384))).toBe(true);
    expect(read([]).subarray(8192, 12288).equals(fill(0, 4096))).toBe(true);
    // qemu-img on the same image loses the snapshot's data: the difference is deliberate.
    expect(qemuImg(['amend', '-o', 'compat=0.10', 'a.qcow2'], { cwd: dirs.qemu }).status).toBe(0);
    expect(qemuImg(['check', 'a.qcow2'], { cwd: dirs.qemu }).status).toBe(2);
  });

  it('upgrades to v3, rewriting a v2 snapshot table', () => {
    expectAllSame(`${CREATE} -o compat=0.10 a.qcow2 4M && ${DATA}`, [['-o', 'compat=1.1', 'a.qcow2'], ['-p', '-o', 'compat=v3', 'a.qcow2']]);
    expectAllSame(`${CREATE} -o compat=0.10 a.qcow2 4M && ${DATA} && qemu-img snapshot -c s1 a.qcow2 && ${DATA}`, [
      ['-p', '-o', 'compat=1.1', 'a.qcow2'],
      ['-p', '-o', 'compat=1.1,refcount_bits=4,lazy_refcounts=on', 'a.qcow2'],
    ]);
  });

  it('changes the refcount width to and from every width, with data and snapshots', { timeout: 120_000 }, () => {
    for (const bits of ['1', '2', '4', '8', '32', '64']) {
      // 4 KiB clusters: qemu walks every refcount a narrow table could hold (seconds at 64 KiB).
      expectAllSame(`${CREATE} -o cluster_size=4k a.qcow2 4M && ${DATA} && qemu-img snapshot -c s1 a.qcow2 && ${DATA}`, [
        ['-o', `refcount_bits=${bits}`, 'a.qcow2'],
      ]);
      expectAllSame(`${CREATE} -o refcount_bits=${bits},cluster_size=4k a.qcow2 4M && ${MIXED}`, [['-p', '-o', 'refcount_bits=16', 'a.qcow2']]);
    }
  });

  it('changes the refcount width of big, small-cluster, extended-L2 and compressed images', { timeout: 120_000 }, () => {
    expectAllSame(`${CREATE} a.qcow2 4M && ${DATA} && qemu-img snapshot -c s1 a.qcow2 && ${DATA}`, [['-p', '-o', 'refcount_bits=64', 'a.qcow2']]);
    // Small clusters: many refcount blocks on both sides, the reftable growing.
    expectAllSame(`${CREATE} -o cluster_size=512 a.qcow2 4M && ${DATA} && qemu-io -c 'write -P 4 3M 512k' a.qcow2`, [
      ['-p', '-o', 'refcount_bits=1', 'a.qcow2'],
      ['-p', '-o', 'refcount_bits=64', 'a.qcow2'],
    ]);
    // A shared cluster (refcount 2) does not fit one bit: qemu's refusal, after what it allocated.
    expectAllSame(`${CREATE} a.qcow2 4M && ${DATA} && qemu-img snapshot -c s1 a.qcow2 && qemu-img snapshot -c s2 a.qcow2`, [
      ['-o', 'refcount_bits=1', 'a.qcow2'],
      ['-o', 'refcount_bits=2', 'a.qcow2'],
    ]);
    // Extended L2 entries; compressed clusters sharing a host cluster (refcount 2: no 1-bit fit).
    expectAllSame(`${CREATE} -o extended_l2=on a.qcow2 4M && qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 100k 4k' -c 'write -z 1M 64k' a.qcow2`, [
      ['-p', '-o', 'refcount_bits=4', 'a.qcow2'],
    ]);
    expectAllSame(`${CREATE} a.qcow2 4M && qemu-io -c 'write -c -P 1 0 64k' -c 'write -c -P 2 1M 64k' a.qcow2`, [
      ['-o', 'refcount_bits=1', 'a.qcow2'],
      ['-o', 'refcount_bits=2', 'a.qcow2'],
    ]);
    // Downgrading after a width change back to 16, in one command.
    expectAllSame(`${CREATE} -o refcount_bits=4,lazy_refcounts=on a.qcow2 4M && ${DATA}`, [
      ['-p', '-o', 'compat=0.10,refcount_bits=16,lazy_refcounts=off', 'a.qcow2'],
    ]);
  });

  it('turns lazy refcounts on and off, changes data-file bits, size and nothing else', () => {
    expectAllSame(`${CREATE} a.qcow2 4M && ${DATA}`, [
      ['-o', 'lazy_refcounts=on', 'a.qcow2'],
      ['-o', 'size=8M', 'a.qcow2'],
      ['-o', 'size=2M', 'a.qcow2'],
      ['-o', 'data_file_raw=off', 'a.qcow2'],
      ['-q', '-p', '-o', 'refcount_bits=8', 'a.qcow2'],
    ]);
    expectAllSame(`${CREATE} -o lazy_refcounts=on a.qcow2 4M && ${DATA}`, [['-o', 'lazy_refcounts=off', 'a.qcow2']]);
    // A dirty lazy-refcounts image: repaired on the read/write open (qemu's lines on stderr) first.
    const dirty = `${CREATE} -o lazy_refcounts=on,cluster_size=4k a.qcow2 4M && (qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 1M 64k' -c abort a.qcow2 2>/dev/null; true)`;
    expectAllSame(dirty, [
      ['-o', 'lazy_refcounts=off', 'a.qcow2'],
      ['-o', 'compat=0.10', 'a.qcow2'],
      ['-o', 'refcount_bits=8', 'a.qcow2'],
    ]);
    expectAllSame(`${CREATE} -o data_file=d.raw a.qcow2 1M`, [
      ['-o', 'data_file=new.raw', 'a.qcow2'],
      ['-o', 'data_file_raw=on', 'a.qcow2'],
      ['-o', 'compat=0.10', 'a.qcow2'],
    ]);
    expectAllSame(`${CREATE} -o data_file=d.raw,data_file_raw=on a.qcow2 1M`, [['-o', 'data_file_raw=off', 'a.qcow2']]);
    expectAllSame(`${CREATE} b.qcow2 1M && ${CREATE} -b b.qcow2 -F qcow2 a.qcow2 1M`, [
      ['-o', 'backing_file=b.qcow2,backing_fmt=qcow2', 'a.qcow2'],
      ['-o', 'backing_file=c.qcow2', 'a.qcow2'],
      ['-o', 'backing_fmt=raw', 'a.qcow2'],
    ]);
  });

  it("refuses what qemu refuses, with qemu's messages and statuses", () => {
    expectAllSame(`${CREATE} a.qcow2 1M && ${CREATE} -o refcount_bits=8 r8.qcow2 1M && ${CREATE} -o extended_l2=on x.qcow2 1M`, [
      ['-o', 'cluster_size=4k', 'a.qcow2'],
      ['-o', 'foo=bar', 'a.qcow2'],
      ['-o', 'compat=0.11', 'a.qcow2'],
      ['-o', 'refcount_bits=3', 'a.qcow2'],
      ['-o', 'refcount_bits=128', 'a.qcow2'],
      ['-o', 'compat=0.10,refcount_bits=8', 'a.qcow2'],
      ['-o', 'compat=0.10', 'r8.qcow2'],
      ['-o', 'compat=0.10', 'x.qcow2'],
      ['-o', 'data_file=x', 'a.qcow2'],
      ['-o', 'data_file_raw=on', 'a.qcow2'],
      ['-o', 'encrypt.state=active', 'a.qcow2'],
      ['a.qcow2'],
      ['-o', 'compat=0.10'],
      ['-o', 'compat=0.10', 'a.qcow2', 'b.qcow2'],
      ['-t', 'bogus', '-o', 'compat=0.10', 'a.qcow2'],
      ['-x', '-o', 'compat=0.10', 'a.qcow2'],
      ['-o', 'compat=0.10', 'missing.qcow2'],
      ['-o', '', 'a.qcow2'],
      ['-o', 'compat=0.10', '-o', ',foo', 'a.qcow2'],
      ['-o'],
      ['-o', 'refcount_bits=abc', 'a.qcow2'],
      ['-o', 'refcount_bits=-16', 'a.qcow2'],
      ['-o', 'refcount_bits=18446744073709551616', 'a.qcow2'],
      ['-o', 'lazy_refcounts=maybe', 'a.qcow2'],
      ['-o', 'size=1x', 'a.qcow2'],
      ['-o', 'size=1000', 'a.qcow2'],
      ['-o', 'compat=', 'a.qcow2'],
      ['-o', 'help,compat=0.10', 'a.qcow2'],
      ['--forc', '-o', 'refcount_bits=0x10', 'a.qcow2'],
    ]);
    expectAllSame(`${CREATE} -o compat=0.10 a.qcow2 1M`, [['-o', 'lazy_refcounts=on', 'a.qcow2']]);
    expectAllSame(`${CREATE} -o compression_type=zstd a.qcow2 1M && qemu-io -c 'write -c -P 1 0 64k' a.qcow2`, [['-o', 'compat=0.10', 'a.qcow2']]);
    expectAllSame(`${CREATE} -o compression_type=zstd a.qcow2 1M && qemu-io -c 'write -P 1 0 64k' a.qcow2`, [['-o', 'compat=0.10', 'a.qcow2']]);
    expectAllSame(`${CREATE} a.qcow2 1M && ${CREATE} -o size=2M a.qcow2 && qemu-img snapshot -c s a.qcow2 && qemu-img resize a.qcow2 2M`, [
      ['-o', 'compat=0.10', 'a.qcow2'],
    ]);
    expectAllSame('qemu-img create -q -f raw r.raw 1M', [
      ['-o', 'size=2M', 'r.raw'],
      ['-f', 'raw', '-o', 'size=2M', 'r.raw'],
      ['-o', 'help', 'r.raw'],
    ]);
  });

  it("prints qemu's amend option list for -o help", () => {
    expectAllSame(`${CREATE} a.qcow2 1M`, [
      ['-o', 'help', 'a.qcow2'],
      ['-f', 'qcow2', '-o', 'help'],
      ['-f', 'qcow2', '-o', '?'],
      ['-f', 'raw', '-o', 'help'],
      ['-f', 'vmdk', '-o', 'help'],
      ['-f', 'luks', '-o', 'help'],
      ['-f', 'file', '-o', 'help'],
      ['-f', 'foo', '-o', 'help'],
      ['-o', 'help'],
    ]);
  });

  it('opens the image with --image-opts and -f', () => {
    expectAllSame(`${CREATE} a.qcow2 4M && ${DATA}`, [
      ['--image-opts', '-o', 'compat=0.10', 'driver=qcow2,file.filename=a.qcow2'],
      ['-f', 'qcow2', '-t', 'none', '-o', 'refcount_bits=8', 'a.qcow2'],
      ['-f', 'raw', '-o', 'compat=0.10', 'a.qcow2'],
      ['--object', 'secret,id=s0,data=x', '--force', '-o', 'lazy_refcounts=on', 'a.qcow2'],
    ]);
  });
});
