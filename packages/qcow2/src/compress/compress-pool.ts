/**
 * A pool of worker threads that compress clusters for bulk writers (`convert -c`), the way
 * qemu compresses on its thread pool. Workers keep compression off the main thread and off
 * libuv's pool, which the same convert needs for its file I/O.
 *
 * Measured here (2 cores, Node 20, 64 KiB clusters of 52 MB of mixed binaries, text and random
 * data; MB/s per CPU-second, which stays meaningful on a loaded machine):
 *   zlib deflate: on the calling thread 77, async zlib on libuv's pool 64, this pool 73-74;
 *   zstd-napi: on the calling thread 374, this pool 314-334; zstd-wasm: 149 on one thread.
 * So the pool costs ~5-10 % CPU per cluster for running on every core, where libuv's pool costs
 * 17 % and competes with file I/O; the pool is used for zlib and zstd alike.
 */
import { availableParallelism } from 'node:os';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { Worker } from 'node:worker_threads';
import { TsimgError, UsageError, IoError } from '@tsimg/raw';
import { checkClusterSize, checkCompressionType, type CompressionType } from './compress.js';
import type { CompressReply, CompressRequest, CompressWorkerConfig } from './compress-worker.js';
import { deflateClusterSync, loadZlib } from './deflate.js';
import { loadZstd, zstdCompressCluster } from './zstd.js';

/** Compresses clusters on worker threads; results are identical whichever worker ran. */
export interface CompressPool {
  readonly type: CompressionType;
  readonly threads: number;
  /**
   * Compresses one cluster as compressCluster does (undefined: store it uncompressed). The
   * cluster is copied to the worker, so the caller may reuse its buffer once this returns.
   * Callers keep their own order (await the promises in cluster order) and bound how many are in
   * flight (about 2 × threads keeps every worker busy).
   */
  compress(cluster: Uint8Array): Promise<Uint8Array | undefined>;
  /** Waits for the clusters in flight, then stops the workers. */
  close(): Promise<void>;
}

/** Options of createCompressPool. */
export interface CompressPoolOptions {
  /**
   * Worker threads; default: the available cores, at most 4 (qemu's QCOW2_MAX_THREADS). 0: no
   * workers, each cluster is compressed on the calling thread when compress() is called — the
   * cheaper choice for zstd-napi on few cores (convert -c of 256 MiB here: 0.53 s of CPU and
   * 1.0 s wall instead of 0.76 s and 1.6 s with two workers, which cost ~80 ms of CPU each to
   * start plus a copy and two messages per cluster).
   */
  threads?: number;
}

const QCOW2_MAX_THREADS = 4;

/**
 * The compiled worker. Next to this module in dist/; when this module runs from its TypeScript
 * source (vitest), Node cannot run a .ts worker, so the build's copy in ../dist is used.
 */
function workerUrl(): URL {
  const fromSource = import.meta.url.endsWith('.ts');
  const url = new URL(fromSource ? '../../dist/compress/compress-worker.js' : './compress-worker.js', import.meta.url);
  if (!existsSync(url)) {
    throw new IoError(`compress worker ${fileURLToPath(url)} is missing: build the package (npm run build)`);
  }
  return url;
}

interface Pending {
  resolve: (result: Uint8Array | undefined) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  pending: Map<number, Pending>;
}

/**
 * Creates a compression pool; workers start on the first compress(), so a pool that is never
 * used costs nothing. Idle workers do not keep the process alive, but call close() when done.
 */
