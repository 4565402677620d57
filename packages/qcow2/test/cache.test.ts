/** TableCache: LRU eviction at safe points, write-back of dirty tables, dependency order. */
import { describe, expect, it } from 'vitest';
import { TableCache, type CacheHooks } from '../src/engine/cache.js';

function recorder(log: string[], name: string): CacheHooks {
  return {
    load: async (offset, into) => {
      log.push(`${name}:load:${offset}`);
      into.fill(offset & 0xff);
    },
    store: async (offset, data) => {
      log.push(`${name}:store:${offset}:${data[0]}`);
    },
    sync: async () => {
      log.push(`${name}:sync`);
    },
  };
}

describe('TableCache', () => {
  it('loads once, evicts the least recently used beyond capacity, writing dirty tables first', async () => {
    const log: string[] = [];
    const c = new TableCache(8, 2, recorder(log, 'c'));
    const a = await c.get(1);
    await c.get(2);
    await c.get(1); // hit: 1 becomes most recently used
    a[0] = 42;
    c.markDirty(1);
    await c.get(3);
    expect(c.size).toBe(3); // never evicts inside an operation
    await c.evict();
    expect(c.size).toBe(2);
    expect(c.has(2)).toBe(false);
    expect(log).toEqual(['c:load:1', 'c:load:2', 'c:load:3']);
    await c.get(4);
    await c.evict(); // 1 is the LRU now and dirty: written before it goes
    expect(log.slice(3)).toEqual(['c:load:4', 'c:store:1:42']);
    expect(c.has(1)).toBe(false);
  });

  it('peek answers held tables only, and counts as a use in the LRU order exactly as get does', async () => {
    const log: string[] = [];
    const c = new TableCache(8, 2, recorder(log, 'c'));
    expect(c.peek(1)).toBeUndefined();
    await c.get(1);
    await c.get(2);
    expect(c.peek(1)).toBeDefined(); // 1 becomes most recently used
    expect(c.peek(1)).toBeDefined(); // already the most recent: order unchanged
    await c.get(3);
    c.peek(1);
    await c.evict();
    expect([c.has(1), c.has(2), c.has(3)]).toEqual([true, false, true]);
    // After another table moved to the end, peeking 1 moves it back (the shortcut must not stick).
    await c.get(3);
    c.peek(1);
    await c.get(4);
    await c.evict();
    expect([c.has(1), c.has(3), c.has(4)]).toEqual([true, false, true]);
    expect(log).toEqual(['c:load:1', 'c:load:2', 'c:load:3', 'c:load:4']);
  });

  it('trySetDependency sets a dependency that needs no flush, and refuses one that does', async () => {
    const log: string[] = [];
    const a = new TableCache(8, 4, recorder(log, 'a'));
    const b = new TableCache(8, 4, recorder(log, 'b'));
    expect(a.trySetDependency(a)).toBe(true);
    expect(a.trySetDependency(b)).toBe(true);
    expect(a.trySetDependency(b)).toBe(true);
    // b depending on a would build a cycle: only setDependency (which flushes) may do that.
    expect(b.trySetDependency(a)).toBe(false);
    a.getEmpty(1)[0] = 5;
    a.markDirty(1);
    b.getEmpty(2)[0] = 6;
    b.markDirty(2);
    await a.flush();
    expect(log).toEqual(['b:store:2:6', 'b:sync', 'a:store:1:5', 'a:sync']);
  });

  it('flushes the tables it depends on (and syncs) before its own', async () => {
    const log: string[] = [];
    const refcounts = new TableCache(8, 4, recorder(log, 'rb'));
    const l2 = new TableCache(8, 4, recorder(log, 'l2'));
    refcounts.getEmpty(100)[0] = 1;
    refcounts.markDirty(100);
    l2.getEmpty(200)[0] = 2;
    l2.markDirty(200);
    await l2.setDependency(refcounts);
    l2.setDependsOnFlush();
    await l2.flush();
    expect(log).toEqual(['rb:store:100:1', 'rb:sync', 'l2:sync', 'l2:store:200:2', 'l2:sync']);
    log.length = 0;
    await l2.flush(); // nothing dirty: no I/O at all
    expect(log).toEqual([]);
  });

  it('discard drops a table without writing it', async () => {
    const log: string[] = [];
    const c = new TableCache(8, 1, recorder(log, 'c'));
    c.getEmpty(5);
    c.markDirty(5);
    c.discard(5);
    await c.flush();
    expect(log).toEqual([]);
  });
});
