/**
 * Cross-checks of `tsimg rebase` against `qemu-img rebase` (QEMU 7.2): the same chain built
 * twice, the same command run by each tool, and every image compared byte for byte, with stdout
 * (the -p line included), stderr and the exit status. `-c` came with qemu 8.2, so there the
 * image must read as it did and pass qemu-img check. Needs `npm run build` first.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { lockingAvailable } from '@tsimg/raw';
import { describeQemu, qemuImg, tempDir, tsimg } from '../../../test-images/qemu.js';
import { buildChain, expectSameAsQemuOnChain } from './chain-harness.js';

let dir = '';
let cleanup = (): void => {};

/**
 * top over old.qcow2, and candidate new backing files: new.qcow2 (smaller, partly the same),
 * big.qcow2 (larger), new.raw, and a 3-deep chain mid → low for rebasing within the chain.
 */
const CHAINS = `
qemu-img create -q -f qcow2 old.qcow2 4M
qemu-io -c 'write -P 1 0 1M' -c 'write -P 9 3M 100k' -c 'write -z 1536k 64k' -c 'write -c -P 6 2M 64k' old.qcow2 >/dev/null
qemu-img create -q -f qcow2 new.qcow2 3M
qemu-io -c 'write -P 2 512k 1M' -c 'write -P 1 0 256k' -c 'write -c -P 6 2M 64k' new.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4k big.qcow2 6M
qemu-io -c 'write -P 1 0 1M' -c 'write -P 7 5M 4k' big.qcow2 >/dev/null
qemu-img create -q -f raw new.raw 4M
qemu-io -f raw -c 'write -P 1 0 512k' -c 'write -P 9 3M 50k' new.raw >/dev/null
qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 top.qcow2 5M
qemu-io -c 'write -P 3 1M 64k' -c 'write -P 4 600k 3k' -c 'write -z 3M 4k' top.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4k -b old.qcow2 -F qcow2 mid.qcow2
qemu-io -c 'write -P 5 2M 40k' -c 'write -P 8 100k 1k' mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o extended_l2=on -b mid.qcow2 -F qcow2 top3.qcow2
qemu-io -c 'write -P 3 1M 20k' -c 'write -z 2M 8k' top3.qcow2 >/dev/null
qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 orphan.qcow2 4M
`;

/** The same in a subdirectory, with relative backing names. */
const RELATIVE = `
mkdir -p d/sub
qemu-img create -q -f qcow2 d/sub/old.qcow2 2M
qemu-io -c 'write -P 1 0 1M' d/sub/old.qcow2 >/dev/null
qemu-img create -q -f qcow2 d/sub/new.qcow2 2M
qemu-io -c 'write -P 1 0 512k' d/sub/new.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b sub/old.qcow2 -F qcow2 d/top.qcow2 2M
qemu-io -c 'write -P 3 100k 4k' d/top.qcow2 >/dev/null
`;

/** qcow2 v2 (compat=0.10) images, and a 512-byte-cluster one whose header has little room. */
const V2_AND_SMALL = `
qemu-img create -q -f qcow2 -o compat=0.10 a.qcow2 4M
qemu-io -c 'write -P 1 0 1M' a.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4k b.qcow2 3M
qemu-io -c 'write -P 2 512k 1M' b.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 -b a.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 3 1M 64k' top.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512 -b a.qcow2 -F qcow2 small.qcow2
`;

