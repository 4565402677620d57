/** The raw format: the file itself is the image, with the Image fields around it. */
import {
  truncateWithPreallocation, UnsupportedError, UsageError, type BlockDevice, type BlockStatus, type WriteZeroesOptions,
} from '@tsimg/raw';
import type { Image, TruncateOptions } from './image.js';

/** A raw image: the file itself, with the Image fields. */
export class RawImage implements Image {
  readonly format = 'raw' as const;
  readonly filename: string;
  readonly file: BlockDevice;
  readonly backing?: Image = undefined;

  constructor(filename: string, file: BlockDevice) {
    this.filename = filename;
    this.file = file;
  }

  get readOnly(): boolean {
    return this.file.readOnly;
  }
  /** qemu counts a raw image in 512-byte sectors: an odd-sized file reads as zero-padded. */
  size(): number {
    return Math.ceil(this.file.size() / 512) * 512;
  }
  read(offset: number, into: Uint8Array): Promise<void> {
    return this.#inside(offset, into.length) ?? this.file.read(offset, into);
  }
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#inside(offset, data.length) ?? this.file.write(offset, data);
  }
  writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): Promise<void> {
    return this.#inside(offset, length) ?? this.file.writeZeroes(offset, length, options);
  }
  discard(offset: number, length: number): Promise<void> {
    return this.#inside(offset, length) ?? this.file.discard(offset, length);
  }
  /** Like qemu's raw format, requests past the image size are refused (the file does not grow). */
  #inside(offset: number, length: number): Promise<never> | undefined {
    if (offset + length <= this.size()) return undefined;
    return Promise.reject(new UsageError(`range ${offset}+${length} is beyond the end of the image`, { errno: 'EIO' }));
  }
  flush(): Promise<void> {
    return this.file.flush();
  }
  resize(size: number): Promise<void> {
    return this.file.resize(size);
  }
  /**
   * The raw format hands a resize to its file (raw_co_truncate → file-posix's
   * handle_aiocb_truncate): the exact size, grown with `off`, `falloc` or `full`; `metadata`
   * is qemu's "Unsupported preallocation mode".
   */
  async truncate(size: number, options: TruncateOptions): Promise<void> {
    options.check?.();
    const mode = options.preallocation ?? 'off';
    if ((this.file as { blockDevice?: boolean }).blockDevice === true) {
      // raw_co_truncate on a device: nothing to preallocate, and an exact resize (qemu-img
      // resize's) to any other size is refused.
      if (mode !== 'off') throw new UnsupportedError(`Preallocation mode '${mode}' unsupported for this non-regular file`, { errno: 'ENOTSUP' });
      if (size !== this.file.size()) throw new UnsupportedError('Cannot resize device files', { errno: 'ENOTSUP' });
      return;
    }
    if (mode !== 'off' && size < this.file.size()) {
      throw new UnsupportedError('Cannot use preallocation for shrinking files', { errno: 'ENOTSUP' });
    }
    if (mode === 'metadata') throw new UnsupportedError('Unsupported preallocation mode: metadata', { errno: 'ENOTSUP' });
    await truncateWithPreallocation(this.file, BigInt(size), mode);
  }
  blockStatus(offset: number, length: number): Promise<BlockStatus> {
    return this.file.blockStatus(offset, length);
  }
  allocatedSize(): Promise<number | undefined> {
    return this.file.allocatedSize();
  }
  close(): Promise<void> {
    return this.file.close();
  }
}
