/**
 * A target that can only be written forward — a pipe, a FIFO, standard output — as a
 * BlockDevice for the writers that write in ascending order (convert's in-order copy, the
 * forward qcow2 writer): a write at or past the current position goes out, the gap before it
 * as zeroes; `writeZeroes` and `discard` ahead of the position only leave a gap; anything
 * behind the position cannot be done and fails. `finish` writes the tail gap up to the size.
 */
import type { Writable } from 'node:stream';
import { IoError, strerror, UnsupportedError, type BlockDevice, type BlockStatus } from '@tsimg/raw';

/** Zeroes written at most this many at once for a gap. */
const ZERO_CHUNK = 1024 * 1024;

/** A failed write to the stream, in strerror words when it has an errno (EPIPE: Broken pipe). */
function streamError(err: Error): IoError {
  const code = (err as NodeJS.ErrnoException).code;
  const text = code && /^E[A-Z]+$/.test(code) ? strerror(code) : err.message;
  return new IoError(`Could not write to the output stream: ${text}`, { cause: err, errno: code });
}

/** See the module comment. */
export class StreamSink implements BlockDevice {
  readonly readOnly = false;
  #out: Writable;
  #size: number;
  #pos = 0;
  #zero: Uint8Array | undefined;
  #failed: Error | undefined;

  /** `out` receives the bytes; `size` is the length the stream will have once finished. */
  constructor(out: Writable, size: number) {
    this.#out = out;
    this.#size = size;
    // A reader that goes away (EPIPE) fails the next write instead of crashing the process.
    out.on('error', (err) => {
      this.#failed ??= streamError(err);
    });
  }

  /** Bytes written so far. */
  get position(): number {
    return this.#pos;
  }

  size(): number {
    return this.#size;
  }

  /** Resolves once `data` has been handed on (so the caller may reuse its buffer). */
  #push(data: Uint8Array): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed);
    return new Promise((resolve, reject) => {
      this.#out.write(data, (err) => {
        if (!err) return resolve();
        this.#failed ??= streamError(err);
        reject(this.#failed);
      });
    });
  }

  async #padTo(offset: number): Promise<void> {
    while (this.#pos < offset) {
      this.#zero ??= new Uint8Array(ZERO_CHUNK);
      const n = Math.min(ZERO_CHUNK, offset - this.#pos);
      await this.#push(this.#zero.subarray(0, n));
      this.#pos += n;
    }
  }

  #behind(offset: number, what: string): void {
    if (offset < this.#pos) {
      throw new IoError(`Cannot ${what} at offset ${offset} of a stream already written up to ${this.#pos}`, { errno: 'ESPIPE' });
    }
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#behind(offset, 'write');
    await this.#padTo(offset);
    if (data.length === 0) return;
    await this.#push(data);
    this.#pos += data.length;
    if (this.#pos > this.#size) this.#size = this.#pos;
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    // A gap reads as zeroes once the next write or finish() fills it.
    if (length > 0) this.#behind(offset, 'write zeroes');
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  async flush(): Promise<void> {}

  async resize(size: number): Promise<void> {
    this.#behind(size, 'shrink');
    this.#size = size;
  }

  async read(): Promise<void> {
    throw new UnsupportedError('Cannot read back a stream target', { errno: 'ESPIPE' });
  }

  async blockStatus(): Promise<BlockStatus> {
    throw new UnsupportedError('A stream target has no block status', { errno: 'ESPIPE' });
  }

  async allocatedSize(): Promise<number | undefined> {
    return undefined;
  }

  /** Writes zeroes up to the size. The stream itself is left open (it may be stdout). */
  async finish(): Promise<void> {
    await this.#padTo(this.#size);
  }

  async close(): Promise<void> {}
}
