/**
 * faultyDevice: injects I/O errors and power loss into a device, for crash-safety tests.
 *
 * By default the wrapper behaves like a disk with a volatile write cache: changes are kept in a
 * write-back log (and are visible to reads through the wrapper) and reach the underlying device
 * only when a flush succeeds, in the order they were made. A power loss drops the log, so the
 * underlying device then holds exactly what the last successful flush left there — a test reopens
 * it (or reads it directly) to check what a crash at that point would leave on disk.
 */
import { checkOpen, checkRange, checkUint } from './assert.js';
import type { BlockDevice, BlockStatus, WriteZeroesOptions } from './block-device.js';
import { IoError, ReadOnlyError, strerror, UsageError } from './errors.js';

/**
 * What to break, by 1-based call number. A *write* here is any call that changes the device:
 * `write`, `writeZeroes`, `discard` or `resize`, counted together in call order (failed calls
 * count too). Reads count `read` calls only; flushes count `flush` calls, including the one
 * `close` makes.
 */
export interface FaultPlan {
  /** These writes fail with an IoError and change nothing. */
  failWrite?: number | readonly number[];
  /** These flushes fail with an IoError and write nothing to the underlying device. */
  failFlush?: number | readonly number[];
  /** These reads fail with an IoError. */
  failRead?: number | readonly number[];
  /**
   * Power is lost right after this write succeeds: what no flush completed is dropped (this
   * write included, in write-back mode) and every later call fails, as after {@link
   * FaultyDevice.powerLoss}.
   */
  powerLossAfterWrite?: number;
  /**
   * `'write-back'` (default): changes reach the underlying device only on a successful flush.
   * `'write-through'`: changes go straight through; a power loss then loses nothing.
   */
  cache?: 'write-back' | 'write-through';
  /** errno of the injected errors; default `'EIO'` ("Input/output error"). */
  errno?: string;
}

/** One change waiting in the write-back log. */
type Pending =
  | { op: 'write'; offset: number; data: Uint8Array }
  | { op: 'writeZeroes'; offset: number; length: number; options?: WriteZeroesOptions }
  | { op: 'discard'; offset: number; length: number }
  | { op: 'resize'; size: number };

function asSet(value: number | readonly number[] | undefined): ReadonlySet<number> {
  return new Set(value === undefined ? [] : typeof value === 'number' ? [value] : value);
}

/**
 * A BlockDevice that fails according to a {@link FaultPlan}; see the module comment for the
 * write-back model. Create it with {@link faultyDevice}.
 */
export class FaultyDevice implements BlockDevice {
  /** The wrapped device: after a power loss, what survived on "disk". */
  readonly inner: BlockDevice;
  readonly plan: Readonly<FaultPlan>;
  /** Write calls made so far (write, writeZeroes, discard, resize). */
  writes = 0;
  /** Flush calls made so far. */
  flushes = 0;
  /** Read calls made so far. */
  reads = 0;
  readonly #failWrite: ReadonlySet<number>;
  readonly #failFlush: ReadonlySet<number>;
  readonly #failRead: ReadonlySet<number>;
  readonly #writeBack: boolean;
  readonly #errno: string;
  #log: Pending[] = [];
  #lost = false;
  #closed = false;
  #flushing: Promise<void> = Promise.resolve();

