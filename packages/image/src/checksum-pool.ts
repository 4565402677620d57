/**
 * The block hashing of `checksum` on worker threads: a window of guest bytes goes to a worker
 * (its buffer transferred, not copied), which answers the SHA-256 of each of its blocks — an
 * all-zero full block with the precomputed zero-block digest, as blkhash does, since a memcmp
 * costs far less than a digest. With `threads` 0 the same work runs on the calling thread.
 *
 * The worker is started from source text (`eval`), not from a file: it needs nothing but
 * node:crypto, and needs no copy beside the CLI bundle.
 */
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { IoError } from '@tsimg/raw';

/** Hashes the windows of one checksum; see the module comment. */
export interface BlockHashPool {
  /**
   * The digests (32 bytes each, in order) of the blocks of `window`: blocks of `blockSize`
   * bytes, the last one shorter when `window` ends inside a block. The buffer is handed over:
   * the caller must not touch it afterwards.
   */
  hash(window: Uint8Array): Promise<Uint8Array>;
  /** Stops the workers. */
  close(): Promise<void>;
}

/**
 * The per-window work, shared by the worker source (as its text) and the in-thread pool: so it
 * must name nothing outside itself but its parameters and `Buffer`.
 */
function hashBlocks(
  hasher: (data: Uint8Array) => Uint8Array,
  window: Uint8Array,
  blockSize: number,
  zeroBlock: Uint8Array,
  zeroDigest: Uint8Array,
): Uint8Array {
  const size = zeroDigest.length;
  const blocks = Math.ceil(window.length / blockSize);
  const out = new Uint8Array(blocks * size);
  for (let i = 0; i < blocks; i++) {
    const block = window.subarray(i * blockSize, Math.min(window.length, (i + 1) * blockSize));
    const full = block.length === blockSize;
    out.set(full && Buffer.from(block.buffer, block.byteOffset, block.length).equals(zeroBlock) ? zeroDigest : hasher(block), i * size);
  }
  return out;
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const hashBlocks = ${hashBlocks.toString()};
const blockSize = workerData.blockSize;
const zeroBlock = Buffer.alloc(blockSize);
const zeroDigest = createHash('sha256').update(zeroBlock).digest();
const sha = (b) => createHash('sha256').update(b).digest();
parentPort.on('message', ({ id, buffer, offset, length }) => {
  try {
    const out = hashBlocks(sha, new Uint8Array(buffer, offset, length), blockSize, zeroBlock, zeroDigest);
    parentPort.postMessage({ id, digests: out }, [out.buffer]);
  } catch (err) {
    parentPort.postMessage({ id, error: String(err && err.message || err) });
  }
});
`;

/** Creates a pool of `threads` workers (0: hash on the calling thread) for blocks of `blockSize`. */
export function createBlockHashPool(blockSize: number, threads: number): BlockHashPool {
  const zeroBlock = Buffer.alloc(blockSize);
  const sha = (b: Uint8Array): Uint8Array => createHash('sha256').update(b).digest();
  const zeroDigest = sha(zeroBlock);
  if (threads === 0) {
    return {
      hash: async (window) => hashBlocks(sha, window, blockSize, zeroBlock, zeroDigest),
      close: async () => undefined,
    };
  }
  const pending = new Map<number, { resolve: (d: Uint8Array) => void; reject: (e: Error) => void }>();
  let broken: Error | undefined;
  const fail = (err: Error): void => {
    broken ??= new IoError(`checksum worker failed: ${err.message}`, { cause: err });
    for (const p of pending.values()) p.reject(broken);
    pending.clear();
  };
  const workers = Array.from({ length: threads }, () => {
    // No flags: the parent's may be refused for a worker (--input-type, --max-old-space-size),
    // and the worker's source needs none.
    const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { blockSize }, execArgv: [] });
    w.on('message', (m: { id: number; digests?: Uint8Array; error?: string }) => {
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      if (m.error !== undefined) p.reject(new IoError(`checksum worker failed: ${m.error}`));
      else p.resolve(m.digests!);
    });
    w.on('error', fail);
    return w;
  });
  let next = 0;
  return {
    hash(window) {
      if (broken) return Promise.reject(broken);
      const id = next++;
      const w = workers[id % workers.length]!;
      return new Promise<Uint8Array>((resolve, reject) => {
        pending.set(id, { resolve, reject });
        const { buffer, byteOffset, byteLength } = window;
        w.postMessage({ id, buffer, offset: byteOffset, length: byteLength }, [buffer as ArrayBuffer]);
      });
    },
    async close() {
      await Promise.all(workers.map((w) => w.terminate()));
    },
  };
}
