/**
 * The lock bytes each file of an image takes per command, as vectors read off QEMU 7.2 (strace
 * of qemu-img's fcntl calls: `strace -f -y -e trace=fcntl qemu-img map top.qcow2`), through
 * permissions.ts and raw's lockedBytes.
 */
import { describe, expect, it } from 'vitest';
import { lockedBytes } from '../../raw/src/lock.js';
import {
  backingNodePermissions, checkForceShare, dataFileLock, imageFileLock, openingPermissions, topNodePermissions,
  type OpenFlags,
} from '../src/permissions.js';

/** The bytes of the image's file, its data file, its backing file (qcow2 and raw) for `flags`. */
function bytes(flags: OpenFlags, format = 'qcow2') {
  const top = topNodePermissions(flags);
  const back = backingNodePermissions(top);
  return {
    file: lockedBytes(imageFileLock(top, format)),
    data: lockedBytes(dataFileLock(top)),
    backingQcow2: lockedBytes(imageFileLock(back, 'qcow2')),
    backingRaw: lockedBytes(imageFileLock(back, 'raw')),
  };
}

describe('per-command lock bytes (qemu-img 7.2)', () => {
  it('map / check / compare / measure / dd source: read-only', () => {
    expect(bytes({ write: false })).toEqual({ file: [100, 201, 203], data: [100, 203], backingQcow2: [100, 201, 203], backingRaw: [100] });
    expect(bytes({ write: false }, 'raw').file).toEqual([100]);
  });
  it('-U: only the read byte everywhere', () => {
    expect(bytes({ write: false, forceShare: true })).toEqual({ file: [100], data: [100], backingQcow2: [100], backingRaw: [100] });
  });
  it('convert sources: BDRV_O_NO_SHARE', () => {
    expect(bytes({ write: false, noShare: true })).toEqual({
      file: [100, 201, 203], data: [100, 201, 203], backingQcow2: [100, 201, 203], backingRaw: [100, 201, 203],
    });
    expect(bytes({ write: false, noShare: true }, 'raw').file).toEqual([100, 201, 203]);
    expect(bytes({ write: false, noShare: true, forceShare: true }, 'raw').file).toEqual([100]);
  });
  it('check -r, convert / dd targets: read-write', () => {
    expect(bytes({ write: true })).toEqual({
      file: [100, 101, 103, 201, 203], data: [100, 101, 103, 203], backingQcow2: [100, 201, 203], backingRaw: [100],
    });
    expect(bytes({ write: true }, 'raw').file).toEqual([100, 101]);
    expect(bytes({ write: true, resize: true }, 'raw').file).toEqual([100, 101, 103]);
  });
  it('info: BDRV_O_NO_IO', () => {
    expect(bytes({ write: false, noIo: true }).file).toEqual([201, 203]);
    expect(bytes({ write: false, noIo: true }, 'raw').file).toEqual([]);
    expect(bytes({ write: false, noIo: true, forceShare: true }).file).toEqual([]);
  });
  it('create -b: the backing file opened with NO_IO and force-share locks nothing', () => {
    expect(bytes({ write: false, noIo: true, forceShare: true })).toEqual({ file: [], data: [], backingQcow2: [], backingRaw: [] });
  });
  it('while a node opens, its data file only refuses resizes (qemu reports "shared resize" first)', () => {
    const top = topNodePermissions({ write: true });
    expect(lockedBytes(dataFileLock(openingPermissions(top)))).toEqual([203]);
    expect(lockedBytes(imageFileLock(openingPermissions(top), 'qcow2'))).toEqual([100, 101, 103, 201, 203]);
    expect(lockedBytes(imageFileLock(openingPermissions(top), 'raw'))).toEqual([]);
  });
  it('force-share with writing is qemu\'s error', () => {
    expect(() => checkForceShare({ write: true, forceShare: true })).toThrow('force-share=on can only be used with read-only images');
    expect(() => topNodePermissions({ write: true, forceShare: true })).toThrow(/force-share=on/);
  });
});
