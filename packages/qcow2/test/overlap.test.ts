/**
 * The pre-write overlap check against qemu's default ("cached") mode: qemu-made images get an L2
 * entry or a refcount poked so that a guest write would land on one kind of metadata each. The
 * engine must refuse the write with qemu's message, set the corrupt bit and leave the metadata
 * as it was — and qemu-io, given the same poked image, must say the same.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { openImage } from '@tsimg/image';
import { Qcow2Image } from '@tsimg/qcow2';
import { decodeL1Entry } from '../src/format/l2-entry.js';
import { MetadataClusters, OL_ACTIVE_L2, OL_BITMAP_DIRECTORY, overlapName } from '../src/format/overlap.js';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';
import { poke, type Qcow2Poker } from '../../../test-images/mutate.js';

const COPIED = 1n << 63n;
const CORRUPT_BIT = 2n;
const BITMAPS_EXT = 0x23852875;
const CORRUPTION_SUFFIX = '; further corruption events will be suppressed';

/** The bitmap directory named by the header's bitmaps extension. */
function bitmapDirectory(p: Qcow2Poker): { offset: number; size: number } {
  let at = p.read(100, 4).readUInt32BE(0); // header_length
  for (;;) {
    const ext = p.read(at, 8);
    const type = ext.readUInt32BE(0);
    const len = ext.readUInt32BE(4);
    if (type === 0) throw new Error('no bitmaps extension');
    if (type === BITMAPS_EXT) {
      const body = p.read(at + 8, 24);
      return { size: Number(body.readBigUInt64BE(8)), offset: Number(body.readBigUInt64BE(16)) };
    }
    at += 8 + Math.ceil(len / 8) * 8;
  }
}

/** One kind of metadata and how to make a guest write land on it. */
interface Case {
  name: string;
  /** qemu's name of the metadata (metadata_ol_names). */
  kind: string;
  /** Extra qemu-img / qemu-io steps after `create` and the first data write. */
  prepare?: (file: string) => void;
  /** Pokes the image; returns the host range that must stay untouched. */
  poke: (p: Qcow2Poker) => { offset: number; length: number };
  /** The guest write (a whole cluster, so no copy on write reads around it). */
  guest: number;
  /** Why qemu-io (and tsimg, doing as qemu) changes the metadata (legitimately) on the way, if it does. */
  qemuRewrites?: string;
  /** A compressed write (qcow2_alloc_bytes' allocation, checked before the data goes out). */
  compressed?: boolean;
}

/** Points the L2 entry of guest cluster 0 at host `offset`, writable in place (COPIED). */
function aimAt(p: Qcow2Poker, offset: number): { offset: number; length: number } {
  p.setL2Entry(0, 0, BigInt(offset) | COPIED);
  return { offset, length: p.clusterSize };
}

/** Frees host cluster `offset` in the refcounts, so the next allocation hands it out. */
function freeForAllocation(p: Qcow2Poker, offset: number): { offset: number; length: number } {
  p.setRefcount(offset / p.clusterSize, 0);
  return { offset, length: p.clusterSize };
}

/** A snapshot, then a write so the active L2 table is a copy whose first entry we may poke. */
function withSnapshot(file: string): void {
  expect(qemuImg(['snapshot', '-c', 'snap', file]).status).toBe(0);
  expect(qemuIo(['-c', 'write -P 2 0 64k', file]).status).toBe(0);
}

const CASES: Case[] = [
  {
    name: 'an allocation handed the header cluster (refcount 0)',
    kind: 'qcow2_header',
    poke: (p) => freeForAllocation(p, 0),
    guest: 65536,
  },
  { name: 'an L2 entry naming the active L1 table', kind: 'active L1 table', poke: (p) => aimAt(p, p.l1Offset), guest: 0 },
  { name: 'an L2 entry naming the refcount table', kind: 'refcount table', poke: (p) => aimAt(p, p.reftableOffset), guest: 0 },
  {
    name: 'an L2 entry naming a refcount block',
    kind: 'refcount block',
    poke: (p) => aimAt(p, Number(p.reftableEntry(0) & ~0x1ffn)),
    guest: 0,
  },
  {
    name: 'an allocation handed a refcount block (refcount 0)',
    kind: 'refcount block',
    poke: (p) => freeForAllocation(p, Number(p.reftableEntry(0) & ~0x1ffn)),
    guest: 65536,
  },
  { name: 'an L2 entry naming its own L2 table', kind: 'active L2 table', poke: (p) => aimAt(p, p.l2Offset(0)), guest: 0 },
  {
    name: 'an allocation handed an active L2 table (refcount 0)',
    kind: 'active L2 table',
    poke: (p) => freeForAllocation(p, p.l2Offset(0)),
    guest: 65536,
  },
  {
    name: 'a compressed write handed an active L2 table (refcount 0)',
    kind: 'active L2 table',
    poke: (p) => freeForAllocation(p, p.l2Offset(0)),
    guest: 65536,
    compressed: true,
  },
  {
    name: 'an L2 entry naming the snapshot table',
    kind: 'snapshot table',
    prepare: withSnapshot,
    poke: (p) => aimAt(p, p.snapshotsOffset),
    guest: 0,
  },
  {
    name: "an L2 entry naming a snapshot's L1 table",
    kind: 'inactive L1 table',
    prepare: withSnapshot,
    poke: (p) => aimAt(p, Number(p.u64(p.snapshotsOffset))),
    guest: 0,
  },
  {
    name: 'an L2 entry naming the bitmap directory',
    kind: 'bitmap directory',
    prepare: (file) => expect(qemuImg(['bitmap', '--add', file, 'b0']).status).toBe(0),
    poke: (p) => aimAt(p, bitmapDirectory(p).offset),
    guest: 0,
    qemuRewrites: 'a read/write open marks the bitmap in use, rewriting the directory in place',
  },
];

