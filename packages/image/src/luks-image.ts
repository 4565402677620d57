/**
 * The `luks` format (qemu's block/crypto.c): a LUKS1 header and key material, then the payload,
 * each 512-byte sector encrypted with the guest sector number as its IV. Reads and writes are
 * whole sectors underneath (request_alignment); partial ones read the sectors around them.
 */
import { type AmendOptions, amendLuks, type LuksVolume } from '@tsimg/qcow2';
import { UsageError, type BlockDevice, type BlockStatus, type WriteZeroesOptions } from '@tsimg/raw';
import type { Image, TruncateOptions } from './image.js';

const SECTOR = 512;
/** BLOCK_CRYPTO_MAX_IO_SIZE: the bounce buffer's size. */
const MAX_IO = 1024 * 1024;

/** An open raw LUKS image. */
export class LuksImage implements Image {
  readonly format = 'luks' as const;
  readonly filename: string;
  readonly file: BlockDevice;
  readonly volume: LuksVolume;
  readonly backing?: Image = undefined;
  readonly #payload: number;

  constructor(filename: string, file: BlockDevice, volume: LuksVolume) {
    this.filename = filename;
    this.file = file;
    this.volume = volume;
    this.#payload = volume.payloadOffset;
  }

  /** The crypto driver has no bdrv_has_zero_init: a new volume's payload decrypts to noise. */
  hasZeroInit(): boolean {
    return false;
  }

  get readOnly(): boolean {
    return this.file.readOnly;
  }

  /** block_crypto_getlength: the file less the header area, in whole sectors as qemu counts. */
  size(): number {
    return Math.floor(Math.max(0, this.file.size() - this.#payload) / SECTOR) * SECTOR;
  }

  #check(offset: number, length: number): void {
    if (offset + length > this.size()) throw new UsageError(`range ${offset}+${length} is beyond the end of the image`, { errno: 'EIO' });
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.#check(offset, into.length);
    const start = offset - (offset % SECTOR);
    const end = Math.ceil((offset + into.length) / SECTOR) * SECTOR;
    if (start === offset && end === offset + into.length) return this.#readSectors(offset, into);
    const buf = new Uint8Array(end - start);
    await this.#readSectors(start, buf);
    into.set(buf.subarray(offset - start, offset - start + into.length));
  }

  /** block_crypto_co_preadv: read and decrypt in bounce-buffer sized pieces. */
  async #readSectors(offset: number, into: Uint8Array): Promise<void> {
    const cipher = this.volume.cipher!;
    for (let done = 0; done < into.length; done += MAX_IO) {
      const piece = into.subarray(done, Math.min(into.length, done + MAX_IO));
      const at = this.#payload + offset + done;
      const avail = Math.max(0, Math.min(piece.length, this.file.size() - at));
      if (avail > 0) await this.file.read(at, piece.subarray(0, avail));
      piece.fill(0, avail);
      await cipher.crypt((offset + done) / SECTOR, piece, false);
    }
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#check(offset, data.length);
    const start = offset - (offset % SECTOR);
    const end = Math.ceil((offset + data.length) / SECTOR) * SECTOR;
    let buf: Uint8Array;
    if (start === offset && end === offset + data.length) {
      buf = data;
    } else {
      buf = new Uint8Array(end - start);
      await this.#readSectors(start, buf);
      buf.set(data, offset - start);
    }
    const cipher = this.volume.cipher!;
    for (let done = 0; done < buf.length; done += MAX_IO) {
      const piece = await cipher.encryptedAsync((start + done) / SECTOR, buf.subarray(done, Math.min(buf.length, done + MAX_IO)));
      await this.file.write(this.#payload + start + done, piece);
    }
  }

  /** No zero flag in LUKS: zeroes are written as encrypted zero sectors (the block layer's fallback). */
  async writeZeroes(offset: number, length: number, _options?: WriteZeroesOptions): Promise<void> {
    this.#check(offset, length);
    const zero = new Uint8Array(Math.min(length, MAX_IO));
    for (let done = 0; done < length; done += zero.length) {
      const n = Math.min(zero.length, length - done);
      zero.fill(0);
      await this.write(offset + done, zero.subarray(0, n));
    }
  }

  /** The crypto driver has no discard: the request is dropped, as qemu does without the callback. */
  async discard(offset: number, length: number): Promise<void> {
    this.#check(offset, length);
  }

  flush(): Promise<void> {
    return this.file.flush();
  }

  /** block_crypto_co_truncate: the file grows or shrinks by the payload offset more. */
  async resize(size: number): Promise<void> {
    await this.file.resize(size + this.#payload);
  }

  async truncate(size: number, options: TruncateOptions): Promise<void> {
    options.check?.();
    await this.resize(size);
  }

  /** block_crypto_amend_options_luks: key slot changes only. */
  async amend(options: AmendOptions): Promise<void> {
    await amendLuks(this.volume, options.encrypt ?? {}, options.force === true);
  }

  /** No block status callback: everything is data, at no offset (bdrv_co_block_status's default). */
  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    return { kind: 'data', offset, length: Math.min(length, this.size() - offset) };
  }

  allocatedSize(): Promise<number | undefined> {
    return this.file.allocatedSize();
  }

  async close(): Promise<void> {
    this.volume.dispose();
    await this.file.close();
  }
}
