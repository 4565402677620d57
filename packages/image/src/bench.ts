/**
 * `qemu-img bench`'s request loop (qemu-img.c bench_cb) on any device: `count` reads or writes
 * of `bufferSize` bytes, `depth` of them in flight, starting at `offset` and moving by `step`
 * (wrapping at the end of the image), with an optional flush every `flushInterval` requests
 * that either waits for the queue to drain first or runs alongside it.
 *
 * The order in which requests are issued, flushes interleaved and the queue refilled is
 * qemu's, so the same options make the same sequence of requests.
 */
import { IoError, strerror, type BlockDevice, alignedBuffer } from '@tsimg/raw';

/** What {@link bench} does; every field is qemu-img bench's option of the same meaning. */
export interface BenchOptions {
  /** Requests in all (`-c`, qemu's default 75000). */
  count: number;
  /** Requests in flight at once (`-d`, default 64); at least 1. */
  depth: number;
  /** Offset of the first request (`-o`). */
  offset: number;
  /** Bytes per request (`-s`, default 4096). */
  bufferSize: number;
  /** Distance between the offsets of consecutive requests (`-S`, default the buffer size). */
  step: number;
  /** Writes instead of reads (`-w`). */
  write: boolean;
  /** The byte written (`--pattern`). */
  pattern: number;
  /** Flush after every this many requests; 0: never (`--flush-interval`, writes only). */
  flushInterval: number;
  /** Wait for the requests in flight before each flush (qemu's default; `--no-drain` clears it). */
  drainOnFlush: boolean;
  /** Called as each request completes, with the number completed so far. */
  onRequest?: (completed: number) => void;
}

/** Runs the requests; rejects with an IoError naming the failed request as qemu does. */
export function bench(device: BlockDevice, o: BenchOptions): Promise<void> {
  const size = device.size();
  // qemu gives every request the same buffer, filled with the pattern once.
  const buf = alignedBuffer(o.bufferSize).fill(o.pattern);
  return new Promise<void>((resolve, reject) => {
    let n = o.count;
    let inFlight = 0;
    let inFlush = false;
    let offset = o.offset;
    let failed = false;
    let flushing: Promise<void> = Promise.resolve();
    const fail = (what: string) => (err: unknown) => {
      if (failed) return;
      failed = true;
      const errno = (err as { errno?: string }).errno ?? 'EIO';
      reject(new IoError(`${what}: ${strerror(errno)}`, { errno, cause: err }));
    };
    const request = (at: number): Promise<void> => {
      // blk_check_byte_request: a request reaching past the end fails with EIO.
      if (at + o.bufferSize > size) return Promise.reject(new IoError('Input/output error', { errno: 'EIO' }));
      return o.write ? device.write(at, buf) : device.read(at, buf);
    };
    const done = (): void => {
      if (failed) return;
      if (inFlush) {
        // A drained flush finished: the queue refills.
        inFlush = false;
      } else if (inFlight > 0) {
        const remaining = n - inFlight;
        n--;
        inFlight--;
        o.onRequest?.(o.count - n);
        if (o.flushInterval && remaining % o.flushInterval === 0) {
          if (inFlight === 0 || !o.drainOnFlush) {
            inFlush = o.drainOnFlush;
            const f = device.flush();
            flushing = f.then(
              () => undefined,
              () => undefined,
            );
            if (o.drainOnFlush) f.then(done, fail('Failed request'));
            else f.catch(fail('Failed flush request'));
          }
          if (o.drainOnFlush) {
            if (n === 0) void flushing.then(() => !failed && resolve());
            return;
          }
        }
      }
      // qemu's main loop ends once every request has completed.
      if (n === 0) {
        void flushing.then(() => !failed && resolve());
        return;
      }
      while (n > inFlight && inFlight < o.depth) {
        const at = offset;
        inFlight++;
        offset = size > 0 ? (offset + o.step) % size : offset;
        request(at).then(done, fail('Failed request'));
      }
    };
    done();
  });
}
