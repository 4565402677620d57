/**
 * Block status of one layer and through a backing chain — qemu 7.2's bdrv_co_block_status and
 * bdrv_co_common_block_status_above (block/io.c), the one walker that map, compare, measure, dd
 * and convert all ask.
 *
 * A layer's own `blockStatus` says data / zero / unallocated for that layer only. Here it is
 * completed the way qemu's block layer completes a driver's answer (with want_zero, as every
 * caller of ours is a bdrv_block_status_above caller):
 *
 * - an unallocated range of a layer without backing, or at or beyond the end of a shorter
 *   backing image, reads as zero (qemu adds ZERO, not ALLOCATED);
 * - a layer that the format judges "metadata preallocated" has its data runs checked against
 *   the host file, and host holes read as zero while staying data (BDRV_BLOCK_RECURSE:
 *   DATA|ZERO);
 * - through the chain, an unallocated range is asked of the layer below until a layer
 *   allocates it, the chain ends, or `base` is reached; zeroes synthesized past the end of a
 *   short backing image count as allocated there.
 *
 * Nothing here reads guest data: only `blockStatus` and `size`, plus (once per layer that has
 * it) the format's preallocation judgement.
 */
import type { BlockDevice, BlockStatus } from '@tsimg/raw';

/** An image in a chain: a device, the image below it, and its cluster size if it has one. */
export interface ChainImage extends BlockDevice {
  readonly backing?: ChainImage;
  readonly clusterSize?: number;
  /** The device the layer's host offsets point into (its file). */
  readonly file?: BlockDevice;
  /** An external data file, when host offsets of data point there instead. */
  readonly dataFile?: BlockDevice;
  /**
   * The format's judgement that data runs must be checked against the host file, whose holes
   * then read as zeroes (qemu's BDRV_BLOCK_RECURSE for metadata-preallocated qcow2).
   */
  metadataPreallocated?(): Promise<boolean>;
  /**
   * Block status over the whole run of one kind at `offset`, where `blockStatus` stops short
   * for the format's own reasons (qcow2 answers one L2 table per call, as qemu's driver does,
   * and convert's chunks and progress follow those cuts). For walks that merge runs anyway.
   */
  blockStatusMerged?(offset: number, length: number): Promise<BlockStatus>;
}

/** One run's status, as qemu's BDRV_BLOCK_* flags say it. */
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
  /** The host offset in the deciding layer's data file or file, when it reports one. */
  hostOffset?: number;
}

/** One layer's answer (qemu's bdrv_co_block_status): flags, length and host offset. */
export interface LayerStatus {
  length: number;
  data: boolean;
  zero: boolean;
  /** Allocated in this layer (data or zero of its own; qemu's BDRV_BLOCK_ALLOCATED). */
  allocated: boolean;
  /**
   * The layer's host offset: for allocated runs that have one, and for an unallocated
   * subcluster inside an allocated cluster (extended L2), as qemu reports it.
   */
  hostOffset?: number;
}

/** Options of {@link blockStatusAbove}. */
export interface StatusAboveOptions {
  /**
   * Stop above this image (qemu's `base`, not included): a range no layer above it allocates
   * comes back unallocated. Default: the whole chain.
   */
  base?: ChainImage;
  /**
   * Apply the metadata-preallocation rule (BDRV_BLOCK_RECURSE) to each layer. Default true,
   * as qemu's want_zero queries do; allocation-only queries (bdrv_is_allocated_above, as
   * commit and rebase ask) turn it off.
   */
  recurse?: boolean;
}

