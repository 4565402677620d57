/**
 * Cross-process image locking against the real qemu-io / qemu-img (QEMU 7.2): a FileDevice and
 * a qemu process exclude each other exactly as two qemu processes do, in both directions.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { FileDevice, type FileDeviceOptions, imageFilePermissions, LockError, lockingAvailable, type LockPermissions, UnsupportedError } from '@tsimg/raw';
import { nativeStatus } from '../src/native.js';
import { heldBytes, holdWithQemuIo, killAndWait, procLocks } from '../../../test-images/holders.js';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';

/** Native-module suites: skipped loudly without it, failing when CI is set (CI builds it). */
function describeNative(name: string, fn: () => void): void {
  if (lockingAvailable()) return describeQemu(name, fn);
  if (process.env.CI) {
    describe(name, () => it('needs the native module tsimg_fs (CI is set, so this fails)', () => {
      throw new Error(`tsimg_fs: ${nativeStatus()}`);
    }));
    return;
  }
  console.warn(`\n!!! SKIPPING "${name}": the native module tsimg_fs is ${nativeStatus()}. Run npm install with a C compiler. !!!\n`);
  describe.skip(name, fn);
}

const started: ChildProcess[] = [];
/** Starts `qemu-io ARGS -c 'sleep 600000' FILE` and waits until its locks show in /proc/locks. */
async function holdWithQemu(args: string[], file: string): Promise<ChildProcess> {
  const child = await holdWithQemuIo(args, file);
  started.push(child);
  return child;
}

/** The message and hint a second qemu process prints for the same conflict. */
function qemuConflict(stderr: string): { message: string; hint: string } | undefined {
  const m = /(Failed to get [^\n]*lock)\n(Is another process using the image \[[^\]]*\]\?)/.exec(stderr);
  return m ? { message: m[1], hint: m[2] } : undefined;
}

/** What FileDevice.open does with these options: undefined when it opened, else the error. */
async function tryOpen(file: string, options: FileDeviceOptions): Promise<LockError | undefined> {
  try {
    const dev = await FileDevice.open(file, options);
    await dev.close();
    return undefined;
  } catch (err) {
    if (err instanceof LockError) return err;
    throw err;
  }
}

// qemu-io's own options for a mode, and the permissions tsimg takes for the same mode.
const MODES: { name: string; qemu: string[]; perms: LockPermissions; readOnly: boolean }[] = [
  { name: 'read-write', qemu: [], perms: imageFilePermissions({ format: true, write: true }), readOnly: false },
  { name: 'read-only', qemu: ['-r'], perms: imageFilePermissions({ format: true, write: false }), readOnly: true },
  { name: 'read-only, force-share', qemu: ['-r', '-U'], perms: imageFilePermissions({ format: true, write: false, forceShare: true }), readOnly: true },
];

