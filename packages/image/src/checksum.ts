/**
 * `checksum`: a digest of an image's guest-visible bytes, the same whatever its format,
 * compression or allocation — blkhash's construction with blksum's defaults (the blkhash
 * project, lib/blkhash.c and its reference test/blkhash.py), so values compare with `blksum`:
 *
 *     SHA-256( SHA-256(block 0) || SHA-256(block 1) || … || SHA-256(block N-1) || le64(size) )
 *
 * with blocks of 64 KiB from guest offset 0, the last one shorter when the size is not a
 * multiple (hashed over its actual bytes). A block that block status says reads as zeroes is
 * not read: its digest is the precomputed digest of a zero block. The blocks are hashed on a
 * pool of worker threads (checksum-pool.ts) while the next windows are read.
 */
import { createHash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { blockStatusAbove, type ChainImage } from './block-status.js';
import { createBlockHashPool } from './checksum-pool.js';

/** blkhash's default block size (blksum.c, blkhash.c: 64 KiB). */
export const BLKHASH_BLOCK_SIZE = 64 * 1024;
/** Guest bytes per window handed to a worker (a multiple of the block size). */
const WINDOW = 4 * 1024 * 1024;

/** Options of {@link checksumImage}. */
export interface ChecksumOptions {
  /** Worker threads hashing blocks; default the available cores; 0 hashes on this thread. */
  threads?: number;
  /** Called after each window with the guest bytes done and the image size. */
  onProgress?: (done: number, total: number) => void;
  /** Stops the checksum (it then rejects with the signal's reason). */
  signal?: AbortSignal;
}

/** What one window holds: the digests to come from the pool, or `zeroBlocks` zero-block digests. */
type WindowResult = { digests: Promise<Uint8Array> } | { zeroBlocks: number; tail: number };

/**
 * The blkhash digest (hex) of `image`'s guest bytes through its backing chain; see the module
 * comment.
 *
 * @example
 * const hex = await checksumImage(await openImage('disk.qcow2', { readOnly: true }));
 */
export async function checksumImage(image: ChainImage, options: ChecksumOptions = {}): Promise<string> {
  const size = image.size();
  const threads = options.threads ?? Math.max(1, availableParallelism());
  const pool = createBlockHashPool(BLKHASH_BLOCK_SIZE, threads);
  const outer = createHash('sha256');
  const zeroDigest = createHash('sha256').update(new Uint8Array(BLKHASH_BLOCK_SIZE)).digest();
  const queue: WindowResult[] = [];
  const maxInFlight = 2 * Math.max(1, threads);

  const drainOne = async (): Promise<void> => {
    const w = queue.shift()!;
    if ('digests' in w) {
      outer.update(await w.digests);
      return;
    }
    for (let i = 0; i < w.zeroBlocks; i++) outer.update(zeroDigest);
    if (w.tail) outer.update(createHash('sha256').update(new Uint8Array(w.tail)).digest());
  };

  try {
    for (let start = 0; start < size; start += WINDOW) {
      options.signal?.throwIfAborted();
      const length = Math.min(WINDOW, size - start);
      queue.push(await readWindow(image, start, length, pool.hash));
      while (queue.length >= maxInFlight) await drainOne();
      options.onProgress?.(start + length, size);
    }
    while (queue.length) await drainOne();
  } finally {
    await pool.close();
  }
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(size), true);
  outer.update(len);
  return outer.digest('hex');
}

/**
 * Reads the window `[start, start + length)`: only its data runs are read (zero runs stay the
 * buffer's zeroes); a window that is all zero is answered without a buffer.
 */
async function readWindow(
  image: ChainImage,
  start: number,
  length: number,
  hash: (window: Uint8Array) => Promise<Uint8Array>,
): Promise<WindowResult> {
  const runs: [number, number][] = [];
  for (let pos = start; pos < start + length; ) {
    const st = await blockStatusAbove(image, pos, start + length - pos);
    if (!st.zero) runs.push([pos, st.length]);
    pos += st.length;
  }
  if (runs.length === 0) {
    return { zeroBlocks: Math.floor(length / BLKHASH_BLOCK_SIZE), tail: length % BLKHASH_BLOCK_SIZE };
  }
  const buf = new Uint8Array(length);
  await Promise.all(runs.map(([pos, n]) => image.read(pos, buf.subarray(pos - start, pos - start + n))));
  const digests = hash(buf);
  digests.catch(() => undefined); // awaited in order later; a failure must not go unhandled first
  return { digests };
}