export function createCompressPool(type: CompressionType, options: CompressPoolOptions = {}): CompressPool {
  checkCompressionType(type);
  const threads = options.threads ?? Math.min(availableParallelism(), QCOW2_MAX_THREADS);
  if (!Number.isInteger(threads) || threads < 0) throw new UsageError(`Invalid thread count ${threads}`);
  if (threads === 0) return createInThreadPool(type);

  let slots: Promise<Slot[]> | undefined;
  let broken: Error | undefined;
  let closing = false;
  let nextId = 0;
  const inflight = new Set<Promise<unknown>>();

  // One worker failing fails the pool: its clusters are lost, and a convert must stop anyway.
  const failAll = (err: Error, all: Slot[]): void => {
    broken ??= err;
    for (const slot of all) {
      for (const p of slot.pending.values()) p.reject(broken);
      slot.pending.clear();
      void slot.worker.terminate();
    }
  };

  const start = async (): Promise<Slot[]> => {
    // This thread picks the zstd backend and every worker loads the same one, so the bytes
    // do not depend on which worker compressed a cluster.
    const config: CompressWorkerConfig =
      type === 'zstd' ? { type, zstdBackend: (await loadZstd()).name } : { type };
    const url = workerUrl();
    // Loaded here, not at import: node:worker_threads costs every tsimg start 3-15 ms here.
    // require, not import(): the CLI's bundle runs in a vm.Script, which has no dynamic import.
    const { Worker } = createRequire(import.meta.url)('node:worker_threads') as typeof import('node:worker_threads');
    const all: Slot[] = [];
    for (let i = 0; i < threads; i++) {
      // The parent's flags minus --input-type, which Node refuses for a worker's file (it is
      // set when tsimg's library runs from `node --input-type=module -e`).
      const execArgv = process.execArgv.filter((arg) => !arg.startsWith('--input-type'));
      const worker = new Worker(url, { workerData: config, execArgv });
      const slot: Slot = { worker, pending: new Map() };
      worker.on('message', (reply: CompressReply) => {
        const p = slot.pending.get(reply.id);
        if (p === undefined) return;
        slot.pending.delete(reply.id);
        if (slot.pending.size === 0) worker.unref();
        if (reply.ok) p.resolve(reply.result);
        else p.reject(new IoError(`compression failed: ${reply.message}`, { errno: reply.code }));
      });
      worker.on('error', (err) => failAll(new IoError(`compression worker failed: ${err.message}`, { cause: err }), all));
      worker.on('exit', (code) => {
        if (!closing) failAll(new IoError(`compression worker exited with status ${code}`), all);
      });
      // Idle workers must not keep the process alive. After the listeners: adding a 'message'
      // listener refs the worker again.
      worker.unref();
      all.push(slot);
    }
    return all;
  };

  const run = async (copy: Uint8Array): Promise<Uint8Array | undefined> => {
    slots ??= start();
    const all = await slots;
    if (broken) throw broken;
    // The least busy worker: with equal clusters this is round-robin.
    let slot = all[0]!;
    for (const s of all) if (s.pending.size < slot.pending.size) slot = s;
    const id = nextId++;
    return new Promise<Uint8Array | undefined>((resolve, reject) => {
      if (slot.pending.size === 0) slot.worker.ref();
      slot.pending.set(id, { resolve, reject });
      const request: CompressRequest = { id, cluster: copy };
      slot.worker.postMessage(request, [copy.buffer as ArrayBuffer]);
    });
  };

  return {
    type,
    threads,
    compress(cluster) {
      if (closing) return Promise.reject(new UsageError('compression pool is closed'));
      if (broken) return Promise.reject(broken);
      try {
        checkClusterSize(cluster.length);
      } catch (err) {
        return Promise.reject(err);
      }
      // Copied now, before anything is awaited, so the caller may reuse its buffer at once; and
      // a copy of just the cluster is what moves to the worker: posting the caller's view would
      // clone its whole backing buffer (often a multi-megabyte read buffer) for every cluster.
      // (Not cluster.slice(): for a Buffer that is a view, not a copy.)
      const copy = new Uint8Array(cluster.length);
      copy.set(cluster);
      const task = run(copy);
      inflight.add(task);
      const forget = (): void => void inflight.delete(task);
      task.then(forget, forget);
      return task;
    },
    async close() {
      if (closing) return;
      closing = true;
      await Promise.allSettled([...inflight]);
      if (slots === undefined) return;
      const all = await slots.catch(() => []);
      await Promise.all(all.map((s) => s.worker.terminate()));
    },
  };
}

/** The pool without workers (threads: 0): the same codecs as the workers, on the calling thread. */
function createInThreadPool(type: CompressionType): CompressPool {
  let codec: Promise<(cluster: Uint8Array) => Uint8Array | undefined> | undefined;
  let closing = false;
  const load = async (): Promise<(cluster: Uint8Array) => Uint8Array | undefined> => {
    if (type === 'zstd') {
      const zstd = await loadZstd();
      return (cluster) => zstdCompressCluster(zstd, cluster);
    }
    const zlib = await loadZlib();
    return (cluster) => deflateClusterSync(zlib, cluster);
  };
  return {
    type,
    threads: 0,
    async compress(cluster) {
      if (closing) throw new UsageError('compression pool is closed');
      checkClusterSize(cluster.length);
      // The result is a buffer of its own (both codecs copy their output), never a view of `cluster`.
      return (await (codec ??= load()))(cluster);
    },
    async close() {
      closing = true;
    },
  };
}
