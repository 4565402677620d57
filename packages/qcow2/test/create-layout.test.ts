/**
 * create's layout replays qemu's allocator synchronously in memory (create/layout.ts); the
 * engine's Allocator runs the same qemu code over a cache and a device. The replay stays for
 * speed, so this holds it against the Allocator: the same allocation sequence (first-fit
 * allocations, allocations at a given offset, refcount areas as preallocation=full makes them)
 * must give the same offsets, the same refcount table and the same refcounts.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryDevice } from '@tsimg/raw';
import { Allocator } from '../src/engine/allocator.js';
import { TableCache } from '../src/engine/cache.js';
import { Layout } from '../src/create/layout.js';

type Op =
  | { kind: 'alloc'; clusters: number }
  | { kind: 'at'; skip: number; clusters: number }
  | { kind: 'area'; additional: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('alloc' as const), clusters: fc.integer({ min: 1, max: 16 }) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('at' as const),
      skip: fc.integer({ min: -8, max: 8 }),
      clusters: fc.integer({ min: 0, max: 16 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('area' as const), additional: fc.integer({ min: 0, max: 200 }) }) },
);

/** An Allocator on a fresh image as qcow2_co_create leaves it: table at cluster 1, one empty block at 2. */
function engineAllocator(clusterBits: number, refcountOrder: number): Allocator {
  const cs = 2 ** clusterBits;
  const file = new MemoryDevice({ pageSize: 512 });
  const hooks = {
    load: async (offset: number, into: Uint8Array) => {
      into.fill(0);
      if (offset < file.size()) await file.read(offset, into.subarray(0, Math.min(into.length, file.size() - offset)));
    },
    store: (offset: number, data: Uint8Array) => file.write(offset, data),
    sync: () => file.flush(),
  };
  const table = new Float64Array(cs / 8);
  table[0] = 2 * cs;
  return new Allocator(
    {
      file,
      clusterBits,
      refcountOrder,
      refcountCache: new TableCache(cs, 4, hooks),
      l2Cache: new TableCache(cs, 4, hooks),
      writeReftableHeader: async () => {},
      corrupt: async (m) => {
        throw new Error(m);
      },
    },
    table,
    cs,
  );
}

/** The layout in the same state (create's runCreate before its first allocation). */
function createLayout(clusterBits: number, refcountOrder: number): Layout {
  const lay = new Layout(clusterBits, refcountOrder, false);
  const cs = lay.cs;
  lay.reftable[0] = 2 * cs;
  lay.refblocks.set(2 * cs, new Uint8Array(cs));
  return lay;
}

/** A bound above every cluster the layout has a refcount for. */
function usedBound(lay: Layout): number {
  let end = Math.max(lay.freeClusterIndex * lay.cs, lay.reftableOffset + lay.reftable.length * 8);
  for (const off of lay.refblocks.keys()) end = Math.max(end, off + lay.cs);
  return end;
}

describe('create layout against the engine allocator', () => {
  it('the same allocation sequence gives the same offsets, table and refcounts', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 9, max: 12 }),
        fc.integer({ min: 0, max: 6 }),
        fc.array(op, { minLength: 1, maxLength: 40 }),
        async (clusterBits, refcountOrder, ops) => {
          const lay = createLayout(clusterBits, refcountOrder);
          const eng = engineAllocator(clusterBits, refcountOrder);
          const cs = lay.cs;
          expect(lay.allocClusters(3 * cs)).toBe(0);
          expect(await eng.allocClusters(3 * cs)).toBe(0);
          for (const o of ops) {
            if (o.kind === 'alloc') {
              expect(await eng.allocClusters(o.clusters * cs)).toBe(lay.allocClusters(o.clusters * cs));
            } else if (o.kind === 'at') {
              const offset = Math.max(0, lay.freeClusterIndex + o.skip) * cs;
              expect(await eng.allocClustersAt(offset, o.clusters)).toBe(lay.allocClustersAt(offset, o.clusters));
            } else {
              // as preallocation=full does it: a refcount area after everything in use
              const start = (lay.lastCluster(usedBound(lay)) + 1) * cs;
              expect(await eng.refcountArea(start, o.additional, true, 0, 0)).toBe(lay.refcountArea(start, o.additional, true, 0, 0));
            }
            expect(eng.freeClusterIndex).toBe(lay.freeClusterIndex);
            expect(eng.tableOffset).toBe(lay.reftableOffset);
          }
          expect([...eng.table]).toEqual(lay.reftable);
          const bound = usedBound(lay);
          expect(await eng.lastUsedCluster(bound)).toBe(lay.lastCluster(bound));
          for (let ci = 0; ci < bound / cs; ci++) expect(await eng.getRefcount(ci)).toBe(lay.getRefcount(ci));
        },
      ),
      { numRuns: 150 },
    );
  });
});
