/** Host block devices (qemu's host_device driver): what a device file needs beyond a file. */
import fs from 'node:fs';
import { IoError, strerror, TsimgError, UnsupportedError } from './errors.js';
import type { NativeFs } from './native.js';

/**
 * A block device's size: BLKGETSIZE64 (what qemu's lseek(SEEK_END) returns), or without the
 * native module the 512-byte sector count in /sys/dev/block/MAJOR:MINOR/size.
 */
export function blockDeviceSize(fd: number, stat: fs.Stats, native: NativeFs | undefined, path: string): number {
  if (native !== undefined) {
    const r = native.blockDeviceSize(fd);
    if (typeof r === 'number') return r;
    throw new IoError(`Could not open '${path}': ${strerror(r.errno)}`, { errno: r.errno });
  }
  // glibc's gnu_dev_major / gnu_dev_minor, on a dev_t that fits in a double here.
  const rdev = BigInt(stat.rdev);
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
  try {
    const sectors = Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim());
    if (Number.isSafeInteger(sectors)) return sectors * 512;
  } catch {
    // No sysfs (not Linux, or not mounted): nothing else tells the size without the module.
  }
  throw new UnsupportedError(`Could not get the size of block device '${path}': the native module tsimg_fs is not available`, { errno: 'ENOTSUP' });
}
