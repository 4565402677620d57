/**
 * Test support for damaged and hostile images: byte-level pokes into a qcow2 file found through
 * its own header (L1/L2 entries, refcounts, refcount table entries), and deterministic random
 * mutations (a seeded PRNG) of header fields, metadata clusters and file length.
 */
import { closeSync, ftruncateSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';

/** A qcow2 file opened for poking. Offsets are plain numbers; entries are bigint. */
export class Qcow2Poker {
  readonly fd: number;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly l1Offset: number;
  readonly reftableOffset: number;
  readonly refcountOrder: number;
  readonly extendedL2: boolean;
  readonly snapshotsOffset: number;

  constructor(path: string) {
    this.fd = openSync(path, 'r+');
    const h = this.read(0, 112);
    this.clusterBits = h.readUInt32BE(20);
    this.clusterSize = 2 ** this.clusterBits;
    this.l1Offset = Number(h.readBigUInt64BE(40));
    this.reftableOffset = Number(h.readBigUInt64BE(48));
    this.snapshotsOffset = Number(h.readBigUInt64BE(64));
    const v3 = h.readUInt32BE(4) === 3;
    this.refcountOrder = v3 ? h.readUInt32BE(96) : 4;
    this.extendedL2 = v3 && (h.readBigUInt64BE(72) & 16n) !== 0n;
  }

  read(offset: number, length: number): Buffer {
    const b = Buffer.alloc(length);
    readSync(this.fd, b, 0, length, offset);
    return b;
  }

  write(offset: number, data: Uint8Array): void {
    writeSync(this.fd, data, 0, data.length, offset);
  }

  u64(offset: number): bigint {
    return this.read(offset, 8).readBigUInt64BE(0);
  }

  setU64(offset: number, value: bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt.asUintN(64, value));
    this.write(offset, b);
  }

  setU32(offset: number, value: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(value >>> 0);
    this.write(offset, b);
  }

  l1Entry(i: number): bigint {
    return this.u64(this.l1Offset + i * 8);
  }

  setL1Entry(i: number, v: bigint): void {
    this.setU64(this.l1Offset + i * 8, v);
  }

  l2Offset(i: number): number {
    return Number(this.l1Entry(i) & 0x00ff_ffff_ffff_fe00n);
  }

  /** Byte offset of L2 entry `j` of the table L1 entry `i` points to. */
  l2EntryOffset(i: number, j: number): number {
    return this.l2Offset(i) + j * (this.extendedL2 ? 16 : 8);
  }

  l2Entry(i: number, j: number): bigint {
    return this.u64(this.l2EntryOffset(i, j));
  }

  setL2Entry(i: number, j: number, v: bigint): void {
    this.setU64(this.l2EntryOffset(i, j), v);
  }

  /** Host offset of the data cluster L2 entry (i, j) maps. */
  dataOffset(i: number, j: number): number {
    return Number(this.l2Entry(i, j) & 0x00ff_ffff_ffff_fe00n);
  }

  /** Sets the on-disk refcount of cluster `cluster` (the refcount block must exist). */
  setRefcount(cluster: number, value: number): void {
    const perBlock = (this.clusterSize * 8) >> this.refcountOrder;
    const rb = Number(this.u64(this.reftableOffset + Math.floor(cluster / perBlock) * 8) & ~0x1ffn);
    const index = cluster % perBlock;
    const bits = 1 << this.refcountOrder;
    if (bits >= 8) {
      const b = Buffer.alloc(bits / 8);
      let v = BigInt(value);
      for (let k = b.length - 1; k >= 0; k--) {
        b[k] = Number(v & 0xffn);
        v >>= 8n;
      }
      this.write(rb + index * (bits / 8), b);
    } else {
      const byteOff = rb + Math.floor((index * bits) / 8);
      const shift = (index * bits) % 8;
      const mask = ((1 << bits) - 1) << shift;
      const old = this.read(byteOff, 1)[0]!;
      this.write(byteOff, Buffer.from([(old & ~mask) | ((value << shift) & mask)]));
    }
  }

  setReftableEntry(i: number, v: bigint): void {
    this.setU64(this.reftableOffset + i * 8, v);
  }

  reftableEntry(i: number): bigint {
    return this.u64(this.reftableOffset + i * 8);
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** Runs `fn` on a poker for `path` and closes it. */
export function poke(path: string, fn: (p: Qcow2Poker) => void): void {
  const p = new Qcow2Poker(path);
  try {
    fn(p);
  } finally {
    p.close();
  }
}

/** mulberry32: a small deterministic PRNG (fixed seeds make every mutation reproducible). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A description of one mutation, enough to reproduce it by hand. */
export interface Mutation {
  kind: string;
  detail: string;
}

/** Interesting values for header fields: zero, boundaries, all ones, huge. */
const ABSURD_U64 = [0n, 1n, 0x200n, 0xffff_ffffn, 0x1_0000_0000n, 0x7fff_ffff_ffff_fe00n, 0xffff_ffff_ffff_ffffn, 0x00ff_ffff_ffff_0000n];
const ABSURD_U32 = [0, 1, 8, 9, 21, 22, 64, 0x7fff_ffff, 0xffff_ffff, 0x10000, 0x400000, 0x400001];

/** Header fields of a qcow2 header: offset and width. */
const HEADER_FIELDS: Array<{ name: string; offset: number; width: 4 | 8 }> = [
  { name: 'version', offset: 4, width: 4 },
  { name: 'backing_file_offset', offset: 8, width: 8 },
  { name: 'backing_file_size', offset: 16, width: 4 },
  { name: 'cluster_bits', offset: 20, width: 4 },
  { name: 'size', offset: 24, width: 8 },
  { name: 'crypt_method', offset: 32, width: 4 },
  { name: 'l1_size', offset: 36, width: 4 },
  { name: 'l1_table_offset', offset: 40, width: 8 },
  { name: 'refcount_table_offset', offset: 48, width: 8 },
  { name: 'refcount_table_clusters', offset: 56, width: 4 },
  { name: 'nb_snapshots', offset: 60, width: 4 },
  { name: 'snapshots_offset', offset: 64, width: 8 },
  { name: 'incompatible_features', offset: 72, width: 8 },
  { name: 'compatible_features', offset: 80, width: 8 },
  { name: 'autoclear_features', offset: 88, width: 8 },
  { name: 'refcount_order', offset: 96, width: 4 },
  { name: 'header_length', offset: 100, width: 4 },
];

/**
 * Applies one deterministic mutation chosen by `rand` to the qcow2 file at `path`, in place:
 * an absurd header field, random bytes in the header or in a metadata cluster (L1, L2,
 * refcount table or block, snapshot table), a random bit flip anywhere in the metadata, or a
 * truncation. Returns what it did.
 */
export function mutateQcow2(path: string, rand: () => number): Mutation {
  const fd = openSync(path, 'r+');
  try {
    const size = fstatSync(fd).size;
    const hdr = Buffer.alloc(112);
    readSync(fd, hdr, 0, 112, 0);
    const clusterSize = 2 ** Math.min(Math.max(hdr.readUInt32BE(20), 9), 21);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
    const metaClusters = (): number[] => {
      const out = [0];
      const l1 = Number(hdr.readBigUInt64BE(40));
      const rt = Number(hdr.readBigUInt64BE(48));
      const sn = Number(hdr.readBigUInt64BE(64));
      for (const o of [l1, rt, sn]) if (o > 0 && o < size) out.push(o - (o % clusterSize));
      if (rt > 0 && rt + 8 <= size) {
        const e = Buffer.alloc(8);
        readSync(fd, e, 0, 8, rt);
        const rb = Number(e.readBigUInt64BE(0) & 0x00ff_ffff_ffff_fe00n);
        if (rb > 0 && rb < size) out.push(rb);
      }
      if (l1 > 0 && l1 + 8 <= size) {
        const e = Buffer.alloc(8);
        readSync(fd, e, 0, 8, l1);
        const l2 = Number(e.readBigUInt64BE(0) & 0x00ff_ffff_ffff_fe00n);
        if (l2 > 0 && l2 < size) out.push(l2);
      }
      return out;
    };
    const w = (offset: number, data: Uint8Array): void => void writeSync(fd, data, 0, data.length, offset);
    const r = rand();
    if (r < 0.3) {
      const f = pick(HEADER_FIELDS);
      const b = Buffer.alloc(f.width);
      let v: string;
      if (f.width === 8) {
        const x = rand() < 0.7 ? pick(ABSURD_U64) : BigInt(Math.floor(rand() * size)) & ~0x1ffn;
        b.writeBigUInt64BE(x);
        v = `0x${x.toString(16)}`;
      } else {
        const x = pick(ABSURD_U32);
        b.writeUInt32BE(x);
        v = `0x${x.toString(16)}`;
      }
      w(f.offset, b);
      return { kind: 'header-field', detail: `${f.name} = ${v}` };
    }
    if (r < 0.45) {
      const off = Math.floor(rand() * 112);
      const len = 1 + Math.floor(rand() * 8);
      const bytes = Buffer.from(Array.from({ length: len }, () => Math.floor(rand() * 256)));
      w(off, bytes);
      return { kind: 'header-bytes', detail: `${len} random bytes at ${off}: ${bytes.toString('hex')}` };
    }
    if (r < 0.8) {
      const cl = pick(metaClusters());
      const n = 1 + Math.floor(rand() * 4);
      const parts: string[] = [];
      for (let i = 0; i < n; i++) {
        const entry = Math.floor((rand() * Math.min(clusterSize, 4096)) / 8) * 8;
        const off = cl + (cl === 0 ? 112 + entry : entry);
        const bytes = Buffer.from(Array.from({ length: 8 }, () => Math.floor(rand() * 256)));
        if (rand() < 0.5) bytes.fill(0, 0, 2); // plausible offsets as well as garbage
        w(off, bytes);
        parts.push(`${off}:${bytes.toString('hex')}`);
      }
      return { kind: 'metadata-bytes', detail: `cluster 0x${cl.toString(16)}: ${parts.join(' ')}` };
    }
    if (r < 0.9) {
      const cl = pick(metaClusters());
      const bit = Math.floor(rand() * Math.min(clusterSize, 4096) * 8);
      const off = cl + (bit >> 3);
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, off);
      b[0] ^= 1 << (bit & 7);
      w(off, b);
      return { kind: 'bit-flip', detail: `byte ${off} bit ${bit & 7}` };
    }
    const newSize = pick([0, 3, 71, 104, 512, Math.floor(size / 2), size - 1, Math.floor(rand() * size)]);
    ftruncateSync(fd, newSize);
    return { kind: 'truncate', detail: `to ${newSize} bytes` };
  } finally {
    closeSync(fd);
  }
}
