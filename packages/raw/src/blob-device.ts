/**
 * BlobDevice: a read-only BlockDevice over a `Blob` (a browser `File` from an `<input>` or a
 * drop, or any Blob in Node), read with `blob.slice(a, b).arrayBuffer()`.
 */
import { IoError } from './errors.js';
import { ReadOnlySource } from './source-device.js';

/** A Blob read by slices; writes, discards and resizes are refused. */
export class BlobDevice extends ReadOnlySource {
  readonly #blob: Blob;

  /** Reads `blob` (its size is fixed: a File changed on disk makes its reads fail). */
  constructor(blob: Blob) {
    super();
    this.#blob = blob;
  }

  size(): number {
    return this.#blob.size;
  }

  protected async readInside(offset: number, into: Uint8Array): Promise<void> {
    let bytes: ArrayBuffer;
    try {
      bytes = await this.#blob.slice(offset, offset + into.length).arrayBuffer();
    } catch (err) {
      // A File whose bytes changed or went away since it was picked (NotReadableError).
      throw new IoError(`Could not read the file at byte ${offset}: ${(err as Error).message}`, { cause: err, errno: 'EIO' });
    }
    into.set(new Uint8Array(bytes), 0);
  }
}
