/** The header area of a raw LUKS file (offset 0 on) as the LUKS code reads and writes it. */
import type { BlockDevice } from '@tsimg/raw';

/**
 * Reads and writes `file` from offset 0; reads past its end see zeroes (a header area the
 * file does not reach yet, while it is created).
 */
export function luksHeaderIo(file: BlockDevice) {
  return {
    read: async (offset: number, into: Uint8Array) => {
      const avail = Math.max(0, Math.min(into.length, file.size() - offset));
      if (avail > 0) await file.read(offset, into.subarray(0, avail));
      into.fill(0, avail);
    },
    write: (offset: number, data: Uint8Array) => file.write(offset, data),
  };
}
