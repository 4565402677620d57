/**
 * An image's guest bytes as a stream — a Node Readable or a WHATWG ReadableStream — front to
 * back. Runs that block status says read as zeroes are not read: they come out as fresh zero
 * chunks; only data runs are read, in chunks of at most `chunkSize` bytes.
 */
import { Readable } from 'node:stream';
import { UsageError } from '@tsimg/raw';
import { blockStatusAbove, type ChainImage } from './block-status.js';

/** Options of {@link imageReadable} and {@link imageReadableStream}. */
export interface ImageReadOptions {
  /** The first guest byte (default 0). */
  start?: number;
  /** The end, exclusive (default the image's size). */
  end?: number;
  /** The largest chunk (default 2 MiB). */
  chunkSize?: number;
  /** Stops the stream with the signal's reason. */
  signal?: AbortSignal;
}

/** The chunks of guest bytes from `start` to `end`; see the module comment. */
export async function* guestChunks(image: ChainImage, options: ImageReadOptions = {}): AsyncGenerator<Uint8Array> {
  const size = image.size();
  const start = options.start ?? 0;
  const end = options.end ?? size;
  const chunk = options.chunkSize ?? 2 * 1024 * 1024;
  if (!(Number.isSafeInteger(start) && Number.isSafeInteger(end) && start >= 0 && start <= end && end <= size)) {
    throw new UsageError(`Invalid range ${start}..${end} of an image of ${size} bytes`);
  }
  if (!(Number.isSafeInteger(chunk) && chunk > 0)) throw new UsageError(`Invalid chunk size ${chunk}`);
  for (let pos = start; pos < end; ) {
    options.signal?.throwIfAborted();
    const st = await blockStatusAbove(image, pos, end - pos);
    const runEnd = pos + st.length;
    for (; pos < runEnd; ) {
      const n = Math.min(chunk, runEnd - pos);
      const buf = Buffer.alloc(n);
      if (!st.zero) await image.read(pos, buf);
      yield buf;
      pos += n;
    }
  }
}

/** A Node Readable of the image's guest bytes (see {@link guestChunks}). */
export function imageReadable(image: ChainImage, options: ImageReadOptions = {}): Readable {
  return Readable.from(guestChunks(image, options), { objectMode: false });
}

/** A WHATWG ReadableStream of the image's guest bytes (see {@link guestChunks}). */
export function imageReadableStream(image: ChainImage, options: ImageReadOptions = {}): ReadableStream<Uint8Array> {
  const it = guestChunks(image, options);
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const r = await it.next();
      if (r.done) controller.close();
      else controller.enqueue(r.value);
    },
    async cancel() {
      await it.return(undefined);
    },
  });
}
