/**
 * A model test of internal snapshots on MemoryDevice (no qemu): random sequences of writes,
 * zero writes, discards, compressed writes, snapshot create / apply / delete and reopens run on
 * one open image and on a plain model that keeps the active layer and every snapshot's bytes. After
 * each step the active layer and every snapshot read as the model says, and the check library
 * finds no corruption and no leak.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { openQcow2Metadata, Qcow2Image, type Qcow2CreateOptions } from '@tsimg/qcow2';
import { createMemoryQcow2, expectCleanInMemory, firstDiff, keepOpen, openMemoryQcow2, type MemoryQcow2 } from './memory-image.js';

type Op =
  | { k: 'write'; off: number; len: number; p: number }
  | { k: 'zero'; off: number; len: number; unmap: boolean }
  | { k: 'discard'; off: number; len: number }
  | { k: 'compressed'; cluster: number; p: number }
  | { k: 'create'; name: string }
  | { k: 'apply'; pick: number; byName: boolean }
  | { k: 'delete'; pick: number }
  | { k: 'reopen' };

interface ModelSnapshot {
  id: string;
  name: string;
  data: Uint8Array;
}

interface Model {
  active: Uint8Array;
  snapshots: ModelSnapshot[];
}

const SIZE = 256 * 1024;
// Names that collide with IDs, so applying by "1" must find ID 1 before a snapshot named "1".
const NAMES = ['a', 'b', '1', '2'];
const MAX_SNAPSHOTS = 5;

const opArb = (clusterSize: number): fc.Arbitrary<Op> =>
  fc.oneof(
    { weight: 3, arbitrary: fc.record({ k: fc.constant('write' as const), off: fc.nat({ max: SIZE - 1 }), len: fc.integer({ min: 1, max: 40000 }), p: fc.integer({ min: 1, max: 255 }) }) },
    fc.record({ k: fc.constant('zero' as const), off: fc.nat({ max: SIZE - 1 }), len: fc.integer({ min: 1, max: 40000 }), unmap: fc.boolean() }),
    fc.record({ k: fc.constant('discard' as const), off: fc.nat({ max: SIZE - 1 }), len: fc.integer({ min: 1, max: 40000 }) }),
    fc.record({ k: fc.constant('compressed' as const), cluster: fc.nat({ max: SIZE / clusterSize - 1 }), p: fc.integer({ min: 1, max: 255 }) }),
    { weight: 3, arbitrary: fc.record({ k: fc.constant('create' as const), name: fc.constantFrom(...NAMES) }) },
    { weight: 2, arbitrary: fc.record({ k: fc.constant('apply' as const), pick: fc.nat({ max: 9 }), byName: fc.boolean() }) },
    { weight: 2, arbitrary: fc.record({ k: fc.constant('delete' as const), pick: fc.nat({ max: 9 }) }) },
    fc.constant({ k: 'reopen' as const }),
  );

/** A cluster that compresses well: a pattern byte with a few markers. */
function compressible(size: number, p: number): Uint8Array {
  const b = new Uint8Array(size).fill(p);
  for (let i = 0; i < size; i += 97) b[i] = (p * 7 + i) & 0xff;
  return b;
}

/** The model's ID of a new snapshot (qemu: one more than the largest numeric ID). */
function nextId(m: Model): string {
  return String(m.snapshots.reduce((max, sn) => Math.max(max, Number(sn.id)), 0) + 1);
}

