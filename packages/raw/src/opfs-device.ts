/**
 * OpfsDevice: a read/write BlockDevice over a file of the browser's origin private file system
 * (OPFS, `navigator.storage.getDirectory()`). Browsers give the one API that reads back what was
 * written, at any offset, with truncation and flushes — FileSystemSyncAccessHandle — only to
 * dedicated workers; so a small worker (started from a Blob URL, nothing to serve) holds the
 * handle and each device call is one message to it, answered in order. A page converts into
 * such a file and then offers `file()` (a File) for download without holding the image in memory.
 */
import { checkOpen, checkRange, checkUint } from './assert.js';
import type { BlockDevice, BlockStatus, WriteZeroesOptions } from './block-device.js';
import { IoError, UnsupportedError } from './errors.js';
import { allDataStatus } from './source-device.js';

/** What OpfsDevice needs of a FileSystemFileHandle (this package builds without the DOM types). */
export interface OpfsFileHandle {
  readonly kind: 'file';
  readonly name: string;
  getFile(): Promise<Blob>;
}

/** What OpfsDevice needs of a FileSystemDirectoryHandle. */
export interface OpfsDirectoryHandle {
  getFileHandle(name: string, options?: { create?: boolean }): Promise<OpfsFileHandle>;
}

/** Options for {@link OpfsDevice.open}. */
export interface OpfsDeviceOptions {
  /** The directory the file is in (default: the OPFS root, `navigator.storage.getDirectory()`). */
  directory?: OpfsDirectoryHandle;
  /** Make the file when it does not exist (default true). */
  create?: boolean;
  /** Empty the file first (default false): a new image is written from nothing. */
  truncate?: boolean;
}

/** The part of a DOM Worker the device uses. */
interface WorkerLike {
  postMessage(message: unknown, transfer?: ArrayBuffer[]): void;
  onmessage: ((event: { data: Reply }) => void) | null;
  onerror: ((event: { message?: string }) => void) | null;
  terminate(): void;
}

/** The worker's answer to one request. */
interface Reply {
  error?: string;
  size?: number;
  n?: number;
  bytes?: ArrayBuffer;
}

/**
 * The worker: it opens the sync access handle and runs each request to its end before the next
 * (every handle call is synchronous), so answers come in the order of the requests. Plain
 * JavaScript in a string: a bundler's helpers would not exist in the worker's scope.
 */
const WORKER_SOURCE = `
let handle;
onmessage = async (e) => {
  const m = e.data;
  try {
    if (m.op === 'open') {
      handle = await m.file.createSyncAccessHandle();
      if (m.truncate) handle.truncate(0);
      postMessage({ size: handle.getSize() });
    } else if (m.op === 'read') {
      const b = new Uint8Array(m.length);
      let n = 0;
      while (n < b.length) {
        const got = handle.read(b.subarray(n), { at: m.offset + n });
        if (got <= 0) break;
        n += got;
      }
      postMessage({ n, bytes: b.buffer }, [b.buffer]);
    } else if (m.op === 'write') {
      const d = new Uint8Array(m.data);
      for (let n = 0; n < d.length; ) {
        const put = handle.write(d.subarray(n), { at: m.offset + n });
        if (put <= 0) throw new Error('the file took no more bytes');
        n += put;
      }
      postMessage({});
    } else if (m.op === 'truncate') {
      handle.truncate(m.size);
      postMessage({});
    } else if (m.op === 'flush') {
      handle.flush();
      postMessage({});
    } else if (m.op === 'close') {
      handle.close();
      postMessage({});
      close();
    }
  } catch (err) {
    postMessage({ error: (err && err.name ? err.name + ': ' : '') + (err && err.message ? err.message : String(err)) });
  }
};
`;

/** Zeroes are written in pieces of this size (a sync access handle has no "write zeroes"). */
const ZERO_CHUNK = 1024 * 1024;

/** A file of the origin private file system, read and written through a worker's sync handle. */
export class OpfsDevice implements BlockDevice {
  readonly readOnly = false;
  readonly #worker: WorkerLike;
  readonly #handle: OpfsFileHandle;
  /** The resolvers of the requests sent and not yet answered, oldest first. */
  readonly #pending: { resolve: (r: Reply) => void; reject: (e: Error) => void }[] = [];
  #size: number;
  #closed = false;
  /** Set when the worker died: every later call fails with it. */
  #failed: Error | undefined;

