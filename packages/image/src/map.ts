/**
 * Allocation status through a backing chain, and the extent walker behind `qemu-img map`.
 *
 * A layer's own `blockStatus` says data / zero / unallocated for that layer only. Here the
 * layers are combined the way QEMU 7.2's block layer does (block/io.c bdrv_co_block_status,
 * bdrv_co_common_block_status_above; qemu-img.c get_block_status, entry_mergeable):
 *
 * - an unallocated range of a layer without backing reads as zero (qemu adds ZERO);
 * - an unallocated range at or beyond the end of a shorter backing image reads as zero;
 * - `map` walks down layer by layer and reports the depth of the layer that decided;
 * - `blockStatusAbove` (compare, measure, convert) resolves through the whole chain, and
 *   reports synthesized zeroes past a short backing image as allocated, as qemu does;
 * - a qcow2 layer that qemu would judge "metadata preallocated" has its data runs checked
 *   against the host file, and host holes read as zero while staying data (DATA|ZERO).
 *
 * Nothing here reads guest data: only `blockStatus` and `size`, plus (once per qcow2 layer) its
 * refcount table and blocks for that judgement.
 */
import type { BlockDevice, BlockStatus } from '@tsimg/raw';
import type { ChainImage } from './chain-status.js';

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

/** The resolved status of a run through a whole chain, for compare / measure / convert. */
export interface StatusAbove {
  offset: number;
  length: number;
  data: boolean;
  zero: boolean;
  /** Allocated in some layer (or synthesized zeroes past a short backing image). */
  allocated: boolean;
  /** A host offset is known (qemu's BDRV_BLOCK_OFFSET_VALID). */
  offsetValid: boolean;
  /** The run ends at the end of the top image (qemu's BDRV_BLOCK_EOF). */
  eof: boolean;
  /** The layer that decided (0 = the top image). */
  depth: number;
  hostOffset?: number;
}

function hostFileName(layer: MappedImage): string {
  const f = (layer.dataFile ?? layer.file) as { filename?: unknown; fileName?: unknown } | undefined;
  if (typeof f?.filename === 'string') return f.filename;
  if (typeof f?.fileName === 'string') return f.fileName;
  return layer.filename;
}

/**
 * The host offset an `unallocated` status may carry: qcow2 reports one for an unallocated
 * subcluster inside an allocated cluster (extended L2), as qemu does. Read defensively because
 * BlockStatus declares no such field on this variant.
 */
function unallocatedHostOffset(st: BlockStatus): number | undefined {
  const h = (st as { hostOffset?: unknown }).hostOffset;
  return typeof h === 'number' ? h : undefined;
}

/** Ensures the contract (1 ≤ length ≤ asked) so a faulty layer cannot stall a loop. */
function checked(st: BlockStatus, asked: number): BlockStatus {
  if (!(st.length >= 1) || st.length > asked) {
    throw new RangeError(`blockStatus returned length ${st.length} for a request of ${asked}`);
  }
  return st;
}

/** A layer's status with qemu's DATA|ZERO case: data clusters over a hole of the host file. */
type LayerStatus = BlockStatus & { alsoZero?: boolean };

/**
 * One layer's answer as qemu's bdrv_co_block_status gives it: for a qcow2 layer detected as
 * metadata-preallocated, a data run with a host offset is checked against the host file, and
 * reads as zero (keeping DATA) where the file has a hole or ends.
 */
async function layerStatus(layer: ChainImage, offset: number, bytes: number): Promise<LayerStatus> {
  const st: LayerStatus = checked(await layer.blockStatus(offset, bytes), bytes);
  if (st.kind !== 'data' || st.hostOffset === undefined || layer.metadataPreallocated === undefined) return st;
  if (!(await layer.metadataPreallocated())) return st;
  const host = layer.dataFile ?? layer.file;
  if (host === undefined) return st;
  try {
    const hostSize = host.size();
    if (st.hostOffset >= hostSize) return { ...st, alsoZero: true };
    const fst = await host.blockStatus(st.hostOffset, st.length);
    if (fst.kind === 'data') return { ...st, length: Math.min(st.length, fst.length) };
    // A hole: zero up to its end, or for the whole run when the hole reaches the end of file.
    const reachesEof = st.hostOffset + fst.length >= hostSize;
    return { ...st, length: reachesEof ? st.length : Math.min(st.length, fst.length), alsoZero: true };
  } catch {
    return st; // qemu ignores errors here: the recursion only adds information
  }
}

/**
 * Status of the run at `offset` as `qemu-img map` reports it (get_block_status): asks each layer
 * in turn while the range is unallocated there, narrowing the run to what every layer asked
 * agrees on. `length` must be ≥ 1 and within the top image.
 */
export async function mapBlockStatus(image: MappedImage, offset: number, length: number): Promise<MapEntry> {
  let layer = image;
  let depth = 0;
  let bytes = length;
  for (;;) {
    const st = await layerStatus(layer, offset, bytes);
    bytes = st.length;
    if (st.kind !== 'unallocated') {
      const entry: MapEntry = {
        start: offset,
        length: bytes,
        depth,
        present: true,
        zero: st.kind === 'zero' || st.alsoZero === true,
        data: st.kind === 'data',
      };
      if (st.hostOffset !== undefined) {
        entry.offset = st.hostOffset;
        entry.filename = hostFileName(layer);
      }
      return entry;
    }
    const backing = layer.backing;
    // No backing, or past its end: the layer itself reports zero (not allocated). An
    // unallocated subcluster of an allocated cluster keeps its host offset (qemu: OFFSET_VALID).
    if (backing === undefined || offset >= backing.size()) {
      const entry: MapEntry = { start: offset, length: bytes, depth, present: false, zero: true, data: false };
      const host = unallocatedHostOffset(st);
      if (host !== undefined) {
        entry.offset = host;
        entry.filename = hostFileName(layer);
      }
      return entry;
    }
    bytes = Math.min(bytes, backing.size() - offset);
    layer = backing;
    depth++;
  }
}

/**
 * Status of the run at `offset` resolved through the whole chain (bdrv_block_status_above with
 * no base). `length` must be ≥ 1 and within the top image.
 */
export async function blockStatusAbove(image: ChainImage, offset: number, length: number): Promise<StatusAbove> {
  const topEnd = image.size();
  let layer = image;
  let depth = 0;
  let bytes = length;
  let result: Omit<StatusAbove, 'eof'>;
  for (;;) {
    const st = await layerStatus(layer, offset, bytes);
    bytes = st.length;
    if (st.kind !== 'unallocated') {
      result = {
        offset,
        length: bytes,
        data: st.kind === 'data',
        zero: st.kind === 'zero' || st.alsoZero === true,
        allocated: true,
        offsetValid: st.hostOffset !== undefined,
        depth,
      };
      if (st.hostOffset !== undefined) result.hostOffset = st.hostOffset;
      break;
    }
    const backing = layer.backing;
    if (backing === undefined) {
      const host = unallocatedHostOffset(st);
      result = { offset, length: bytes, data: false, zero: true, allocated: false, offsetValid: host !== undefined, depth };
      if (host !== undefined) result.hostOffset = host;
      break;
    }
    if (offset >= backing.size()) {
      // qemu: the short backing layer answers "EOF, 0 bytes", turned into allocated zeroes.
      result = { offset, length: bytes, data: false, zero: true, allocated: true, offsetValid: false, depth: depth + 1 };
      break;
    }
    bytes = Math.min(bytes, backing.size() - offset);
    layer = backing;
    depth++;
  }
  return { ...result, eof: offset + result.length === topEnd };
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
