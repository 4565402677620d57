/**
 * `qemu-img map`'s walk: each run's status as qemu-img's get_block_status finds it (layer by
 * layer, reporting the depth of the layer that decided), merged into extents as its
 * entry_mergeable merges them (QEMU 7.2 qemu-img.c). The layer statuses come from
 * block-status.ts, the one block-status walker.
 */
import type { BlockDevice } from '@tsimg/raw';
import { layerStatus, type ChainImage } from './block-status.js';

/**
 * What `map` needs of an image: a chain image that also names the files its host offsets point
 * into. `Image` from open.ts satisfies it.
 */
export interface MappedImage extends ChainImage {
  /** The name the image was opened with (or resolved to, for a backing image). */
  readonly filename: string;
  /** The image whose contents show through unallocated ranges. */
  readonly backing?: MappedImage;
  /**
   * The device host offsets of this layer point into (qcow2: its file; raw: the file). Its name
   * (`filename` or `fileName`, as FileDevice has) is what `map` prints.
   */
  readonly file?: BlockDevice;
  /** An external data file, when host offsets of data clusters point there instead. */
  readonly dataFile?: BlockDevice;
}

/** One run as `qemu-img map` sees it. */
export interface MapEntry {
  start: number;
  length: number;
  /** How many backing links down the layer that decided lies (0 = the image itself). */
  depth: number;
  /** Allocated in the layer at `depth` (qemu's BDRV_BLOCK_ALLOCATED). */
  present: boolean;
  zero: boolean;
  data: boolean;
  /** Host offset in `filename` (absent for compressed clusters and unallocated ranges). */
  offset?: number;
  /** The file `offset` points into; set exactly when `offset` is. */
  filename?: string;
}

function hostFileName(layer: MappedImage): string {
  const f = (layer.dataFile ?? layer.file) as { filename?: unknown; fileName?: unknown } | undefined;
  if (typeof f?.filename === 'string') return f.filename;
  if (typeof f?.fileName === 'string') return f.fileName;
  return layer.filename;
}

/**
 * Status of the run at `offset` as `qemu-img map` reports it (get_block_status): asks each layer
 * in turn (qemu's bdrv_block_status, one layer) while the range is neither data nor zero there,
 * narrowing the run to what every layer asked agrees on. `length` must be ≥ 1 and within the
 * top image.
 */
export async function mapBlockStatus(image: MappedImage, offset: number, length: number): Promise<MapEntry> {
  let layer = image;
  let depth = 0;
  let bytes = length;
  for (;;) {
    // Runs are merged below (entryMergeable), so a layer's per-call cuts do not change the
    // output: an 8 TiB qcow2 takes one call per allocated table instead of 16,384.
    const st = await layerStatus(layer, offset, bytes, true, true);
    bytes = st.length;
    // A layer without backing, or past its backing's end, answers zero itself (not allocated).
    const backing = layer.backing;
    if (st.data || st.zero || backing === undefined) {
      const entry: MapEntry = { start: offset, length: bytes, depth, present: st.allocated, zero: st.zero, data: st.data };
      // An unallocated subcluster of an allocated cluster keeps its host offset (OFFSET_VALID).
      if (st.hostOffset !== undefined) {
        entry.offset = st.hostOffset;
        entry.filename = hostFileName(layer);
      }
      return entry;
    }
    bytes = Math.min(bytes, backing.size() - offset);
    layer = backing;
    depth++;
  }
}

/** qemu's entry_mergeable: same flags and file, and host offsets (if any) contiguous. */
export function entryMergeable(curr: MapEntry, next: MapEntry): boolean {
  if (curr.length === 0) return false;
  if (
    curr.zero !== next.zero ||
    curr.data !== next.data ||
    curr.depth !== next.depth ||
    curr.present !== next.present ||
    (curr.filename === undefined) !== (next.filename === undefined) ||
    (curr.offset === undefined) !== (next.offset === undefined)
  ) {
    return false;
  }
  if (curr.filename !== undefined && curr.filename !== next.filename) return false;
  if (curr.offset !== undefined && curr.offset + curr.length !== next.offset) return false;
  return true;
}

/** Options of {@link mapImage}. */
export interface MapOptions {
  /** First guest offset to report (`--start-offset`, default 0). */
  startOffset?: number;
  /** Report at most this many bytes (`--max-length`). */
  maxLength?: number;
  /**
   * Human output ignores the difference between unallocated, zero and zero+data ranges after an
   * entry was printed, which lets more of them coalesce; set this to reproduce it exactly.
   */
  coalesceZeroes?: boolean;
}

/**
 * The merged extents of `image`, in order, as `qemu-img map` prints them. The walk is qemu's:
 * the last entry is always yielded, so a start at or past the end yields one empty entry at
 * `startOffset` (JSON output prints it). Entries are yielded before the next one is fetched, so a
 * consumer that stops early (human output on a compressed cluster) stops the walk.
 */
export async function* mapImage(image: MappedImage, options: MapOptions = {}): AsyncGenerator<MapEntry> {
  const start = options.startOffset ?? 0;
  let end = image.size();
  if (options.maxLength !== undefined) end = Math.min(start + options.maxLength, end);
  let curr: MapEntry = { start, length: 0, depth: 0, present: false, zero: false, data: false };
  while (curr.start + curr.length < end) {
    const offset = curr.start + curr.length;
    const next = await mapBlockStatus(image, offset, end - offset);
    if (entryMergeable(curr, next)) {
      curr.length += next.length;
      continue;
    }
    if (curr.length > 0) {
      yield curr;
      if (options.coalesceZeroes && (!next.data || next.zero)) {
        next.data = false;
        next.zero = true;
      }
    }
    curr = next;
  }
  yield curr;
}
