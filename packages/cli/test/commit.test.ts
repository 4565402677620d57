/**
 * Cross-checks of `tsimg commit` against `qemu-img commit` (QEMU 7.2): the same chain built twice,
 * the same command run by each tool, and every image of the chain compared byte for byte, with
 * stdout, stderr and the exit status.
 *
 * qemu's commit job keeps up to 16 copies in flight, and when several of them allocate clusters
 * in a qcow2 base, the order they complete in — hence where the clusters land — varies from run
 * to run. The byte-for-byte cases therefore allocate in a qcow2 base with at most one copy (the
 * rest overwrites clusters the base has, or is zeroes), or commit into a raw base; the last test
 * commits a chain where qemu's layout is not fixed and compares what the images read instead.
 * Needs `npm run build` first.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { join } from 'node:path';
import { describeQemu, qemuImg, tempDir } from '../../../test-images/qemu.js';
import { expectSameAsQemuOnChain, progressValues, runBoth } from './chain-harness.js';

let dir = '';
let cleanup = (): void => {};

/** A qcow2 base with 2 MiB of data; a larger top overwriting parts, zeroes, a compressed cluster, one new run. */
const TWO_DEEP = `
qemu-img create -q -f qcow2 base.qcow2 4M
qemu-io -c 'write -P 1 0 2M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 8M
qemu-io -c 'write -P 3 1M 64k' -c 'write -z 64k 64k' -c 'write -c -P 7 256k 64k' -c 'write -P 4 6M 512k' -c 'write -P 5 1536k 3k' top.qcow2 >/dev/null
qemu-img create -q -f raw plain.raw 1M
`;

/** A raw base under two qcow2 layers (4 KiB and 64 KiB clusters), the top larger than the base. */
const RAW_THREE_DEEP = `
qemu-img create -q -f raw base.raw 3M
qemu-io -f raw -c 'write -P 1 0 1M' -c 'write -P 9 2M 100k' base.raw >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4k -b base.raw -F raw mid.qcow2 4M
qemu-io -c 'write -P 2 512k 1M' -c 'write -z 2M 64k' -c 'write -c -P 6 3M 4k' mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 5M
qemu-io -c 'write -P 3 1M 64k' -c 'write -P 4 600k 3k' -c 'write -P 8 4M 200k' -c 'write -z 2100k 4k' top.qcow2 >/dev/null
`;

/** Extended L2 entries (subclusters) in the base and the top. */
const EXTENDED_L2 = `
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k base.qcow2 4M
qemu-io -c 'write -P 1 0 2M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k -b base.qcow2 -F qcow2 top.qcow2 4M
qemu-io -c 'write -P 3 1M 4k' -c 'write -z 64k 8k' -c 'write -P 4 300k 20k' -c 'write -P 5 2560k 8k' top.qcow2 >/dev/null
`;

/** A chain in a subdirectory with relative backing names, a 512-byte-cluster middle layer. */
const RELATIVE = `
mkdir -p d/sub
qemu-img create -q -f raw d/sub/base.raw 2M
qemu-io -f raw -c 'write -P 1 0 512k' d/sub/base.raw >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512 -b sub/base.raw -F raw d/mid.qcow2 2M
qemu-io -c 'write -P 2 100k 3k' d/mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 d/top.qcow2 2M
qemu-io -c 'write -P 3 1M 64k' -c 'write -z 0 64k' d/top.qcow2 >/dev/null
`;

/** A v2 (compat=0.10) top: emptied by discarding every cluster (qcow2_make_empty's fallback). */
const V2_TOP = `
qemu-img create -q -f qcow2 base.qcow2 2M
qemu-io -c 'write -P 1 0 1M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 top.qcow2 2M
qemu-io -c 'write -P 3 128k 64k' -c 'write -P 4 1M 4k' top.qcow2 >/dev/null
`;

/** Base clusters larger than the job's 64 KiB chunks: zero runs not aligned to them are copied as data. */
const BIG_CLUSTERS = `
qemu-img create -q -f qcow2 -o cluster_size=2M base.qcow2 8M
qemu-io -c 'write -P 1 0 4M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -z 64k 128k' -c 'write -P 2 1M 4k' -c 'write -z 2M 2M' top.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=1M base1m.qcow2 8M
qemu-io -c 'write -P 1 0 3M' base1m.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512 -b base1m.qcow2 -F qcow2 top512.qcow2 9M
qemu-io -c 'write -z 64k 128k' -c 'write -P 2 1M 4k' -c 'write -z 2M 1M' -c 'write -P 3 8M 1k' top512.qcow2 >/dev/null
`;

const EMPTY_TOP = `
qemu-img create -q -f qcow2 base.qcow2 4M
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M
`;

