/**
 * SIGINT and SIGTERM for the tsimg process: what qemu-img 7.2 does, killed by the signal (it
 * installs no handler, so a parent sees "killed by SIGINT", a shell 130) — except while a
 * writing command holds them, when the signal is deferred until the image is consistent.
 *
 * qemu-img dies wherever the signal finds it; its qcow2 metadata cache is lost with it, which
 * leaves leaked clusters (and a partial target). tsimg instead stops the copy at the next write,
 * lets the writes in flight finish, writes and closes the metadata, and then dies of the same
 * signal, so the parent sees exactly what it sees for qemu-img. A second signal while the
 * command is winding down is obeyed at once.
 */

/** The signals tsimg defers while it writes an image. */
export const DEFERRED_SIGNALS = ['SIGINT', 'SIGTERM'] as const;
/** One of {@link DEFERRED_SIGNALS}. */
export type DeferredSignal = (typeof DEFERRED_SIGNALS)[number];

/** Thrown out of a held section once a deferred signal arrived; main prints nothing for it. */
export class InterruptedError extends Error {
  readonly signal: DeferredSignal;
  constructor(signal: DeferredSignal) {
    super(`interrupted by ${signal}`);
    this.name = 'InterruptedError';
    this.signal = signal;
  }
}

/** What a process hands its commands (through `CliIO.interrupts`). */
export interface Interrupts {
  /**
   * Runs `fn` with SIGINT/SIGTERM deferred: a signal then aborts the `AbortSignal` `fn` gets
   * (its loops stop at a safe point and unwind, closing what they opened) instead of killing
   * the process. Once `fn` settles after a signal, `hold` throws an {@link InterruptedError}.
   */
  hold<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T>;
  /** The signal that arrived while held, if any. */
  readonly received: DeferredSignal | undefined;
}

/** Interrupts that never come: for in-process callers of main() (tests, embedding). */
const NONE: Interrupts = {
  hold: (fn) => fn(new AbortController().signal),
  received: undefined,
};

/** The interrupts of a command's io (`CliIO.interrupts`), or none. */
export function interruptsOf(io: { interrupts?: Interrupts }): Interrupts {
  return io.interrupts ?? NONE;
}

/** Dies of `signal` as a process without a handler does. */
function dieOf(signal: DeferredSignal): never {
  for (const s of DEFERRED_SIGNALS) process.removeAllListeners(s);
  process.kill(process.pid, signal);
  // kill() delivers an unblocked signal to the caller before it returns; should it not have
  // ended the process yet, nothing else may run meanwhile, and a shell's status is the fallback.
  const sleep = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 50; i++) Atomics.wait(sleep, 0, 0, 100);
  process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
}

/**
 * Installs the process's SIGINT/SIGTERM handlers and returns its {@link Interrupts} and a
 * `finish()` that, after a deferred signal, dies of it (call it once the command returned).
 */
export function processInterrupts(): { interrupts: Interrupts; finish: () => void } {
  let holds = 0;
  let received: DeferredSignal | undefined;
  const controller = new AbortController();
  const onSignal = (sig: DeferredSignal): void => {
    if (holds === 0 || received !== undefined) dieOf(received ?? sig);
    received = sig;
    controller.abort(new InterruptedError(sig));
  };
  for (const s of DEFERRED_SIGNALS) process.on(s, onSignal);
  const interrupts: Interrupts = {
    async hold(fn) {
      if (received !== undefined) throw new InterruptedError(received);
      holds++;
      try {
        const value = await fn(controller.signal);
        if (received !== undefined) throw new InterruptedError(received);
        return value;
      } catch (err) {
        if (received !== undefined) throw new InterruptedError(received);
        throw err;
      } finally {
        holds--;
      }
    },
    get received() {
      return received;
    },
  };
  return {
    interrupts,
    finish: () => {
      if (received !== undefined) dieOf(received);
      for (const s of DEFERRED_SIGNALS) process.removeListener(s, onSignal);
    },
  };
}
