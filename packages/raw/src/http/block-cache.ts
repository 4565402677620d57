/**
 * A bounded cache of fixed-size blocks of a remote file, least recently used first out. An
 * entry is a promise, so concurrent readers of a block share one request; entries still in
 * flight are never evicted (they are bounded by the requests in flight instead). Each entry
 * belongs to an owner (the request buffer it is a slice of), told when the entry leaves.
 */

interface Entry<T> {
  data: Promise<Uint8Array>;
  owner: T;
  /** Set once `data` has resolved: the entry may be evicted. */
  settled: boolean;
  /** Read since it was last passed over by an eviction (a second chance instead of a move). */
  recent: boolean;
  bytes: number;
}

/** Blocks by index; `maxBytes` bounds the settled entries' bytes; `drop` hears of every removal. */
export class BlockCache<T> {
  readonly #entries = new Map<number, Entry<T>>();
  readonly #maxBytes: number;
  readonly #drop: (owner: T) => void;
  #bytes = 0;

  constructor(maxBytes: number, drop: (owner: T) => void) {
    this.#maxBytes = maxBytes;
    this.#drop = drop;
  }

  /**
   * The block's data (or its request in flight) and owner; marks it recently used. A flag, not
   * a delete and re-insert: streaming reads touch every block many times, evictions are rare.
   */
  get(index: number): { data: Promise<Uint8Array>; owner: T } | undefined {
    const entry = this.#entries.get(index);
    if (entry === undefined) return undefined;
    entry.recent = true;
    return entry;
  }

  /** True when the block is cached or being fetched (without touching its age). */
  has(index: number): boolean {
    return this.#entries.has(index);
  }

  /**
   * Adds a block whose bytes `data` will deliver (`bytes` long); a failed fetch removes it, so
   * the next read asks again.
   */
  put(index: number, data: Promise<Uint8Array>, bytes: number, owner: T): void {
    const entry: Entry<T> = { data, owner, settled: false, recent: false, bytes };
    this.#entries.set(index, entry);
    data.then(
      () => {
        if (this.#entries.get(index) !== entry) return;
        entry.settled = true;
        this.#bytes += bytes;
        this.#evict();
      },
      () => {
        if (this.#entries.get(index) !== entry) return;
        this.#entries.delete(index);
        this.#drop(owner);
      },
    );
  }

  /** Drops everything (after an error that makes every cached byte suspect, or at close). */
  clear(): void {
    const owners = [...this.#entries.values()].map((e) => e.owner);
    this.#entries.clear();
    this.#bytes = 0;
    for (const owner of owners) this.#drop(owner);
  }

  /** Oldest first; an entry read since it was last passed over moves to the young end once. */
  #evict(): void {
    // Each entry is seen at most twice: once more after its second chance.
    let passes = 2 * this.#entries.size;
    for (const [index, entry] of this.#entries) {
      if (this.#bytes <= this.#maxBytes || passes-- <= 0) break;
      if (!entry.settled) continue;
      this.#entries.delete(index);
      if (entry.recent) {
        entry.recent = false;
        this.#entries.set(index, entry);
        continue;
      }
      this.#bytes -= entry.bytes;
      this.#drop(entry.owner);
    }
  }
}