  constructor(inner: BlockDevice, plan: FaultPlan = {}) {
    for (const key of ['failWrite', 'failFlush', 'failRead', 'powerLossAfterWrite'] as const) {
      const value = plan[key];
      for (const n of value === undefined ? [] : typeof value === 'number' ? [value] : value) {
        if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`${key} must count from 1, got ${n}`);
      }
    }
    this.inner = inner;
    this.plan = plan;
    this.#failWrite = asSet(plan.failWrite);
    this.#failFlush = asSet(plan.failFlush);
    this.#failRead = asSet(plan.failRead);
    this.#writeBack = (plan.cache ?? 'write-back') === 'write-back';
    this.#errno = plan.errno ?? 'EIO';
  }

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  /** True once power was lost: every call but `close` fails. */
  get powerLost(): boolean {
    return this.#lost;
  }

  /** Changes made through the wrapper that no successful flush has written yet. */
  get pendingWrites(): number {
    return this.#log.length;
  }

  /**
   * Loses power now: drops the write-back log (the underlying device keeps what the last
   * successful flush wrote) and fails every later call. `close` then releases the wrapper
   * without closing `inner`: the test owns it and inspects it (close a FileDevice and reopen
   * its path, or read a MemoryDevice directly).
   */
  powerLoss(): void {
    this.#lost = true;
    this.#log = [];
  }

  size(): number {
    this.#checkAlive();
    let size = this.inner.size();
    for (const p of this.#log) {
      if (p.op === 'write') size = Math.max(size, p.offset + p.data.length);
      else if (p.op === 'writeZeroes') size = Math.max(size, p.offset + p.length);
      else if (p.op === 'resize') size = p.size;
    }
    return size;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.#checkAlive();
    const n = ++this.reads;
    if (this.#failRead.has(n)) throw this.#fault(`read #${n}`);
    if (this.#log.length === 0) return this.inner.read(offset, into);
    checkRange(offset, into.length);
    // Snapshot first: a concurrent flush may move entries to `inner` while we read it, and
    // replaying an entry that is already there changes nothing.
    const log = [...this.#log];
    const end = offset + into.length;
    const below = Math.max(0, Math.min(into.length, this.inner.size() - offset));
    if (below > 0) await this.inner.read(offset, into.subarray(0, below));
    into.fill(0, below);
    // Replay the log over the buffer. Bytes past the size at each step are zero in `into`,
    // so growing needs nothing and shrinking zeroes the cut-off part.
    for (const p of log) {
      if (p.op === 'write') {
        const a = Math.max(offset, p.offset);
        const b = Math.min(end, p.offset + p.data.length);
        if (a < b) into.set(p.data.subarray(a - p.offset, b - p.offset), a - offset);
      } else if (p.op === 'resize') {
        if (p.size < end) into.fill(0, Math.max(0, p.size - offset));
      } else {
        const a = Math.max(offset, p.offset);
        const b = Math.min(end, p.offset + p.length);
        if (a < b) into.fill(0, a - offset, b - offset);
      }
    }
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#change({ op: 'write', offset, data }, () => {
      checkRange(offset, data.length);
      return data.length === 0 ? undefined : { op: 'write', offset, data: data.slice() };
    });
  }

  /**
   * The parts back to back as one write: one call in the plan's count (the one pwritev request
   * of a host file), so vectored writes add no fault points beyond those of a plain write.
   */
  writev(offset: number, parts: readonly Uint8Array[]): Promise<void> {
    const data = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      data.set(p, at);
      at += p.length;
    }
    return this.write(offset, data);
  }

  writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): Promise<void> {
    return this.#change({ op: 'writeZeroes', offset, length, options }, () => {
      checkRange(offset, length);
      return length === 0 ? undefined : { op: 'writeZeroes', offset, length, options: { ...options } };
    });
  }

  discard(offset: number, length: number): Promise<void> {
    return this.#change({ op: 'discard', offset, length }, () => {
      checkRange(offset, length);
      return length === 0 ? undefined : { op: 'discard', offset, length };
    });
  }

  resize(size: number): Promise<void> {
    return this.#change({ op: 'resize', size }, () => {
      checkUint(size, 'size');
      return { op: 'resize', size };
    });
  }

  /**
   * Writes the log to the underlying device in order, then flushes it. A planned failure
   * writes nothing and keeps the log; a failure of `inner` keeps the entries not yet written.
   */
  async flush(): Promise<void> {
    this.#checkAlive();
    const n = ++this.flushes;
    if (this.#failFlush.has(n)) throw this.#fault(`flush #${n}`);
    // Flushes run one after another; each covers the changes made before it was called.
    const count = this.#log.length;
    const run = this.#flushing.then(async () => {
      for (let i = 0; i < count; i++) {
        if (this.#lost) throw this.#fault('power lost');
        const p = this.#log[0];
        if (p === undefined) break;
        await apply(this.inner, p);
        this.#log.shift();
      }
      if (this.#lost) throw this.#fault('power lost');
      await this.inner.flush();
    });
    this.#flushing = run.catch(() => {});
    return run;
  }

  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    this.#checkAlive();
    if (this.#log.length === 0) return this.inner.blockStatus(offset, length);
    checkRange(offset, length);
    if (length < 1) throw new UsageError('blockStatus length must be at least 1');
    // Ranges with pending changes are reported as data (always safe: a reader reads them
    // through the wrapper); other ranges ask `inner`, cut before the next pending change.
    let stop = offset + length;
    let touched = false;
    for (const p of this.#log) {
      const [a, b] = p.op === 'resize' ? [p.size, Infinity] : [p.offset, p.offset + (p.op === 'write' ? p.data.length : p.length)];
      if (a <= offset && offset < b) {
        touched = true;
        stop = Math.min(stop, b);
      } else if (a > offset) {
        stop = Math.min(stop, a);
      }
    }
    if (touched) return { kind: 'data', offset, length: stop - offset };
    return this.inner.blockStatus(offset, stop - offset);
  }

  async allocatedSize(): Promise<number | undefined> {
    this.#checkAlive();
    return this.inner.allocatedSize();
  }

  /** Flushes and closes `inner`; after a power loss, only lets go of it (see `powerLoss`). */
  async close(): Promise<void> {
    checkOpen(this.#closed);
    if (this.#lost) {
      this.#closed = true;
      return;
    }
    try {
      await this.flush();
    } finally {
      this.#closed = true;
      await this.inner.close();
    }
  }

  #checkAlive(): void {
    checkOpen(this.#closed);
    if (this.#lost) throw this.#fault('power lost');
  }

  #fault(what: string): IoError {
    return new IoError(`${strerror(this.#errno)} (injected: ${what})`, { errno: this.#errno });
  }

  /** Counts a write call, injects its fault, then logs it (write-back) or passes it through. */
  async #change(request: Pending, validate: () => Pending | undefined): Promise<void> {
    this.#checkAlive();
    if (this.inner.readOnly) throw new ReadOnlyError();
    const n = ++this.writes;
    if (this.#failWrite.has(n)) throw this.#fault(`write #${n}`);
    const entry = validate();
    if (this.#writeBack) {
      if (entry !== undefined) this.#log.push(entry);
    } else {
      await apply(this.inner, request);
    }
    if (n === this.plan.powerLossAfterWrite) this.powerLoss();
  }
}

async function apply(device: BlockDevice, p: Pending): Promise<void> {
  switch (p.op) {
    case 'write':
      return device.write(p.offset, p.data);
    case 'writeZeroes':
      return device.writeZeroes(p.offset, p.length, p.options);
    case 'discard':
      return device.discard(p.offset, p.length);
    case 'resize':
      return device.resize(p.size);
  }
}

/** Wraps `inner` in a {@link FaultyDevice} that follows `plan`. */
export function faultyDevice(inner: BlockDevice, plan: FaultPlan = {}): FaultyDevice {
  return new FaultyDevice(inner, plan);
}