describeNative('image locks against qemu-io and qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  let img: string;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-lock-'));
    img = path.join(dir, 'img.qcow2');
    expect(qemuImg(['create', '-q', '-f', 'qcow2', img, '1M']).status).toBe(0);
  });
  afterAll(async () => {
    await Promise.all(started.map(killAndWait));
    cleanup();
  });

  it('takes the same lock bytes as qemu-io for the same mode', async () => {
    for (const mode of MODES) {
      const q = await holdWithQemu(mode.qemu, img);
      const theirs = heldBytes(img);
      await killAndWait(q);
      const dev = await FileDevice.open(img, { readOnly: mode.readOnly, lock: mode.perms });
      expect(procLocks(img).every((l) => l.kind === 'OFDLCK'), mode.name).toBe(true);
      expect(heldBytes(img), mode.name).toEqual(theirs);
      expect(dev.lockState()).toEqual({ kind: 'ofd', permissions: mode.perms });
      await dev.close();
      expect(heldBytes(img), `${mode.name}: released at close`).toEqual([]);
    }
  });

  // Every pair (qemu holds A, a newcomer wants B): tsimg's open succeeds or fails exactly as a
  // second qemu-io does, with the same message and hint.
  for (const holder of MODES) {
    for (const newcomer of MODES) {
      it(`qemu-io ${holder.name} holds; tsimg ${newcomer.name} does what qemu-io ${newcomer.name} does`, async () => {
        const q = await holdWithQemu(holder.qemu, img);
        try {
          const second = qemuIo([...newcomer.qemu, '-c', 'read 0 512', img]);
          const expected = qemuConflict(second.stderr);
          expect(second.status === 0).toBe(expected === undefined);
          const err = await tryOpen(img, { readOnly: newcomer.readOnly, lock: newcomer.perms });
          if (expected === undefined) expect(err).toBeUndefined();
          else expect(err).toMatchObject({ code: 'locked', errno: 'EAGAIN', ...expected });
        } finally {
          await killAndWait(q);
        }
        expect(heldBytes(img)).toEqual([]);
      });
    }
  }

  it('while tsimg holds a write lock, qemu-img info fails as qemu does and -U succeeds', async () => {
    const dev = await FileDevice.open(img, { lock: imageFilePermissions({ format: true, write: true }) });
    try {
      const info = qemuImg(['info', img]);
      expect(info.status).toBe(1);
      expect(info.stderr).toBe(
        `qemu-img: Could not open '${img}': Failed to get shared "write" lock\nIs another process using the image [${img}]?\n`,
      );
      expect(qemuImg(['info', '-U', img]).status).toBe(0);
      const rw = qemuIo(['-c', 'read 0 512', img]);
      expect(qemuConflict(rw.stderr)).toEqual({ message: 'Failed to get "write" lock', hint: `Is another process using the image [${img}]?` });
      // In-process: OFD locks belong to the open file description, so a second open conflicts.
      await expect(FileDevice.open(img, { readOnly: true, lock: imageFilePermissions({ format: true, write: false }) })).rejects.toMatchObject({
        message: 'Failed to get shared "write" lock',
      });
    } finally {
      await dev.close();
    }
    expect(qemuImg(['info', img]).status).toBe(0);
  });

  it('while tsimg reads, qemu-img info works and a qemu-io writer is refused', async () => {
    const dev = await FileDevice.open(img, { readOnly: true, lock: imageFilePermissions({ format: true, write: false }) });
    try {
      expect(qemuImg(['info', img]).status).toBe(0);
      expect(qemuConflict(qemuIo(['-c', 'read 0 512', img]).stderr)?.message).toBe('Failed to get "write" lock');
      // Upgrading to read-write conflicts with nobody: allowed, and qemu-img info then fails.
      expect(dev.setPermissions(imageFilePermissions({ format: true, write: true }))).toBe(true);
      expect(qemuImg(['info', img]).status).toBe(1);
      expect(dev.setPermissions(imageFilePermissions({ format: true, write: false }))).toBe(true);
      expect(qemuImg(['info', img]).status).toBe(0);
    } finally {
      await dev.close();
    }
  });

  it('a permission upgrade that conflicts fails and keeps the old locks', async () => {
    const dev = await FileDevice.open(img, { readOnly: true, lock: imageFilePermissions({ format: true, write: false }) });
    const q = await holdWithQemu(['-r'], img);
    try {
      const before = heldBytes(img);
      expect(() => dev.setPermissions(imageFilePermissions({ format: true, write: true }))).toThrow(
        expect.objectContaining({ code: 'locked', message: 'Failed to get "write" lock' }),
      );
      expect(heldBytes(img)).toEqual(before);
      expect(dev.lockState()).toMatchObject({ permissions: imageFilePermissions({ format: true, write: false }) });
    } finally {
      await killAndWait(q);
      await dev.close();
    }
  });

  it('create over an image in use fails like qemu-img create and leaves the image intact', async () => {
    const q = await holdWithQemu([], img);
    try {
      const size = fs.statSync(img).size;
      const theirs = qemuImg(['create', '-f', 'raw', img, '1M']);
      expect(theirs.status).toBe(1);
      const expected = qemuConflict(theirs.stderr);
      expect(expected?.message).toBe('Failed to get "write" lock');
      await expect(FileDevice.open(img, { create: true })).rejects.toMatchObject({ code: 'locked', ...expected });
      expect(fs.statSync(img).size).toBe(size);
    } finally {
      await killAndWait(q);
    }
    expect(qemuImg(['check', img]).status).toBe(0);
  });

  it('without the native module: no lock, and it says so', async () => {
    const warnings: string[] = [];
    const dev = await FileDevice.open(img, {
      native: false, lock: imageFilePermissions({ format: true, write: true }), onWarning: (w) => warnings.push(w),
    });
    try {
      expect(dev.lockState()).toEqual({ kind: 'none' });
      expect(warnings).toEqual([
        'File locking is unavailable (the native module tsimg_fs is disabled by the caller): this image is not protected against concurrent use by qemu or tsimg',
      ]);
      expect(heldBytes(img)).toEqual([]);
      expect(qemuImg(['info', img]).status).toBe(0); // nothing excludes qemu: the warning was right
    } finally {
      await dev.close();
    }
    await expect(FileDevice.open(img, { native: false, locking: 'on', lock: imageFilePermissions({ format: true, write: true }) }))
      .rejects.toBeInstanceOf(UnsupportedError);
    // locking: 'off' is quiet and locks nothing, even with the module.
    const off = await FileDevice.open(img, { locking: 'off', lock: imageFilePermissions({ format: true, write: true }), onWarning: (w) => warnings.push(w) });
    expect(off.lockState()).toEqual({ kind: 'none' });
    expect(qemuImg(['info', img]).status).toBe(0);
    await off.close();
    expect(warnings).toHaveLength(1);
  });
});