describeQemu('tsimg commit vs qemu-img commit', () => {
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-commit-'));
  });
  afterAll(() => cleanup());

  it('commits a qcow2 top into its qcow2 base, grows the base and empties the top', () => {
    expectSameAsQemuOnChain(dir, 'two', TWO_DEEP, ['commit', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'two-q', TWO_DEEP, ['commit', '-q', '-f', 'qcow2', '-t', 'none', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'two-opts', TWO_DEEP, ['commit', '--object', 'secret,id=s0,data=x', '--image-opts', 'driver=qcow2,file.filename=top.qcow2']);
    expectSameAsQemuOnChain(dir, 'two-r', TWO_DEEP, ['commit', '-t', 'unsafe', '-r', '100M', 'top.qcow2']);
  });

  it('leaves the top as it is with -d', () => {
    expectSameAsQemuOnChain(dir, 'two-d', TWO_DEEP, ['commit', '-d', 'top.qcow2']);
  });

  it('commits 2- and 3-deep chains into raw and qcow2 bases, -b naming any image below', () => {
    expectSameAsQemuOnChain(dir, 'raw-mid', RAW_THREE_DEEP, ['commit', 'mid.qcow2']);
    expectSameAsQemuOnChain(dir, 'raw-b', RAW_THREE_DEEP, ['commit', '-b', 'base.raw', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'raw-b-mid', RAW_THREE_DEEP, ['commit', '-b', 'mid.qcow2', 'top.qcow2']);
  });

  it('commits extended L2 images and v2 images', () => {
    expectSameAsQemuOnChain(dir, 'extl2', EXTENDED_L2, ['commit', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'v2', V2_TOP, ['commit', 'top.qcow2']);
  });

  it('commits into bases whose clusters are larger than the chunks it copies', () => {
    expectSameAsQemuOnChain(dir, 'big2m', BIG_CLUSTERS, ['commit', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'big1m', BIG_CLUSTERS, ['commit', 'top512.qcow2']);
  });

  it('resolves relative backing names and -b names relative to the images', () => {
    expectSameAsQemuOnChain(dir, 'rel', RELATIVE, ['commit', 'd/top.qcow2']);
    expectSameAsQemuOnChain(dir, 'rel-b', RELATIVE, ['commit', '-b', 'sub/base.raw', 'd/top.qcow2']);
    expectSameAsQemuOnChain(dir, 'rel-b-cwd', RELATIVE, ['commit', '-b', 'sub/base.raw', 'top.qcow2'], 'd');
  });

  it('refuses what qemu-img refuses, with its messages and exit status', () => {
    const cases: string[][] = [
      ['commit', 'base.qcow2'],
      ['commit', 'plain.raw'],
      ['commit', '-f', 'raw', 'plain.raw'],
      ['commit', '-b', 'nothere.qcow2', 'top.qcow2'],
      ['commit', '-p', '-b', 'nothere.qcow2', 'top.qcow2'],
      ['commit', '-b', 'top.qcow2', 'top.qcow2'],
      ['commit', '-t', 'bogus', 'top.qcow2'],
      ['commit', '-r', '1x', 'top.qcow2'],
      ['commit', '-r', '-5', 'top.qcow2'],
      ['commit'],
      ['commit', 'a', 'b'],
      ['commit', 'missing.qcow2'],
      ['commit', '-f', 'foo', 'top.qcow2'],
      ['commit', '--image-opts', '-f', 'qcow2', 'top.qcow2'],
      ['commit', '-x', 'top.qcow2'],
    ];
    for (const [i, args] of cases.entries()) expectSameAsQemuOnChain(dir, `err${i}`, TWO_DEEP, args);
  });

  it('prints the -p progress line as qemu does: from 0 to 100, then the newline', () => {
    for (const [label, setup] of [['p-empty', EMPTY_TOP], ['p-two', TWO_DEEP]] as const) {
      const r = runBoth(dir, label, setup, ['commit', '-p', 'top.qcow2']);
      expect(r.ours.status).toBe(0);
      // qemu prints at every poll of its event loop, so how often it repeats a value varies.
      const values = progressValues(r.ours.stdout);
      const theirs = progressValues(r.qemu.stdout);
      expect(values[0]).toBe(0);
      expect(values.at(-1)).toBe(100);
      expect(theirs.at(-1)).toBe(100);
      expect([...values].sort((a, b) => a - b)).toEqual(values);
      expect(r.ours.stdout.endsWith('    (100.00/100%)\r\nImage committed.\n')).toBe(true);
      expect(r.qemu.stdout.endsWith('    (100.00/100%)\r\nImage committed.\n')).toBe(true);
    }
  });

  it('commits a chain whose qcow2 layout qemu does not fix: same guest view, clean images', () => {
    const setup = `
qemu-img create -q -f qcow2 base.qcow2 4M
qemu-io -c 'write -P 1 0 1M' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
qemu-io -c 'write -P 2 512k 1M' -c 'write -z 3M 128k' mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 3 1M 64k' -c 'write -P 4 2M 4k' -c 'write -c -P 5 3520k 64k' top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 guest.raw
`;
    const r = runBoth(dir, 'racy', setup, ['commit', '-b', 'base.qcow2', 'top.qcow2']);
    expect(r.ours).toEqual(r.qemu);
    for (const d of [r.qemuDir, r.oursDir]) {
      const check = qemuImg(['check', join(d, 'base.qcow2')]);
      expect(check.status, check.stdout).toBe(0);
      const cmp = qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', join(d, 'guest.raw'), join(d, 'base.qcow2')]);
      expect(cmp.status, cmp.stdout).toBe(0);
    }
  });
});
