/**
 * Opening a host file for a FileDevice: the open(2) flags, what the file is (regular file or
 * host block device), its locks at open (open-lock.ts), its size and file-system type — the
 * messages of qemu's file-posix driver for each failure.
 */
import fs from 'node:fs';
import { systemError, UsageError } from './errors.js';
import { call } from './fs-call.js';
import { blockDeviceSize } from './host-device.js';
import type { ImageLock, LockCalls } from './lock.js';
import { loadNative, type NativeFs } from './native.js';
import { lockAtOpen } from './open-lock.js';
import type { FileDeviceOptions } from './file-device-options.js';

// statfs f_type magics of the file systems whose st_blocks includes every data block.
const BLOCKS_TRUSTED = new Set([0xef53, 0x58465342, 0x9123683e, 0x01021994]); // ext*, xfs, btrfs, tmpfs

/** An open host file with what a FileDevice needs to know of it. */
export interface OpenedFile {
  fd: number;
  size: number;
  /** A host block device (S_ISBLK) rather than a regular file. */
  blockDevice: boolean;
  native: NativeFs | undefined;
  lockCalls: LockCalls | undefined;
  lock: ImageLock | undefined;
  /** statfs f_type; undefined for a block device or when statfs failed. */
  fsType: number | undefined;
  /** st_blocks counts every allocated block on this file system (see file-device.ts). */
  blocksTrusted: boolean;
}

/**
 * Opens `path` as {@link FileDevice.open} documents: without O_TRUNC, since `create` empties
 * the file only once the create lock is held (raw_co_create, in lockAtOpen). On failure the
 * descriptor is closed and the lock dropped before the error is thrown.
 */
export async function openHostFile(path: string, options: FileDeviceOptions): Promise<OpenedFile> {
  const readOnly = options.readOnly ?? false;
  const create = options.create ?? false;
  if (readOnly && create) throw new UsageError(`Could not create '${path}': opened read-only`);
  const { O_RDONLY, O_RDWR, O_CREAT } = fs.constants;
  const flags = readOnly ? O_RDONLY : O_RDWR | (create ? O_CREAT : 0);
  let fd: number;
  try {
    fd = await call<number>((cb) => fs.open(path, flags, 0o644, cb));
  } catch (err) {
    throw systemError(err, `Could not ${create ? 'create' : 'open'} '${path}'`);
  }
  let lock: ImageLock | undefined;
  try {
    const stat = await call<fs.Stats>((cb) => fs.fstat(fd, cb));
    const blockDevice = stat.isBlockDevice();
    if (!stat.isFile() && !blockDevice) {
      // qemu's file-posix message; a directory opened read-write failed earlier with EISDIR.
      throw new UsageError(`'file' driver requires '${path}' to be a regular file`, { errno: 'EINVAL' });
    }
    const native = options.native === false ? undefined : loadNative();
    const locks = await lockAtOpen(fd, path, options, blockDevice, native);
    lock = locks.lock;
    const size = blockDevice ? blockDeviceSize(fd, stat, native, path) : create ? 0 : stat.size;
    const fsType = blockDevice ? undefined : await call<fs.StatsFs>((cb) => fs.statfs(path, cb)).then((st) => st.type, () => undefined);
    const blocksTrusted = fsType !== undefined && BLOCKS_TRUSTED.has(fsType);
    return { fd, size, blockDevice, native, lockCalls: locks.lockCalls, lock, fsType, blocksTrusted };
  } catch (err) {
    lock?.release();
    fs.close(fd, () => {});
    throw systemError(err, `Could not open '${path}'`);
  }
}
