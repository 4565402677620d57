/**
 * Host block devices end to end through the command line: a loop device read by info, map,
 * check, compare and measure, and written by convert -n (raw and qcow2 contents), dd and
 * resize — the same output, exit status and device bytes as qemu-img 7.2's (host_device
 * driver: no growing, the size the device has). Skipped loudly where no loop device can be
 * attached (an unprivileged container).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, expectSameAsQemu, qemuImg, qemuIo, tempDir, tsimg } from '../../../test-images/qemu.js';

const MiB = 1024 * 1024;

describeQemu('host block devices through tsimg', () => {
  let work: { dir: string; cleanup: () => void };
  let loop: string | undefined;
  const backing = () => join(work.dir, 'loop.img');
  beforeAll(() => {
    work = tempDir('tsimg-hostdev-');
    writeFileSync(backing(), new Uint8Array(0));
    truncateSync(backing(), 16 * MiB);
    const r = spawnSync('losetup', ['-f', '--show', backing()], { encoding: 'utf8' });
    if (r.status === 0) loop = r.stdout.trim();
    else console.warn(`\n!!! SKIPPING host-device CLI tests: losetup failed (${(r.stderr || String(r.error)).trim()}) !!!\n`);
    qemuImg(['create', '-q', '-f', 'raw', join(work.dir, 'src.raw'), '4M']);
    qemuIo(['-f', 'raw', '-c', 'write -P 0x5a 0 64k', '-c', 'write -P 0x6b 3M 1M', join(work.dir, 'src.raw')]);
    qemuImg(['create', '-q', '-f', 'qcow2', join(work.dir, 'src.qcow2'), '8M']);
    qemuIo(['-c', 'write -P 0x11 1M 64k', '-c', 'write -z 2M 1M', join(work.dir, 'src.qcow2')]);
  });
  afterAll(() => {
    if (loop !== undefined) spawnSync('losetup', ['-d', loop]);
    work.cleanup();
  });

  /** The device's bytes (read through its backing file: the loop device writes through). */
  const deviceBytes = () => {
    spawnSync('sync');
    return readFileSync(backing());
  };
  const wipe = () => {
    spawnSync('dd', ['if=/dev/zero', `of=${loop}`, 'bs=1M', 'count=16', 'oflag=direct'], { stdio: 'ignore' });
  };

  it('reads a device as qemu-img does', (ctx) => {
    if (loop === undefined) return ctx.skip();
    wipe();
    spawnSync('dd', [`if=${join(work.dir, 'src.raw')}`, `of=${loop}`, 'bs=1M', 'oflag=direct'], { stdio: 'ignore' });
    const dev = loop;
    for (const args of [
      ['info', dev],
      ['info', '--output=json', dev],
      ['map', '--output=json', dev],
      ['map', dev],
      ['check', dev],
      ['compare', '-f', 'raw', '-F', 'raw', join(work.dir, 'src.raw'), dev],
      ['measure', '-O', 'qcow2', dev],
      ['convert', '-O', 'raw', dev, join(work.dir, 'dev-copy.raw')],
    ]) {
      expectSameAsQemu(args, work.dir);
    }
  });

  for (const [name, args, qcow2Target] of [
    ['convert -n raw into the device', ['convert', '-n', '-O', 'raw', 'src.raw', 'DEV']],
    ['convert -n qcow2 source into the device', ['convert', '-n', '-f', 'qcow2', '-O', 'raw', 'src.qcow2', 'DEV']],
    ['convert -n into the device as a qcow2 image', ['convert', '-n', '-O', 'qcow2', 'src.qcow2', 'DEV'], true],
    ['dd into the device', ['dd', 'if=src.raw', 'of=DEV', '-O', 'raw', 'bs=64k']],
    ['resize of a device to a larger size', ['resize', '-f', 'raw', 'DEV', '32M']],
    ['resize --shrink of a device', ['resize', '-f', 'raw', '--shrink', 'DEV', '8M']],
    ['resize of a device to its own size', ['resize', '-f', 'raw', 'DEV', '16M']],
    ['resize of a device with preallocation', ['resize', '-f', 'raw', '--preallocation=falloc', 'DEV', '32M']],
  ] as [string, string[], boolean?][]) {
    it(`${name}: the same output and device bytes as qemu-img`, (ctx) => {
      if (loop === undefined) return ctx.skip();
      const argv = args.map((a) => (a === 'DEV' ? loop! : a));
      const prepare = () => {
        wipe();
        // convert -n into a qcow2 device needs a qcow2 image there first.
        if (qcow2Target) expect(qemuImg(['create', '-q', '-f', 'qcow2', loop!, '8M']).status).toBe(0);
      };
      prepare();
      const theirs = qemuImg(argv, { cwd: work.dir });
      const qBytes = deviceBytes();
      prepare();
      const ours = tsimg(argv, { cwd: work.dir });
      const tBytes = deviceBytes();
      const fix = (s: string) => s.replaceAll('qemu-img:', 'tsimg:');
      expect({ status: ours.status, stdout: ours.stdout, stderr: ours.stderr }, name).toEqual({
        status: theirs.status,
        stdout: theirs.stdout,
        stderr: fix(theirs.stderr),
      });
      expect(tBytes.equals(qBytes), `${name}: device bytes`).toBe(true);
    });
  }
});
