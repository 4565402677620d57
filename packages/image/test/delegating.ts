/** Test support: a device that passes every call to another, with some calls replaced. */
import type { BlockDevice } from '@tsimg/raw';

/** `dev` seen through a plain object whose calls go to `dev`, except those in `overrides`. */
export function delegating<T extends Partial<BlockDevice>>(dev: BlockDevice, overrides: T): BlockDevice & T {
  return {
    readOnly: dev.readOnly,
    size: () => dev.size(),
    read: (o: number, into: Uint8Array) => dev.read(o, into),
    write: (o: number, d: Uint8Array) => dev.write(o, d),
    writeZeroes: (o: number, l: number) => dev.writeZeroes(o, l),
    discard: (o: number, l: number) => dev.discard(o, l),
    flush: () => dev.flush(),
    resize: (n: number) => dev.resize(n),
    blockStatus: (o: number, l: number) => dev.blockStatus(o, l),
    allocatedSize: () => dev.allocatedSize(),
    close: () => dev.close(),
    ...overrides,
  };
}
