/** CountingDevice: counts the calls and bytes that reach a device, for tests and benchmarks. */
import { type BlockDevice, type BlockStatus, type WriteZeroesOptions, writeParts } from './block-device.js';

/** Calls (and bytes) seen by a {@link CountingDevice} since creation or the last `reset()`. */
export interface DeviceCounts {
  reads: number;
  readBytes: number;
  writes: number;
  writeBytes: number;
  /** `writeZeroes` calls and the bytes they covered. */
  zeroWrites: number;
  zeroBytes: number;
  discards: number;
  discardBytes: number;
  flushes: number;
  resizes: number;
  blockStatusCalls: number;
}

function emptyCounts(): DeviceCounts {
  return {
    reads: 0, readBytes: 0, writes: 0, writeBytes: 0, zeroWrites: 0, zeroBytes: 0,
    discards: 0, discardBytes: 0, flushes: 0, resizes: 0, blockStatusCalls: 0,
  };
}

/**
 * Passes every call to `inner` and counts it when it is made (failed calls count too).
 * `close` closes `inner`.
 */
export class CountingDevice implements BlockDevice {
  readonly inner: BlockDevice;
  /** Live counters; read them any time, zero them with {@link CountingDevice.reset}. */
  readonly counts: DeviceCounts = emptyCounts();

  constructor(inner: BlockDevice) {
    this.inner = inner;
  }

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  /** Sets every counter back to zero. */
  reset(): void {
    Object.assign(this.counts, emptyCounts());
  }

  size(): number {
    return this.inner.size();
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    this.counts.reads++;
    this.counts.readBytes += into.length;
    return this.inner.read(offset, into);
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    this.counts.writes++;
    this.counts.writeBytes += data.length;
    return this.inner.write(offset, data);
  }

  /** One write request of the parts back to back (forwarded as one where `inner` takes vectors). */
  writev(offset: number, parts: readonly Uint8Array[]): Promise<void> {
    this.counts.writes++;
    for (const p of parts) this.counts.writeBytes += p.length;
    return writeParts(this.inner, offset, parts);
  }

  writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): Promise<void> {
    this.counts.zeroWrites++;
    this.counts.zeroBytes += length;
    return this.inner.writeZeroes(offset, length, options);
  }

  discard(offset: number, length: number): Promise<void> {
    this.counts.discards++;
    this.counts.discardBytes += length;
    return this.inner.discard(offset, length);
  }

  flush(): Promise<void> {
    this.counts.flushes++;
    return this.inner.flush();
  }

  resize(size: number): Promise<void> {
    this.counts.resizes++;
    return this.inner.resize(size);
  }

  blockStatus(offset: number, length: number): Promise<BlockStatus> {
    this.counts.blockStatusCalls++;
    return this.inner.blockStatus(offset, length);
  }

  allocatedSize(): Promise<number | undefined> {
    return this.inner.allocatedSize();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Wraps `inner` in a {@link CountingDevice}. */
export function countingDevice(inner: BlockDevice): CountingDevice {
  return new CountingDevice(inner);
}
