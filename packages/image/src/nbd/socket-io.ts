/**
 * Exact-length reads and ordered writes over a stream socket, as both ends of NBD need them:
 * `readExactly(n)` resolves with the next n bytes (a view into the received chunk when one
 * chunk holds them all, else one copy), and `write` queues whole messages so that the parts of
 * one reply are never interleaved with another's.
 */
import type { Socket } from 'node:net';
import { IoError } from '@tsimg/raw';

/** Received bytes held before the socket is paused: bounds memory against a fast sender. */
const HIGH_WATER = 64 * 1024 * 1024;

/** The reading and writing side of one connection. */
export class SocketIO {
  readonly socket: Socket;
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  #waiter?: { n: number; resolve: (b: Uint8Array) => void; reject: (e: Error) => void };
  #ended?: Error;
  #paused = false;

  constructor(socket: Socket) {
    this.socket = socket;
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => {
      this.#chunks.push(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      this.#buffered += chunk.byteLength;
      if (this.#buffered > HIGH_WATER && !this.#paused) {
        this.#paused = true;
        socket.pause();
      }
      this.#wake();
    });
    const end = (err?: Error): void => {
      this.#ended ??= new IoError(err ? `Connection failed: ${err.message}` : 'Connection closed', { errno: 'EIO', cause: err });
      this.#wake();
    };
    socket.on('end', () => end());
    socket.on('close', () => end());
    socket.on('error', (err) => end(err));
  }

  /** The next `n` bytes; rejects with IoError when the peer closes first. */
  readExactly(n: number): Promise<Uint8Array> {
    if (this.#waiter !== undefined) return Promise.reject(new Error('SocketIO: concurrent reads'));
    if (n === 0) return Promise.resolve(new Uint8Array(0));
    return new Promise((resolve, reject) => {
      this.#waiter = { n, resolve, reject };
      this.#wake();
    });
  }

  /** True once the peer has closed (bytes already received may still be read). */
  get ended(): boolean {
    return this.#ended !== undefined;
  }

  #wake(): void {
    const w = this.#waiter;
    if (w === undefined) return;
    if (this.#buffered >= w.n) {
      this.#waiter = undefined;
      w.resolve(this.#take(w.n));
    } else if (this.#ended !== undefined) {
      this.#waiter = undefined;
      w.reject(this.#ended);
    }
  }

  #take(n: number): Uint8Array {
    this.#buffered -= n;
    if (this.#paused && this.#buffered <= HIGH_WATER / 2) {
      this.#paused = false;
      this.socket.resume();
    }
    const first = this.#chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const c = this.#chunks[0]!;
      const part = Math.min(c.length, n - at);
      out.set(c.subarray(0, part), at);
      at += part;
      if (part === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(part);
    }
    return out;
  }

  /**
   * Sends the parts as one message (written in one synchronous step, so nothing lands between
   * them); resolves when the socket has room again, so a slow reader slows the sender.
   */
  async write(...parts: Uint8Array[]): Promise<void> {
    if (this.socket.destroyed) throw this.#ended ?? new IoError('Connection closed', { errno: 'EIO' });
    let room = true;
    this.socket.cork();
    for (const p of parts) if (p.length > 0) room = this.socket.write(p);
    this.socket.uncork();
    if (!room) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.socket.off('drain', done);
          this.socket.off('close', done);
          resolve();
        };
        this.socket.on('drain', done);
        this.socket.on('close', done);
      });
    }
  }

  /** Closes the connection at once. */
  destroy(): void {
    this.socket.destroy();
  }
}
