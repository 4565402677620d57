/**
 * A Node Writable into an image (any BlockDevice): the bytes written to it land one after the
 * other from `offset`. Collected into 1 MiB pieces; with `skipZeroes` (a target that reads as
 * zeroes already, e.g. a new image) the all-zero 64 KiB blocks of a piece are not written, so
 * the target stays sparse. `extend` grows the device at the end to cover skipped zeroes.
 */
import { Writable } from 'node:stream';
import { isZero, type BlockDevice } from '@tsimg/raw';

/** Options of {@link imageWritable}. */
export interface ImageWriteOptions {
  /** Where the first byte goes (default 0). */
  offset?: number;
  /** Leave all-zero blocks unwritten (the target must read as zeroes there). */
  skipZeroes?: boolean;
  /** At the end, resize the device to the end of what was written if it is shorter. */
  extend?: boolean;
}

const PIECE = 1024 * 1024;
const BLOCK = 64 * 1024;

/** See the module comment; `bytesWritten` on the result counts the bytes taken. */
export function imageWritable(device: BlockDevice, options: ImageWriteOptions = {}): Writable & { readonly bytesWritten: number } {
  let pos = options.offset ?? 0;
  let pieceStart = pos;
  let piece = new Uint8Array(PIECE);
  let fill = 0;
  const flushPiece = async (): Promise<void> => {
    const data = piece.subarray(0, fill);
    if (!options.skipZeroes) await device.write(pieceStart, data);
    else {
      for (let b = 0; b < fill; ) {
        const n = Math.min(BLOCK, fill - b);
        const block = data.subarray(b, b + n);
        if (!isZero(block)) await device.write(pieceStart + b, block);
        b += n;
      }
    }
    pieceStart += fill;
    fill = 0;
  };
  const w = new Writable({
    async write(chunk: Uint8Array, _enc, cb) {
      try {
        for (let off = 0; off < chunk.length; ) {
          const n = Math.min(PIECE - fill, chunk.length - off);
          piece.set(chunk.subarray(off, off + n), fill);
          fill += n;
          off += n;
          pos += n;
          if (fill === PIECE) await flushPiece();
        }
        cb();
      } catch (err) {
        cb(err as Error);
      }
    },
    async final(cb) {
      try {
        if (fill) await flushPiece();
        if (options.extend && device.size() < pos) await device.resize(pos);
        piece = new Uint8Array(0);
        cb();
      } catch (err) {
        cb(err as Error);
      }
    },
  });
  return Object.defineProperty(w, 'bytesWritten', { get: () => pos - (options.offset ?? 0) }) as Writable & { readonly bytesWritten: number };
}
