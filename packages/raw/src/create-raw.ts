/**
 * Creating a host file the way qemu's file-posix driver does for `qemu-img create` (raw images,
 * and the container file of every other format): create or truncate to 0, then grow to the size
 * rounded up to 512 bytes, preallocating as asked.
 *
 * Preallocation: `full` writes zeroes, as qemu does. `falloc` uses fallocate(2) through the
 * native module (FileDevice.preallocate); without it, it writes zeroes: the file then has the
 * same size, content and allocated blocks as qemu's, only slower to make.
 */
import type { BlockDevice } from './block-device.js';
import { IoError, strerror, TsimgError, UnsupportedError, UsageError } from './errors.js';
import { FileDevice } from './file-device.js';
import { BDRV_SECTOR_SIZE } from './limits.js';

/** Preallocation modes of a host file (qemu's PreallocMode minus `metadata`). */
export type RawPreallocation = 'off' | 'falloc' | 'full';

/**
 * The part of a BlockDevice that creating a file needs, and FileDevice's `preallocate`
 * (posix_fallocate) where the device has it.
 */
export type SizedWritable = Pick<BlockDevice, 'write' | 'resize' | 'size'> & {
  preallocate?(offset: number, length: number): Promise<boolean>;
};

const ZERO_CHUNK = 4 * 1024 * 1024;
const SECTOR = BigInt(BDRV_SECTOR_SIZE);
const MAX_BLOCKSIZE = 4096;

/** Options for {@link createFile}. */
export interface CreateFileOptions {
  /** Size in bytes (rounded up to a multiple of 512, as qemu does); default 0. */
  size?: bigint;
  /** `off`, `falloc` or `full`; any other name fails after the file is created, as in qemu. */
  preallocation?: string;
}

/**
 * Writes zeroes over `[start, end)` of `dev` in 4 MiB pieces, so the range is allocated
 * (qemu's `full` preallocation, and tsimg's stand-in for `falloc`).
 */
export async function fillZeroes(dev: SizedWritable, start: number, end: number): Promise<void> {
  const zeroes = new Uint8Array(Math.min(ZERO_CHUNK, Math.max(end - start, 0)));
  for (let pos = start; pos < end; pos += zeroes.length) {
    await dev.write(pos, zeroes.subarray(0, Math.min(zeroes.length, end - pos)));
  }
}

/**
 * qemu's raw_regular_truncate on a device: grows (or shrinks) to `size` with `mode`.
 * Errors carry qemu's texts ("Could not resize file: ...") and the errno (EFBIG matters:
 * `qemu-img create` rewords it).
 */
export async function truncateWithPreallocation(dev: SizedWritable, size: bigint, mode: RawPreallocation): Promise<void> {
  if (size >= 1n << 63n) {
    throw new IoError(`Could not resize file: ${strerror('EINVAL')}`, { errno: 'EINVAL' });
  }
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) {
    // Beyond 2^53 bytes: larger than any file system tsimg targets allows (ext4: 16 TiB).
    throw new IoError(`Could not resize file: ${strerror('EFBIG')}`, { errno: 'EFBIG' });
  }
  const n = Number(size);
  const current = dev.size();
  if (mode !== 'off' && n < current) {
    throw new UnsupportedError('Cannot use preallocation for shrinking files', { errno: 'ENOTSUP' });
  }
  if (mode === 'falloc' && n > current && dev.preallocate !== undefined) {
    let done: boolean;
    try {
      done = await dev.preallocate(current, n - current);
    } catch (err) {
      const errno = err instanceof TsimgError ? err.errno : undefined;
      throw new IoError(`Could not preallocate new data: ${strerror(errno ?? 'EIO')}`, { cause: err, errno });
    }
    if (done) {
      if (current === 0) await allocateFirstBlock(dev, n).catch(() => undefined);
      return;
    }
  }
  try {
    if (mode === 'off' || n <= current) {
      await dev.resize(n);
      // qemu ignores a failure here too: the file already has its size
      if (current === 0 && n > 0) await allocateFirstBlock(dev, n).catch(() => undefined);
      return;
    }
    // full (and falloc without fallocate): the final size first, then zeroes from the old end
    await dev.resize(n);
  } catch (err) {
    const errno = err instanceof TsimgError ? err.errno : undefined;
    throw new IoError(`Could not resize file: ${strerror(errno ?? 'EIO')}`, { cause: err, errno });
  }
  try {
    await preallocateZeroes(dev, current, n, mode);
  } catch (err) {
    // As handle_aiocb_truncate: the file gets its old length back (a full disk keeps no
    // half-preallocated file; qemu only reports a failure to restore it).
    await dev.resize(current).catch(() => undefined);
    throw err;
  }
}

/**
 * {@link fillZeroes} for a preallocation of `mode`: a failure is an IoError in file-posix's
 * words ("Could not write zeros for preallocation: No space left on device"), with its errno.
 */
export async function preallocateZeroes(dev: SizedWritable, start: number, end: number, mode: 'falloc' | 'full'): Promise<void> {
  try {
    await fillZeroes(dev, start, end);
  } catch (err) {
    const errno = err instanceof TsimgError ? err.errno : undefined;
    const what = mode === 'full' ? 'Could not write zeros for preallocation' : 'Could not preallocate new data';
    throw new IoError(`${what}: ${strerror(errno ?? 'EIO')}`, { cause: err, errno });
  }
}

/**
 * file-posix's allocate_first_block: after growing an empty file, qemu writes zeroes over its
 * first block (4 KiB, or 512 bytes for files under 4 KiB) so that later alignment probing finds
 * an allocated block. It changes no byte, only the allocation `qemu-img info` reports.
 */
async function allocateFirstBlock(dev: SizedWritable, size: number): Promise<void> {
  const n = Math.min(size < MAX_BLOCKSIZE ? 512 : MAX_BLOCKSIZE, size);
  await dev.write(0, new Uint8Array(n));
}

/** Checks a preallocation name for a host file (file-posix's qapi_enum_parse + mode check). */
export function parseRawPreallocation(name: string | undefined): RawPreallocation | 'metadata' {
  const mode = name ?? 'off';
  if (mode === 'off' || mode === 'falloc' || mode === 'full' || mode === 'metadata') return mode;
  throw new UsageError(`invalid parameter value: ${mode}`, { errno: 'EINVAL' });
}

/**
 * Creates (or truncates) the file at `path` and grows it to `size` rounded up to 512 bytes,
 * like qemu's file-posix `raw_co_create`. A bad preallocation name fails before the file is
 * touched; `metadata` fails after it was created and emptied (qemu's order).
 */
export async function createFile(path: string, options: CreateFileOptions = {}): Promise<void> {
  const mode = parseRawPreallocation(options.preallocation);
  const raw = options.size ?? 0n;
  const size = ((raw + SECTOR - 1n) / SECTOR) * SECTOR;
  const dev = await FileDevice.open(path, { create: true });
  try {
    if (mode === 'metadata') {
      throw new UnsupportedError('Unsupported preallocation mode: metadata', { errno: 'ENOTSUP' });
    }
    await truncateWithPreallocation(dev, size, mode);
  } finally {
    await dev.close();
  }
}
