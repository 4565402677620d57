/**
 * The pieces of qemu's pre-write overlap check (qcow2_check_metadata_overlap) that do not need
 * the open image: the metadata kinds with qemu's names, and a counted set of the single-cluster
 * tables (L2 tables, refcount blocks) that answers "does this write touch one?" in time
 * proportional to the write, not to the image.
 */

/** QCow2MetadataOverlap bits (block/qcow2.h); the order of the checks is qemu's, not the bits'. */
export const OL_MAIN_HEADER = 1 << 0;
export const OL_ACTIVE_L1 = 1 << 1;
export const OL_ACTIVE_L2 = 1 << 2;
export const OL_REFCOUNT_TABLE = 1 << 3;
export const OL_REFCOUNT_BLOCK = 1 << 4;
export const OL_SNAPSHOT_TABLE = 1 << 5;
export const OL_INACTIVE_L1 = 1 << 6;
export const OL_INACTIVE_L2 = 1 << 7;
export const OL_BITMAP_DIRECTORY = 1 << 8;
/** qemu's default overlap-check mode, "cached": everything but inactive L2 tables. */
export const OL_CACHED = 0x1ff & ~OL_INACTIVE_L2;

/** qemu's metadata_ol_names, by bit. */
const OL_NAMES: ReadonlyMap<number, string> = new Map([
  [OL_MAIN_HEADER, 'qcow2_header'],
  [OL_ACTIVE_L1, 'active L1 table'],
  [OL_ACTIVE_L2, 'active L2 table'],
  [OL_REFCOUNT_TABLE, 'refcount table'],
  [OL_REFCOUNT_BLOCK, 'refcount block'],
  [OL_SNAPSHOT_TABLE, 'snapshot table'],
  [OL_INACTIVE_L1, 'inactive L1 table'],
  [OL_INACTIVE_L2, 'inactive L2 table'],
  [OL_BITMAP_DIRECTORY, 'bitmap directory'],
]);

/** The name qemu's "Preventing invalid write on metadata (overlaps with <name>)" gives `bit`. */
export function overlapName(bit: number): string {
  const name = OL_NAMES.get(bit);
  if (name === undefined) throw new RangeError(`unknown metadata overlap bit ${bit}`);
  return name;
}

/** A byte range of the image file. */
export interface ByteRange {
  offset: number;
  length: number;
}

/**
 * Host clusters holding one-cluster tables, counted: a table named twice (a corrupt image) stays
 * in the set until both names are gone. A table at an unaligned offset (also corrupt) covers the
 * two clusters it touches, as qemu's byte-range test would see it.
 */
export class MetadataClusters {
  readonly #clusterSize: number;
  readonly #count = new Map<number, number>();

  constructor(clusterSize: number) {
    this.#clusterSize = clusterSize;
  }

  /** Number of distinct clusters in the set. */
  get size(): number {
    return this.#count.size;
  }

  /** A table now lives at host `offset` (0 = none, ignored). */
  add(offset: number): void {
    if (offset === 0) return;
    const cs = this.#clusterSize;
    const last = Math.floor((offset + cs - 1) / cs);
    for (let c = Math.floor(offset / cs); c <= last; c++) this.#count.set(c, (this.#count.get(c) ?? 0) + 1);
  }

  /** The table at host `offset` is gone (0 = none, ignored). */
  delete(offset: number): void {
    if (offset === 0) return;
    const cs = this.#clusterSize;
    const last = Math.floor((offset + cs - 1) / cs);
    for (let c = Math.floor(offset / cs); c <= last; c++) {
      const n = this.#count.get(c);
      if (n === undefined) continue;
      if (n <= 1) this.#count.delete(c);
      else this.#count.set(c, n - 1);
    }
  }

  /** Replaces what the set holds with the tables at `offsets`. */
  reset(offsets: Iterable<number>): void {
    this.#count.clear();
    for (const o of offsets) this.add(o);
  }

  /** True when a cluster in `[first, end)` (cluster indices) holds a table. */
  overlaps(first: number, end: number): boolean {
    if (this.#count.size === 0 || end <= first) return false;
    // Whichever side is smaller is walked: a small write looks up its clusters, a huge one
    // (up to 2 GiB of 512-byte clusters) walks the tables instead.
    if (end - first <= this.#count.size) {
      for (let c = first; c < end; c++) if (this.#count.has(c)) return true;
      return false;
    }
    for (const c of this.#count.keys()) if (c >= first && c < end) return true;
    return false;
  }
}
