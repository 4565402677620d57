/**
 * Block status through a backing chain: what a range of the top image reads as, looking down
 * the chain where a layer leaves it unallocated — qemu's bdrv_block_status_above.
 */
import type { BlockDevice } from '@tsimg/raw';

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
}

/** The chain's view of one run: which layer decided it (depth 0 = top). */
export interface ChainStatus {
  kind: 'data' | 'zero' | 'unallocated';
  offset: number;
  length: number;
  /** The layer whose status this is (0 = `image` itself). */
  depth: number;
  /** That layer's host offset, when it reports one. */
  hostOffset?: number;
}

/**
 * Status of the run at `offset` (at most `length` bytes) as seen through the chain from `image`
 * down to, but not including, `base` (undefined: the whole chain).
 *
 * A range no layer above `base` allocates is `zero` when the chain ends there (nothing below
 * can show through) and `unallocated` when `base` would show through. Past the end of a
 * shorter backing image the range reads as zeroes.
 */
export async function chainBlockStatus(
  image: ChainImage,
  offset: number,
  length: number,
  base?: ChainImage,
): Promise<ChainStatus> {
  let layer: ChainImage = image;
  let depth = 0;
  for (;;) {
    const st = await layer.blockStatus(offset, length);
    if (st.kind !== 'unallocated') {
      return { kind: st.kind, offset, length: st.length, depth, hostOffset: st.hostOffset };
    }
    length = st.length;
    const below = layer.backing;
    if (below === undefined) return { kind: 'zero', offset, length, depth };
    if (below === base) return { kind: 'unallocated', offset, length, depth };
    if (offset >= below.size()) return { kind: 'zero', offset, length, depth: depth + 1 };
    length = Math.min(length, below.size() - offset);
    layer = below;
    depth++;
  }
}