  private constructor(worker: WorkerLike, handle: OpfsFileHandle, size: number) {
    this.#worker = worker;
    this.#handle = handle;
    this.#size = size;
    worker.onmessage = (event) => this.#pending.shift()?.resolve(event.data);
    worker.onerror = (event) => {
      this.#failed = new IoError(`The OPFS worker failed: ${event.message ?? 'unknown error'}`, { errno: 'EIO' });
      for (const p of this.#pending.splice(0)) p.reject(this.#failed);
    };
  }

  /**
   * Opens (or makes) the file `name` of `options.directory` (default: the OPFS root). Fails with
   * an UnsupportedError where the browser has no OPFS or no workers.
   */
  static async open(name: string, options: OpfsDeviceOptions = {}): Promise<OpfsDevice> {
    const g = globalThis as {
      navigator?: { storage?: { getDirectory?: () => Promise<OpfsDirectoryHandle> } };
      Worker?: new (url: string) => WorkerLike;
    };
    const WorkerClass = g.Worker;
    const root = options.directory ?? (await g.navigator?.storage?.getDirectory?.());
    if (root === undefined || WorkerClass === undefined) {
      throw new UnsupportedError('This browser has no origin private file system (navigator.storage.getDirectory) or no workers');
    }
    let handle: OpfsFileHandle;
    try {
      handle = await root.getFileHandle(name, { create: options.create ?? true });
    } catch (err) {
      throw new IoError(`Could not open '${name}': ${(err as Error).message}`, { cause: err, errno: 'ENOENT' });
    }
    const url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: 'text/javascript' }));
    let worker: WorkerLike;
    try {
      worker = new WorkerClass(url);
    } finally {
      URL.revokeObjectURL(url);
    }
    const dev = new OpfsDevice(worker, handle, 0);
    try {
      dev.#size = (await dev.#call({ op: 'open', file: handle, truncate: options.truncate ?? false }, `Could not open '${name}'`)).size ?? 0;
    } catch (err) {
      worker.terminate();
      throw err;
    }
    return dev;
  }

  /** The file as it is now (a File to download, say); call after close() to see every write. */
  async file(): Promise<Blob> {
    return this.#handle.getFile();
  }

  /** Sends one request; its answer is the next one not yet taken. */
  #call(message: { op: string; [key: string]: unknown }, context: string, transfer?: ArrayBuffer[]): Promise<Reply> {
    if (this.#failed !== undefined) return Promise.reject(this.#failed);
    return new Promise<Reply>((resolve, reject) => {
      this.#pending.push({ resolve, reject });
      this.#worker.postMessage(message, transfer);
    }).then((reply) => {
      if (reply.error !== undefined) throw new IoError(`${context}: ${reply.error}`, { errno: 'EIO' });
      return reply;
    });
  }

  size(): number {
    checkOpen(this.#closed);
    return this.#size;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkOpen(this.#closed);
    checkRange(offset, into.length);
    if (into.length === 0) return;
    const reply = await this.#call({ op: 'read', offset, length: into.length }, `Could not read at byte ${offset}`);
    const got = new Uint8Array(reply.bytes!, 0, reply.n ?? 0);
    into.set(got);
    // Past the end reads as zeroes, as the file driver's does.
    into.fill(0, got.length);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    checkOpen(this.#closed);
    checkRange(offset, data.length);
    if (data.length === 0) return;
    // A copy the worker may own (the caller keeps and reuses its buffer).
    const copy = data.slice().buffer;
    await this.#call({ op: 'write', offset, data: copy }, `Could not write at byte ${offset}`, [copy]);
    this.#size = Math.max(this.#size, offset + data.length);
  }

  async writeZeroes(offset: number, length: number, _options?: WriteZeroesOptions): Promise<void> {
    checkOpen(this.#closed);
    checkRange(offset, length);
    const end = offset + length;
    // Past the end, growing the file gives zeroes; below it they are written.
    const inside = Math.min(end, this.#size);
    for (let pos = offset; pos < inside; pos += ZERO_CHUNK) await this.write(pos, new Uint8Array(Math.min(ZERO_CHUNK, inside - pos)));
    if (end > this.#size) await this.resize(end);
  }

  /** Discarded bytes read as zeroes afterwards (a sync access handle cannot punch holes). */
  async discard(offset: number, length: number): Promise<void> {
    checkOpen(this.#closed);
    checkRange(offset, length);
    const end = Math.min(offset + length, this.#size);
    if (end > offset) await this.writeZeroes(offset, end - offset);
  }

  async flush(): Promise<void> {
    checkOpen(this.#closed);
    await this.#call({ op: 'flush' }, 'Could not flush the file');
  }

  async resize(size: number): Promise<void> {
    checkOpen(this.#closed);
    checkUint(size, 'size');
    await this.#call({ op: 'truncate', size }, `Could not resize the file to ${size} bytes`);
    this.#size = size;
  }

  /** All data up to the end (the handle says nothing of holes): see allDataStatus. */
  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    checkOpen(this.#closed);
    checkRange(offset, length);
    return allDataStatus(this.#size, offset, length);
  }

  /** Unknown: the browser does not say how much of the file is stored. */
  async allocatedSize(): Promise<undefined> {
    checkOpen(this.#closed);
    return undefined;
  }

  /** Closes the handle (the file is then whole for file()) and ends the worker. */
  async close(): Promise<void> {
    checkOpen(this.#closed);
    this.#closed = true;
    try {
      await this.#call({ op: 'close' }, 'Could not close the file');
    } finally {
      this.#worker.terminate();
    }
  }
}