describeQemu('tsimg rebase vs qemu-img rebase', () => {
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-rebase-'));
  });
  afterAll(() => cleanup());

  it('safe mode: writes what differs between the old and the new backing chain', () => {
    expectSameAsQemuOnChain(dir, 'new', CHAINS, ['rebase', '-b', 'new.qcow2', '-F', 'qcow2', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'big', CHAINS, ['rebase', '-b', 'big.qcow2', '-F', 'qcow2', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'raw', CHAINS, ['rebase', '-q', '-b', 'new.raw', '-F', 'raw', '-t', 'writeback', '-T', 'none', 'top.qcow2']);
    // An image without a backing file gets one: zeroes where the new one has data.
    expectSameAsQemuOnChain(dir, 'gets', CHAINS, ['rebase', '-b', 'old.qcow2', '-F', 'qcow2', 'new.qcow2']);
    expectSameAsQemuOnChain(dir, 'gets-big', CHAINS, ['rebase', '-b', 'big.qcow2', '-F', 'qcow2', 'new.qcow2']);
  });

  it('flattens with -b ""', () => {
    expectSameAsQemuOnChain(dir, 'flat', CHAINS, ['rebase', '-b', '', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'flat3', CHAINS, ['rebase', '-b', '', 'top3.qcow2']);
    expectSameAsQemuOnChain(dir, 'flat-opts', CHAINS, ['rebase', '--image-opts', '-b', '', 'driver=qcow2,file.filename=top.qcow2']);
    expectSameAsQemuOnChain(dir, 'U', CHAINS, ['rebase', '-U', '--object', 'secret,id=s0,data=x', '-b', 'new.qcow2', '-F', 'qcow2', 'top3.qcow2']);
  });

  it('rebases onto an image of its own chain, comparing only what the images between change', () => {
    expectSameAsQemuOnChain(dir, 'prefix', CHAINS, ['rebase', '-b', 'old.qcow2', '-F', 'qcow2', 'top3.qcow2']);
    expectSameAsQemuOnChain(dir, 'same', CHAINS, ['rebase', '-b', 'old.qcow2', '-F', 'qcow2', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'other', CHAINS, ['rebase', '-b', 'new.qcow2', '-F', 'qcow2', 'top3.qcow2']);
  });

  it('unsafe mode changes only the header', () => {
    expectSameAsQemuOnChain(dir, 'u', CHAINS, ['rebase', '-u', '-b', 'new.qcow2', '-F', 'qcow2', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'u-missing', CHAINS, ['rebase', '-u', '-b', '../gone/x.img', '-F', 'raw', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'u-none', CHAINS, ['rebase', '-u', '-b', '', '-F', 'qcow2', 'top3.qcow2']);
    // The use of -u: an image whose backing file moved.
    expectSameAsQemuOnChain(dir, 'u-moved', CHAINS, ['rebase', '-u', '-b', 'old.qcow2', '-F', 'qcow2', 'orphan.qcow2']);
    expectSameAsQemuOnChain(dir, 'safe-moved', CHAINS, ['rebase', '-b', 'old.qcow2', '-F', 'qcow2', 'orphan.qcow2']);
  });

  it('rewrites v2 headers as qemu does, and refuses names the header cluster cannot hold', () => {
    expectSameAsQemuOnChain(dir, 'v2', V2_AND_SMALL, ['rebase', '-b', 'b.qcow2', '-F', 'qcow2', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'v2-u', V2_AND_SMALL, ['rebase', '-u', '-b', 'b.qcow2', '-F', 'qcow2', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'v2-flat', V2_AND_SMALL, ['rebase', '-b', '', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'fits', V2_AND_SMALL, ['rebase', '-u', '-b', 'x'.repeat(300), '-F', 'qcow2', 'small.qcow2']);
    expectSameAsQemuOnChain(dir, 'nospc', V2_AND_SMALL, ['rebase', '-u', '-b', 'x'.repeat(450), '-F', 'qcow2', 'small.qcow2']);
    expectSameAsQemuOnChain(dir, 'toolong', V2_AND_SMALL, ['rebase', '-u', '-b', 'x'.repeat(1100), '-F', 'qcow2', 'top.qcow2']);
  });

  it('resolves the new backing name relative to the image', () => {
    expectSameAsQemuOnChain(dir, 'rel', RELATIVE, ['rebase', '-b', 'sub/new.qcow2', '-F', 'qcow2', 'd/top.qcow2']);
    expectSameAsQemuOnChain(dir, 'rel-cwd', RELATIVE, ['rebase', '-b', 'sub/new.qcow2', '-F', 'qcow2', 'top.qcow2'], 'd');
  });

  it('prints the -p progress line as qemu does', () => {
    expectSameAsQemuOnChain(dir, 'p', CHAINS, ['rebase', '-p', '-b', 'new.qcow2', '-F', 'qcow2', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'p-flat', CHAINS, ['rebase', '-p', '-b', '', 'top3.qcow2']);
    expectSameAsQemuOnChain(dir, 'p-prefix', CHAINS, ['rebase', '-p', '-b', 'old.qcow2', '-F', 'qcow2', 'top3.qcow2']);
    expectSameAsQemuOnChain(dir, 'p-big', CHAINS, ['rebase', '-p', '-b', 'big.qcow2', '-F', 'qcow2', 'top.qcow2']);
    expectSameAsQemuOnChain(dir, 'p-err', CHAINS, ['rebase', '-p', '-t', 'bogus', '-b', '', 'top3.qcow2']);
  });

  it('refuses what qemu-img refuses, with its messages and exit status', () => {
    const cases: string[][] = [
      // writes the differences, then refuses to record a backing file without its format
      ['rebase', '-b', 'new.qcow2', 'top.qcow2'],
      ['rebase', '-u', '-b', 'new.qcow2', 'top.qcow2'],
      ['rebase', '-b', 'nothere.qcow2', '-F', 'qcow2', 'top.qcow2'],
      ['rebase', '-F', 'foo', '-b', 'new.qcow2', 'top.qcow2'],
      ['rebase', 'top.qcow2'],
      ['rebase', '-b', 'new.qcow2'],
      ['rebase', '-t', 'bogus', '-b', 'new.qcow2', 'top.qcow2'],
      ['rebase', '-T', 'bogus', '-b', 'new.qcow2', 'top.qcow2'],
      ['rebase', '-b', 'new.qcow2', '-F', 'qcow2', 'missing.qcow2'],
      ['rebase', '-b', '', 'new.raw'],
      ['rebase', '-u', '-b', 'x', '-F', 'raw', 'new.raw'],
      ['rebase', '-f', 'foo', '-b', '', 'top.qcow2'],
      ['rebase', '-b', 'top.qcow2', '-F', 'qcow2', '-f', 'raw', 'new.raw'],
    ];
    if (lockingAvailable()) cases.push(['rebase', '-b', 'top.qcow2', '-F', 'qcow2', 'top.qcow2']);
    for (const [i, args] of cases.entries()) expectSameAsQemuOnChain(dir, `err${i}`, CHAINS, args);
  });

  it('-c writes compressed clusters that read the same and pass qemu-img check', () => {
    const at = buildChain(dir, 'c', `${CHAINS}\nqemu-img convert -O raw top.qcow2 before.raw\nqemu-img convert -O raw top3.qcow2 before3.raw`);
    const run = (args: string[]) => {
      const r = tsimg(args, { cwd: at });
      expect(r.status, r.stderr).toBe(0);
    };
    const expectClean = (image: string, raw: string) => {
      const check = qemuImg(['check', join(at, image)]);
      expect(check.status, check.stdout + check.stderr).toBe(0);
      const out = join(at, 'after.raw');
      expect(qemuImg(['convert', '-O', 'raw', join(at, image), out]).status).toBe(0);
      expect(readFileSync(out).equals(readFileSync(join(at, raw))), `${image} reads as before`).toBe(true);
    };
    run(['rebase', '-c', '-b', 'new.qcow2', '-F', 'qcow2', 'top.qcow2']);
    expectClean('top.qcow2', 'before.raw');
    const map = qemuImg(['map', '--output=json', join(at, 'top.qcow2')]);
    expect(map.status).toBe(0);
    run(['rebase', '-c', '-b', '', 'top.qcow2']);
    expectClean('top.qcow2', 'before.raw');
    run(['rebase', '-c', '-b', '', 'top3.qcow2']);
    expectClean('top3.qcow2', 'before3.raw');
    const check = qemuImg(['check', join(at, 'top.qcow2')]);
    expect(check.stdout).toMatch(/compressed clusters/);
    expect(/[1-9][0-9.]*% compressed clusters/.test(check.stdout), check.stdout).toBe(true);
    const refused = tsimg(['rebase', '-c', '-b', '', '-f', 'raw', 'new.raw'], { cwd: at });
    expect({ status: refused.status, stderr: refused.stderr.split('\n').filter((l) => !l.includes('locking is unavailable')).join('\n') }).toEqual({
      status: 1,
      stderr: 'tsimg: Compression not supported for this file format\n',
    });
  });
});
