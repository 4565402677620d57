/**
 * IoGate: lets ordinary I/O on a device run concurrently while an operation that changes the
 * file's size (truncate, fallocate growing it) waits for the I/O in flight and runs alone.
 */

/** A shared/exclusive gate over async operations; exclusive ones also hold back new shared ones. */
export class IoGate {
  #active = 0;
  #gate: Promise<void> | undefined;
  #onIdle: (() => void) | undefined;

  /** Runs `fn` beside other shared operations, after any exclusive one queued before it. */
  async shared<T>(fn: () => Promise<T>): Promise<T> {
    while (this.#gate !== undefined) await this.#gate;
    this.#active++;
    try {
      return await fn();
    } finally {
      if (--this.#active === 0) this.#onIdle?.();
    }
  }

  /** Runs `fn` alone: once the shared operations in flight are done, before any new one starts. */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.#gate !== undefined) await this.#gate;
    let release!: () => void;
    this.#gate = new Promise((resolve) => (release = resolve));
    try {
      while (this.#active > 0) await new Promise<void>((resolve) => (this.#onIdle = resolve));
      this.#onIdle = undefined;
      return await fn();
    } finally {
      this.#gate = undefined;
      release();
    }
  }
}
