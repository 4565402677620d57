/**
 * INTERIM: opens raw images for map / compare / measure / dd until packages/qcow2/src/open.ts
 * (`openImage`) lands; then the commands switch to it and this file is deleted. qcow2 files
 * are refused with a one-line error meanwhile.
 */
import { FileDevice, TsimgError, UnsupportedError, type BlockDevice, type BlockStatus } from '@tsimg/raw';
import type { MappedImage } from '@tsimg/qcow2';

/** A raw image over a host file, sized like qemu's raw driver (rounded up to 512 bytes). */
class RawImage implements MappedImage {
  readonly format = 'raw';
  readonly filename: string;
  readonly file: { fileName: string };
  readonly #dev: BlockDevice;
  constructor(filename: string, dev: BlockDevice) {
    this.filename = filename;
    this.file = { fileName: filename };
    this.#dev = dev;
  }
  get readOnly(): boolean {
    return this.#dev.readOnly;
  }
  size(): number {
    return Math.ceil(this.#dev.size() / 512) * 512;
  }
  read(offset: number, into: Uint8Array): Promise<void> {
    return this.#dev.read(offset, into);
  }
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#dev.write(offset, data);
  }
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.#dev.writeZeroes(offset, length);
  }
  discard(offset: number, length: number): Promise<void> {
    return this.#dev.discard(offset, length);
  }
  flush(): Promise<void> {
    return this.#dev.flush();
  }
  resize(size: number): Promise<void> {
    return this.#dev.resize(size);
  }
  blockStatus(offset: number, length: number): Promise<BlockStatus> {
    return this.#dev.blockStatus(offset, length);
  }
  allocatedSize(): Promise<number | undefined> {
    return this.#dev.allocatedSize();
  }
  close(): Promise<void> {
    return this.#dev.close();
  }
}

/** Opens `filename` as an image (raw only, for now). */
export async function openImage(
  filename: string,
  options: { format?: string; readOnly?: boolean } = {},
): Promise<MappedImage & { format: string }> {
  let dev: FileDevice;
  try {
    dev = await FileDevice.open(filename, { readOnly: options.readOnly ?? true });
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new TsimgError(err instanceof TsimgError ? err.code : 'io', `Could not open '${filename}': ${msg}`, { cause: err });
  }
  const format = options.format ?? (await probe(dev));
  if (format !== 'raw') {
    await dev.close();
    throw new UnsupportedError(`Could not open '${filename}': format '${format}' is not supported yet`);
  }
  return new RawImage(filename, dev);
}

async function probe(dev: BlockDevice): Promise<string> {
  const head = new Uint8Array(4);
  if (dev.size() >= 4) await dev.read(0, head);
  return head[0] === 0x51 && head[1] === 0x46 && head[2] === 0x49 && head[3] === 0xfb ? 'qcow2' : 'raw';
}
