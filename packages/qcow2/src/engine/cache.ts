/**
 * A bounded LRU cache of metadata tables (L2 tables, refcount blocks), generic over what the
 * tables are: it only knows offsets, byte buffers and the load / store / sync hooks it is given.
 *
 * Ordering, as qemu's qcow2-cache.c: a cache may depend on another (L2 tables on refcount
 * blocks when clusters were allocated; refcount blocks on L2 tables when clusters were freed),
 * in which case every dirty table of the other cache is written and synced before any of this
 * cache's tables reaches the disk. A cache may also depend on a device flush (data written
 * before metadata that points at it).
 *
 * Eviction happens only at safe points (`evict()`), never inside `get`: callers may keep a
 * table's buffer across awaits within one operation, and the owner calls `evict()` between
 * operations, so memory stays bounded by `capacity` plus what one operation touches.
 */

/** How a cache reaches its tables. */
export interface CacheHooks {
  /** Fills `into` with the table stored at `offset`. */
  load(offset: number, into: Uint8Array): Promise<void>;
  /** Writes a table back to `offset`. */
  store(offset: number, data: Uint8Array): Promise<void>;
  /** Makes the stores so far durable (a device flush). */
  sync(): Promise<void>;
}

interface Entry {
  data: Uint8Array;
  dirty: boolean;
}

/** An LRU cache of fixed-size tables keyed by their host offset. */
export class TableCache {
  readonly tableSize: number;
  readonly capacity: number;
  readonly #hooks: CacheHooks;
  // Map iteration order is insertion order: re-inserting on use keeps the LRU at the front.
  readonly #entries = new Map<number, Entry>();
  /** The entry last moved to the end of `#entries` by peek (the end may have moved since). */
  #recent: Entry | undefined;
  #dependency: TableCache | undefined;
  #dependsOnFlush = false;
  /** Tables were stored since the last completed sync (a failed sync leaves them unordered). */
  #unsynced = false;

  constructor(tableSize: number, capacity: number, hooks: CacheHooks) {
    this.tableSize = tableSize;
    this.capacity = Math.max(1, capacity);
    this.#hooks = hooks;
  }

  /** Number of tables held. */
  get size(): number {
    return this.#entries.size;
  }

  /** True when the table at `offset` is held. */
  has(offset: number): boolean {
    return this.#entries.has(offset);
  }

  /** True when any held table is dirty. */
  get dirty(): boolean {
    for (const e of this.#entries.values()) if (e.dirty) return true;
    return false;
  }

  /** The table at `offset`, loaded on a miss. The buffer stays valid until the next `evict`. */
  async get(offset: number): Promise<Uint8Array> {
    const hit = this.#entries.get(offset);
    if (hit !== undefined) {
      this.#entries.delete(offset);
      this.#set(offset, hit);
      return hit.data;
    }
    const data = new Uint8Array(this.tableSize);
    await this.#hooks.load(offset, data);
    // Another load of the same table may have finished meanwhile (concurrent readers): keep one.
    const raced = this.#entries.get(offset);
    if (raced !== undefined) return raced.data;
    this.#set(offset, { data, dirty: false });
    return data;
  }

  /** The table at `offset` if it is held (counted as a use, as `get`), without awaiting. */
  peek(offset: number): Uint8Array | undefined {
    const hit = this.#entries.get(offset);
    if (hit === undefined) return undefined;
    // Already the most recent entry (a walk over one block): the re-insertion would change nothing.
    if (this.#recent !== hit) {
      this.#entries.delete(offset);
      this.#set(offset, hit);
    }
    return hit.data;
  }

  /** A zero-filled table for `offset` without reading it (a freshly allocated table). */
  getEmpty(offset: number): Uint8Array {
    const old = this.#entries.get(offset);
    if (old !== undefined) {
      old.data.fill(0);
      this.#entries.delete(offset);
      this.#set(offset, old);
      return old.data;
    }
    const data = new Uint8Array(this.tableSize);
    this.#set(offset, { data, dirty: false });
    return data;
  }

  /** Marks the table at `offset` as changed; `data` re-attaches a buffer evicted meanwhile. */
  markDirty(offset: number, data?: Uint8Array): void {
    const e = this.#entries.get(offset);
    if (e !== undefined) {
      e.dirty = true;
      return;
    }
    if (data === undefined) throw new Error(`table cache: table ${offset} is not held`);
    this.#set(offset, { data, dirty: true });
  }

  /** Puts an entry last in LRU order. */
  #set(offset: number, e: Entry): void {
    this.#entries.set(offset, e);
    this.#recent = e;
  }