/** Applies `op` to the image and to the model. */
async function step(img: Qcow2Image, m: Model, op: Op, clusterSize: number): Promise<void> {
  const clamp = (off: number, len: number): number => Math.min(len, SIZE - off);
  switch (op.k) {
    case 'write': {
      const data = new Uint8Array(clamp(op.off, op.len)).fill(op.p);
      await img.write(op.off, data);
      m.active.set(data, op.off);
      break;
    }
    case 'zero':
      await img.writeZeroes(op.off, clamp(op.off, op.len), { mayUnmap: op.unmap });
      m.active.fill(0, op.off, op.off + clamp(op.off, op.len));
      break;
    case 'discard': {
      // A discard drops only whole clusters; without a backing file they then read as zeroes.
      const start = Math.ceil(op.off / clusterSize) * clusterSize;
      const end = Math.floor((op.off + clamp(op.off, op.len)) / clusterSize) * clusterSize;
      await img.discard(op.off, clamp(op.off, op.len));
      if (end > start) m.active.fill(0, start, end);
      break;
    }
    case 'compressed': {
      // Compressed writes go to unallocated clusters only (as qemu's): discard first.
      const data = compressible(clusterSize, op.p);
      await img.discard(op.cluster * clusterSize, clusterSize);
      await img.writeCompressed(op.cluster * clusterSize, data);
      m.active.set(data, op.cluster * clusterSize);
      break;
    }
    case 'create': {
      if (m.snapshots.length >= MAX_SNAPSHOTS) return;
      const info = await img.createSnapshot({ name: op.name });
      const id = nextId(m);
      expect(info.id).toBe(id);
      m.snapshots.push({ id, name: op.name, data: m.active.slice() });
      break;
    }
    case 'apply': {
      if (m.snapshots.length === 0) {
        await expect(img.applySnapshot('a')).rejects.toThrow('Failed to load snapshot: No such file or directory');
        return;
      }
      const target = m.snapshots[op.pick % m.snapshots.length]!;
      const key = op.byName ? target.name : target.id;
      // qemu's resolution: an ID first, then the first snapshot with that name.
      const sn = m.snapshots.find((s) => s.id === key) ?? m.snapshots.find((s) => s.name === key)!;
      await img.applySnapshot(key);
      m.active = sn.data.slice();
      break;
    }
    case 'delete': {
      if (m.snapshots.length === 0) return;
      const i = op.pick % m.snapshots.length;
      const sn = m.snapshots[i]!;
      await img.deleteSnapshot({ id: sn.id, name: sn.name });
      m.snapshots.splice(i, 1);
      break;
    }
    case 'reopen':
      break; // the caller's
  }
}

/** Every snapshot and the active layer read as the model says; the image checks clean. */
async function verify(mem: MemoryQcow2, m: Model): Promise<void> {
  const active = await openMemoryQcow2(mem, true);
  try {
    expect(active.listSnapshots().map((s) => [s.id, s.name])).toEqual(m.snapshots.map((s) => [s.id, s.name]));
    const got = new Uint8Array(SIZE);
    await active.read(0, got);
    expect(firstDiff(got, m.active), 'active layer').toBe(-1);
  } finally {
    await active.close();
  }
  const opened = await openQcow2Metadata(keepOpen(mem.file), { readWrite: false, readTables: true });
  for (const [i, sn] of opened.snapshots.entries()) {
    const img = await Qcow2Image.open(keepOpen(mem.file), { filename: 'mem.qcow2', readOnly: true, l1Table: { offset: sn.l1TableOffset, size: sn.l1Size } });
    try {
      const got = new Uint8Array(SIZE);
      await img.read(0, got);
      expect(firstDiff(got, m.snapshots[i]!.data), `snapshot ${sn.id} (${sn.name})`).toBe(-1);
    } finally {
      await img.close();
    }
  }
  await expectCleanInMemory(mem.file);
}

describe('internal snapshots against a model', () => {
  const layouts: { name: string; options: Qcow2CreateOptions }[] = [
    { name: '512-byte clusters (many L2 tables)', options: { size: BigInt(SIZE), clusterSize: 512n } },
    { name: '16 KiB clusters, extended L2', options: { size: BigInt(SIZE), clusterSize: 16384n, extendedL2: true } },
    { name: 'v2, 1 KiB clusters', options: { size: BigInt(SIZE), clusterSize: 1024n, version: 2 } },
    { name: 'v3, 4-bit refcounts', options: { size: BigInt(SIZE), clusterSize: 2048n, refcountBits: 4n } },
  ];
  for (const layout of layouts) {
    it(`every snapshot and the active layer read as the model, ${layout.name}`, async () => {
      const cs = Number(layout.options.clusterSize);
      await fc.assert(
        fc.asyncProperty(fc.array(opArb(cs), { minLength: 1, maxLength: 16 }), async (ops) => {
          const mem = await createMemoryQcow2(layout.options);
          const m: Model = { active: new Uint8Array(SIZE), snapshots: [] };
          // One read/write open across steps (its caches, allocator and overlap map carry
          // over), flushed before each verification by separate read-only opens.
          let img = await openMemoryQcow2(mem);
          try {
            for (const op of ops) {
              // Compressed writes start a fresh session: qemu 7.2 (and tsimg, which follows it)
              // keeps packing compressed data into the host cluster of an earlier compressed
              // write even after that cluster was freed and reused for plain data in the same
              // session (qcow2_alloc_bytes' free_byte_offset), which corrupts that data. Not
              // a snapshot matter; the reopen keeps this test about snapshots.
              if (op.k === 'reopen' || op.k === 'compressed') {
                await img.close();
                img = await openMemoryQcow2(mem);
              }
              if (op.k !== 'reopen') await step(img, m, op, cs);
              await img.flush();
              await verify(mem, m);
            }
          } finally {
            await img.close();
          }
        }),
        { numRuns: 100 },
      );
    });
  }
});
