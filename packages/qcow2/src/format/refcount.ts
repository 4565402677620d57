/**
 * Refcount blocks and the refcount table: pure codecs for reading and writing one refcount of
 * 1..64 bits in a refcount block, and for refcount table entries.
 *
 * Layout (docs/interop/qcow2.txt, "Host cluster management"): refcount_bits = 1 << refcount_order.
 * Entries narrower than a byte are packed starting at the least significant bit of each byte
 * (as qemu's get_refcount_ro0..2 do); 8..64-bit entries are big-endian. Refcount table entries
 * are 64-bit offsets with bits 0..8 reserved.
 *
 * Refcounts are `number`s: a 64-bit refcount beyond 2^53 cannot be represented and is refused
 * on read (no real image gets there; qemu caps new refcounts at refcount_max anyway).
 */
import { FormatError } from '@tsimg/raw';

/** Bytes per refcount table entry. */
export const REFTABLE_ENTRY_SIZE = 8;

/** Largest refcount an entry of `2^order` bits can hold, as far as a number can count it. */
export function refcountMax(order: number): number {
  return order >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** (1 << order) - 1;
}

/** Number of refcount entries in one refcount block of 2^clusterBits bytes. */
export function refcountsPerBlock(clusterBits: number, order: number): number {
  return 2 ** (clusterBits + 3 - order);
}

/** Reads refcount `index` of a refcount block with `2^order`-bit entries. */
export function getRefcount(block: Uint8Array, index: number, order: number): number {
  switch (order) {
    case 0:
      return (block[index >>> 3]! >>> (index & 7)) & 1;
    case 1:
      return (block[index >>> 2]! >>> (2 * (index & 3))) & 3;
    case 2:
      return (block[index >>> 1]! >>> (4 * (index & 1))) & 15;
    case 3:
      return block[index]!;
    case 4:
      return (block[2 * index]! << 8) | block[2 * index + 1]!;
    case 5: {
      const o = 4 * index;
      return ((block[o]! << 24) | (block[o + 1]! << 16) | (block[o + 2]! << 8) | block[o + 3]!) >>> 0;
    }
    case 6: {
      const o = 8 * index;
      const hi = ((block[o]! << 24) | (block[o + 1]! << 16) | (block[o + 2]! << 8) | block[o + 3]!) >>> 0;
      const lo = ((block[o + 4]! << 24) | (block[o + 5]! << 16) | (block[o + 6]! << 8) | block[o + 7]!) >>> 0;
      if (hi > 0x1f_ffff) throw new FormatError(`Refcount entry ${index} is too large to count`);
      return hi * 2 ** 32 + lo;
    }
    default:
      throw new FormatError(`Invalid refcount order ${order}`);
  }
}

/** Writes refcount `index` (0 <= value <= refcountMax(order)) of a refcount block. */
export function setRefcount(block: Uint8Array, index: number, order: number, value: number): void {
  switch (order) {
    case 0: {
      const i = index >>> 3;
      const s = index & 7;
      block[i] = (block[i]! & ~(1 << s)) | ((value & 1) << s);
      return;
    }
    case 1: {
      const i = index >>> 2;
      const s = 2 * (index & 3);
      block[i] = (block[i]! & ~(3 << s)) | ((value & 3) << s);
      return;
    }
    case 2: {
      const i = index >>> 1;
      const s = 4 * (index & 1);
      block[i] = (block[i]! & ~(15 << s)) | ((value & 15) << s);
      return;
    }
    case 3:
      block[index] = value;
      return;
    case 4:
      block[2 * index] = value >>> 8;
      block[2 * index + 1] = value & 0xff;
      return;
    case 5: {
      const o = 4 * index;
      block[o] = value >>> 24;
      block[o + 1] = (value >>> 16) & 0xff;
      block[o + 2] = (value >>> 8) & 0xff;
      block[o + 3] = value & 0xff;
      return;
    }
    case 6: {
      const o = 8 * index;
      const hi = Math.floor(value / 2 ** 32);
      const lo = value % 2 ** 32;
      block[o] = 0;
      block[o + 1] = hi >>> 16;
      block[o + 2] = (hi >>> 8) & 0xff;
      block[o + 3] = hi & 0xff;
      block[o + 4] = lo >>> 24;
      block[o + 5] = (lo >>> 16) & 0xff;
      block[o + 6] = (lo >>> 8) & 0xff;
      block[o + 7] = lo & 0xff;
      return;
    }
    default:
      throw new FormatError(`Invalid refcount order ${order}`);
  }
}

/** Reads refcount table entry `index`: the refcount block's offset (0 = none) and reserved bits. */
export function decodeReftableEntry(view: DataView, index: number): { offset: number; reserved: boolean } {
  const hi = view.getUint32(index * REFTABLE_ENTRY_SIZE);
  const lo = view.getUint32(index * REFTABLE_ENTRY_SIZE + 4);
  if (hi > 0x1f_ffff) throw new FormatError(`Refcount table entry ${index} is beyond the largest supported offset`);
  return { offset: hi * 2 ** 32 + ((lo & 0xffff_fe00) >>> 0), reserved: (lo & 0x1ff) !== 0 };
}

/** Writes refcount table entry `index`. */
export function encodeReftableEntry(view: DataView, index: number, offset: number): void {
  view.setUint32(index * REFTABLE_ENTRY_SIZE, Math.floor(offset / 2 ** 32));
  view.setUint32(index * REFTABLE_ENTRY_SIZE + 4, offset % 2 ** 32);
}

/**
 * qemu's qcow2_refcount_metadata_size, the one implementation (measure, create and the engine's
 * allocator all call it): how many refcount blocks, and how many bytes of blocks plus table,
 * cover `clusters` clusters including themselves, found as a fixed point. With
 * `generousIncrease` the table gets room for half as many blocks again, as qemu does when it
 * enlarges a refcount table. In `bigint` because a measured image may exceed 2^53 bytes.
 */
export function qcow2RefcountMetadataSize(
  clusters: bigint,
  clusterSize: number,
  refcountOrder: number,
  generousIncrease = false,
): { bytes: bigint; refblocks: bigint } {
  const cs = BigInt(clusterSize);
  const blocksPerTableCluster = cs / BigInt(REFTABLE_ENTRY_SIZE);
  const refcountsPerBlk = (cs * 8n) / (1n << BigInt(refcountOrder));
  const divRoundUp = (n: bigint, d: bigint): bigint => (n + d - 1n) / d;
  let table = 0n;
  let blocks = 0n;
  let last: bigint;
  let n = 0n;
  let generous = generousIncrease;
  do {
    last = n;
    blocks = divRoundUp(clusters + table + blocks, refcountsPerBlk);
    table = divRoundUp(blocks, blocksPerTableCluster);
    n = clusters + blocks + table;
    if (n === last && generous) {
      clusters += divRoundUp(table, 2n);
      n = 0n; // force another round
      generous = false;
    }
  } while (n !== last);
  return { bytes: (blocks + table) * cs, refblocks: blocks };
}

/**
 * {@link qcow2RefcountMetadataSize} for an open image's offsets (`number`s, exact below 2^53):
 * the refcount block count and the bytes of blocks plus table.
 */
export function refcountMetadataSize(
  clusters: number,
  clusterSize: number,
  order: number,
  generousIncrease: boolean,
): { refblockCount: number; bytes: number } {
  const r = qcow2RefcountMetadataSize(BigInt(clusters), clusterSize, order, generousIncrease);
  return { refblockCount: Number(r.refblocks), bytes: Number(r.bytes) };
}