  /** Drops the table at `offset` without writing it (its cluster was freed). */
  discard(offset: number): void {
    this.#entries.delete(offset);
  }

  /** Before writing any table, write and sync every dirty table of `other` first. */
  async setDependency(other: TableCache): Promise<void> {
    if (other === this) return;
    // Never build a cycle or a chain (qemu's qcow2_cache_set_dependency): flush what the other
    // cache waits for now, and our old dependency if it is a different cache.
    if (other.#dependency !== undefined) await other.#flushDependency();
    if (this.#dependency !== undefined && this.#dependency !== other) await this.#flushDependency();
    this.#dependency = other;
  }

  /**
   * `setDependency` when it needs no flush (the usual case inside a bulk walk): true when the
   * dependency is now in place, false when the caller must await `setDependency`.
   */
  trySetDependency(other: TableCache): boolean {
    if (other === this) return true;
    if (other.#dependency !== undefined || (this.#dependency !== undefined && this.#dependency !== other)) return false;
    this.#dependency = other;
    return true;
  }

  async #flushDependency(): Promise<void> {
    const dep = this.#dependency;
    if (dep === undefined) return;
    await dep.flush();
    // Only once the other cache is on disk does this one stop waiting for it: after a failed
    // flush the rule still holds for the next attempt.
    if (this.#dependency === dep) this.#dependency = undefined;
  }

  /** Before writing any table, sync the device (data written before metadata pointing at it). */
  setDependsOnFlush(): void {
    this.#dependsOnFlush = true;
  }

  async #resolveDependencies(): Promise<void> {
    await this.#flushDependency();
    if (this.#dependsOnFlush) {
      await this.#hooks.sync();
      this.#dependsOnFlush = false;
    }
  }

  /** Writes every dirty table (dependencies first) without syncing. */
  async write(): Promise<void> {
    let any = false;
    for (const e of this.#entries.values()) if (e.dirty) any = true;
    if (!any) return;
    await this.#resolveDependencies();
    const dirty = [...this.#entries].filter(([, e]) => e.dirty).sort((a, b) => a[0] - b[0]);
    for (const [offset, e] of dirty) {
      e.dirty = false;
      try {
        await this.#hooks.store(offset, e.data);
      } catch (err) {
        e.dirty = true;
        throw err;
      }
      this.#unsynced = true;
    }
  }

  /**
   * Writes every dirty table and syncs — also when an earlier sync of stored tables failed,
   * so that whatever depends on this cache never reaches the disk in the same unordered batch.
   */
  async flush(): Promise<void> {
    await this.write();
    if (this.#unsynced) {
      await this.#hooks.sync();
      this.#unsynced = false;
    }
  }

  /** Drops least recently used tables beyond `capacity`, writing dirty ones first. */
  async evict(): Promise<void> {
    if (this.#entries.size <= this.capacity) return;
    let needWrite = false;
    let excess = this.#entries.size - this.capacity;
    for (const e of this.#entries.values()) {
      if (excess-- <= 0) break;
      if (e.dirty) needWrite = true;
    }
    // Writing all dirty tables at once keeps the ordering rules simple (and batches I/O).
    if (needWrite) await this.write();
    for (const [offset, e] of this.#entries) {
      if (this.#entries.size <= this.capacity) break;
      if (!e.dirty) this.#entries.delete(offset);
    }
  }

  /** Forgets every table (after a failed write, or when closing). Dirty tables are lost. */
  clear(): void {
    this.#entries.clear();
    this.#dependency = undefined;
    this.#dependsOnFlush = false;
    this.#unsynced = false;
  }
}
