/**
 * The one interface every byte goes through: formats, backends and wrappers all implement it,
 * and the generic commands (convert, compare, map, measure, commit) loop over it.
 *
 * Offsets and lengths are `number`s: safe to 2^53, far beyond any image qemu accepts.
 */

/** Options for {@link BlockDevice.writeZeroes}. */
export interface WriteZeroesOptions {
  /** The device may deallocate the range (punch a hole, drop the cluster) instead of writing. */
  mayUnmap?: boolean;
}

/**
 * What one run of a device holds, as far as this layer knows — the first run starting at the
 * asked offset, never longer than asked.
 *
 * - `data`: bytes are stored here (`hostOffset` where they live in the layer below, when that
 *   is one contiguous place; absent for e.g. compressed clusters).
 * - `zero`: reads as zeroes, known without reading (a hole, a zero cluster). `hostOffset` is set
 *   for preallocated zero clusters.
 * - `unallocated`: this layer holds nothing; reads come from the backing image, or are zero
 *   when there is none.
 */
export type BlockStatus =
  | { kind: 'data'; offset: number; length: number; hostOffset?: number }
  | { kind: 'zero'; offset: number; length: number; hostOffset?: number }
  | { kind: 'unallocated'; offset: number; length: number };

/** A byte-addressed, resizable store: a file, memory, an HTTP range, or an image format. */
export interface BlockDevice {
  /** True when writes, discards and resizes are refused. */
  readonly readOnly: boolean;
  /** Current size in bytes. */
  size(): number;
  /**
   * Fills `into` with the bytes at `offset`. Reads past the end of a backend (a host file)
   * return zeroes, as qemu's file driver does; image formats refuse reads past their size.
   */
  read(offset: number, into: Uint8Array): Promise<void>;
  /** Writes `data` at `offset`; backends grow to fit, formats refuse writes past their size. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /**
   * Optional: writes `parts` back to back from `offset` as one request (a host file's pwritev),
   * so that a caller need not copy them into one new buffer. Use {@link writeParts}, which falls
   * back to one `write` per part for devices without it.
   */
  writev?(offset: number, parts: readonly Uint8Array[]): Promise<void>;
  /** Makes `[offset, offset+length)` read as zeroes, deallocating when allowed and possible. */
  writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): Promise<void>;
  /** Drops the range; afterwards it reads as zeroes or as the backing image (format-specific). */
  discard(offset: number, length: number): Promise<void>;
  /** Makes every completed write durable. */
  flush(): Promise<void>;
  /** Grows or shrinks the device. */
  resize(size: number): Promise<void>;
  /** What the run starting at `offset` holds; its length is at least 1 and at most `length`. */
  blockStatus(offset: number, length: number): Promise<BlockStatus>;
  /** Bytes the device occupies on its host (a file's allocated blocks); undefined if unknown. */
  allocatedSize(): Promise<number | undefined>;
  /** Flushes and releases the device. Further calls fail. */
  close(): Promise<void>;
}

/** Writes `parts` back to back from `offset`: one `writev` where the device has it. */
export async function writeParts(device: BlockDevice, offset: number, parts: readonly Uint8Array[]): Promise<void> {
  if (device.writev !== undefined) return device.writev(offset, parts);
  for (const part of parts) {
    await device.write(offset, part);
    offset += part.length;
  }
}