/** Ensures the contract (1 ≤ length ≤ asked) so a faulty layer cannot stall a loop. */
function checked(st: BlockStatus, asked: number): BlockStatus {
  if (!(st.length >= 1) || st.length > asked) {
    throw new RangeError(`blockStatus returned length ${st.length} for a request of ${asked}`);
  }
  return st;
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

/**
 * qemu's RECURSE step: a data run at `hostOffset` of a metadata-preallocated layer, checked
 * against the host file. Returns the run's new length and whether it reads as zero there.
 */
async function recurseIntoHost(
  layer: ChainImage,
  hostOffset: number,
  length: number,
): Promise<{ length: number; zero: boolean } | undefined> {
  if (layer.metadataPreallocated === undefined || !(await layer.metadataPreallocated())) return undefined;
  const host = layer.dataFile ?? layer.file;
  if (host === undefined) return undefined;
  try {
    const hostSize = host.size();
    // Past the end of the file: it reads as zeroes (a format may read beyond its file).
    if (hostOffset >= hostSize) return { length, zero: true };
    const fst = await host.blockStatus(hostOffset, length);
    if (fst.kind === 'data') return { length: Math.min(length, fst.length), zero: false };
    // A hole: zero up to its end, or for the whole run when the hole reaches the end of file.
    const reachesEof = hostOffset + fst.length >= hostSize;
    return { length: reachesEof ? length : Math.min(length, fst.length), zero: true };
  } catch {
    return undefined; // qemu ignores errors here: the recursion only adds information
  }
}

/**
 * One layer's status of the run at `offset` (at most `bytes`, ≥ 1, within the layer) as qemu's
 * bdrv_co_block_status gives it with want_zero: the driver's answer, ZERO added to an
 * unallocated range nothing below can show through, and (unless `recurse` is false) the
 * metadata-preallocation rule applied to a data run with a host offset. `merged` asks the
 * layer's blockStatusMerged where it has one (for callers that merge runs, as map does).
 */
export async function layerStatus(layer: ChainImage, offset: number, bytes: number, recurse = true, merged = false): Promise<LayerStatus> {
  const st = checked(await (merged && layer.blockStatusMerged !== undefined ? layer.blockStatusMerged(offset, bytes) : layer.blockStatus(offset, bytes)), bytes);
  if (st.kind === 'unallocated') {
    const below = layer.backing;
    const out: LayerStatus = {
      length: st.length,
      data: false,
      zero: below === undefined || offset >= below.size(),
      allocated: false,
    };
    const host = unallocatedHostOffset(st);
    if (host !== undefined) out.hostOffset = host;
    return out;
  }
  const out: LayerStatus = { length: st.length, data: st.kind === 'data', zero: st.kind === 'zero', allocated: true };
  if (st.hostOffset !== undefined) out.hostOffset = st.hostOffset;
  if (recurse && st.kind === 'data' && st.hostOffset !== undefined) {
    const r = await recurseIntoHost(layer, st.hostOffset, st.length);
    if (r !== undefined) {
      out.length = r.length;
      out.zero = r.zero;
    }
  }
  return out;
}

/**
 * Status of the run at `offset` (at most `length` bytes, ≥ 1 and within the top image) through
 * the chain from `image` down to, not including, `options.base` — qemu's
 * bdrv_co_common_block_status_above with include_base false, want_zero true.
 *
 * Each layer is asked while the range is unallocated in the layers above, the run narrowed to
 * what every layer asked agrees on. Past the end of a shorter backing image the range reads as
 * zeroes allocated in that image (depth of that image). A range no layer above `base`
 * allocates is the last asked layer's answer: zero where nothing below can show through.
 */
export async function blockStatusAbove(
  image: ChainImage,
  offset: number,
  length: number,
  options: StatusAboveOptions = {},
): Promise<StatusAbove> {
  const recurse = options.recurse ?? true;
  let layer = image;
  let depth = 0;
  let st = await layerStatus(layer, offset, length, recurse);
  while (!st.allocated) {
    const below = layer.backing;
    if (below === undefined || below === options.base) break;
    depth++;
    if (offset >= below.size()) {
      // qemu: the short backing layer answers "EOF, 0 bytes", turned into allocated zeroes.
      st = { length: st.length, data: false, zero: true, allocated: true };
      break;
    }
    layer = below;
    st = await layerStatus(layer, offset, Math.min(st.length, below.size() - offset), recurse);
  }
  const out: StatusAbove = {
    offset,
    length: st.length,
    data: st.data,
    zero: st.zero,
    allocated: st.allocated,
    offsetValid: st.hostOffset !== undefined,
    eof: offset + st.length === image.size(),
    depth,
  };
  if (st.hostOffset !== undefined) out.hostOffset = st.hostOffset;
  return out;
}