function incompatibleFeatures(file: string): bigint {
  return readFileSync(file).subarray(72, 80).readBigUInt64BE(0);
}

/** The file's bytes in `r`, the header's feature fields (72..95) blanked: corrupt() sets a bit there. */
function region(file: string, r: { offset: number; length: number }): Buffer {
  const b = Buffer.from(readFileSync(file).subarray(r.offset, r.offset + r.length));
  if (r.offset === 0) b.fill(0, 72, 96);
  return b;
}

describeQemu('pre-write overlap check (qemu default "cached" mode)', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => ({ dir, cleanup } = tempDir('tsimg-overlap-')));
  afterAll(() => cleanup());

  CASES.forEach((c, i) => {
    it(`refuses ${c.name}: "${c.kind}", like qemu-io`, async () => {
      const ours = join(dir, `ours${i}.qcow2`);
      const theirs = join(dir, `theirs${i}.qcow2`);
      expect(qemuImg(['create', '-q', '-f', 'qcow2', ours, '64M']).status).toBe(0);
      expect(qemuIo(['-c', 'write -P 1 0 64k', ours]).status).toBe(0);
      c.prepare?.(ours);
      let target = { offset: 0, length: 0 };
      poke(ours, (p) => (target = c.poke(p)));
      copyFileSync(ours, theirs);
      const before = region(ours, target);
      const expected = `qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with ${c.kind})${CORRUPTION_SUFFIX}`;

      const img = await openImage(ours, { readOnly: false });
      try {
        const data = new Uint8Array(65536).fill(0x5a);
        expect(img).toBeInstanceOf(Qcow2Image);
        const write = c.compressed ? (img as Qcow2Image).writeCompressed(c.guest, data) : img.write(c.guest, data);
        await expect(write).rejects.toThrow(expected);
        // Once corrupt, nothing more is written.
        await expect(img.write(1 << 20, new Uint8Array(512))).rejects.toThrow();
      } finally {
        await img.close();
      }
      expect(incompatibleFeatures(ours) & CORRUPT_BIT).toBe(CORRUPT_BIT);
      // tsimg's read/write open rewrites what qemu's does (qemuRewrites), and only that.
      if (c.qemuRewrites === undefined) expect(region(ours, target).equals(before)).toBe(true);
      else expect(region(ours, target).includes(Buffer.alloc(512, 0x5a))).toBe(false);

      const q = qemuIo(['-c', `write ${c.compressed ? '-c ' : ''}-P 0x5a ${c.guest} 64k`, theirs]);
      expect(q.stdout + q.stderr).toContain(expected);
      expect(incompatibleFeatures(theirs) & CORRUPT_BIT).toBe(CORRUPT_BIT);
      const after = region(theirs, target);
      if (c.qemuRewrites === undefined) expect(after.equals(before)).toBe(true);
      else expect(after.includes(Buffer.alloc(512, 0x5a))).toBe(false);
    });
  });

  it('an untouched image takes writes over many L2 tables and refcount blocks (512-byte clusters)', async () => {
    // Small clusters: every 32 KiB of guest data needs a new L2 table and every 128 KiB of
    // host data a new refcount block — all of which the set must learn as they appear.
    const f = join(dir, 'small.qcow2');
    expect(qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', f, '8M']).status).toBe(0);
    const img = await openImage(f, { readOnly: false });
    try {
      const data = new Uint8Array(3 << 20);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
      await img.write(0, data);
      await img.write(5 << 20, data.subarray(0, 1 << 20));
      // Overwriting in place and shrinking (which drops L2 tables) stays clean too.
      await img.write(12345, data.subarray(0, 100_000));
      await img.resize(4 << 20);
      await img.write(3 << 20, data.subarray(0, 1 << 20));
    } finally {
      await img.close();
    }
    const check = qemuImg(['check', f]);
    expect(check.stdout + check.stderr).toContain('No errors were found on the image.');
    expect(incompatibleFeatures(f) & CORRUPT_BIT).toBe(0n);
  });

  /**
   * An image whose L2 tables, refcount blocks and refcount table were all made by this session:
   * 512-byte clusters, 10 MiB written (96 L2 tables beyond the first, ~80 refcount blocks, and a
   * refcount table that outgrew its one cluster), then shrunk to 1 MiB (L2 tables dropped).
   */
  async function grown(name: string): Promise<{ img: Qcow2Image; file: string }> {
    const file = join(dir, name);
    expect(qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', file, '16M']).status).toBe(0);
    const img = await openImage(file, { readOnly: false });
    if (!(img instanceof Qcow2Image)) throw new Error('not qcow2');
    await img.write(0, new Uint8Array(10 << 20).fill(3));
    await img.flush();
    return { img, file };
  }

  it('knows the L2 tables and refcount blocks allocated (and dropped) while open', async () => {
    const l2 = await grown('grown-l2.qcow2');
    try {
      const dropped = decodeL1Entry(l2.img.l1, 100 * 8).l2Offset;
      const kept = decodeL1Entry(l2.img.l1, 20 * 8).l2Offset;
      expect(dropped).toBeGreaterThan(0);
      await l2.img.resize(1 << 20);
      // A dropped table is no metadata any more (its cluster is free); a kept one is.
      await l2.img.writeMetadata(dropped, new Uint8Array(512));
      await expect(l2.img.writeMetadata(kept, new Uint8Array(512))).rejects.toThrow('(overlaps with active L2 table)');
    } finally {
      await l2.img.close();
    }

    const rb = await grown('grown-refblock.qcow2');
    try {
      const head = readFileSync(rb.file);
      const reftableOffset = Number(head.readBigUInt64BE(48));
      const reftableClusters = head.readUInt32BE(56);
      expect(reftableClusters).toBeGreaterThan(1); // the table was moved and grown
      let last = 0;
      for (let i = 0; i < reftableClusters * 64; i++) {
        const e = Number(head.readBigUInt64BE(reftableOffset + i * 8) & ~0x1ffn);
        if (e !== 0) last = e;
      }
      expect(last).toBeGreaterThan(8 << 20); // a block made by this session
      await expect(rb.img.writeMetadata(reftableOffset + 512, new Uint8Array(8))).rejects.toThrow('(overlaps with refcount table)');
    } finally {
      await rb.img.close();
    }
    const rb2 = await grown('grown-refblock2.qcow2');
    try {
      const head = readFileSync(rb2.file);
      const reftableOffset = Number(head.readBigUInt64BE(48));
      const block = Number(head.readBigUInt64BE(reftableOffset + 70 * 8) & ~0x1ffn);
      expect(block).toBeGreaterThan(0);
      await expect(rb2.img.writeMetadata(block, new Uint8Array(512))).rejects.toThrow('(overlaps with refcount block)');
    } finally {
      await rb2.img.close();
    }
  });
});

describe('MetadataClusters', () => {
  it('counts tables per cluster, looks up from either side, and names kinds as qemu does', () => {
    const s = new MetadataClusters(65536);
    s.add(0); // no table
    s.add(3 * 65536);
    s.add(3 * 65536); // named twice (corrupt image)
    s.add(10 * 65536 + 512); // unaligned: touches clusters 10 and 11
    expect(s.size).toBe(3);
    expect(s.overlaps(3, 4)).toBe(true);
    expect(s.overlaps(4, 10)).toBe(false);
    expect(s.overlaps(11, 12)).toBe(true);
    expect(s.overlaps(0, 1_000_000)).toBe(true); // walks the set
    expect(s.overlaps(12, 1_000_000)).toBe(false);
    s.delete(3 * 65536);
    expect(s.overlaps(3, 4)).toBe(true);
    s.delete(3 * 65536);
    expect(s.overlaps(3, 4)).toBe(false);
    s.reset([65536]);
    expect(s.overlaps(0, 2)).toBe(true);
    expect(s.overlaps(11, 12)).toBe(false);
    expect(overlapName(OL_ACTIVE_L2)).toBe('active L2 table');
    expect(overlapName(OL_BITMAP_DIRECTORY)).toBe('bitmap directory');
  });
});
