/**
 * A bounded cache of fixed-size blocks of a remote file, least recently used first out. An
 * entry is a promise, so concurrent readers of a block share one request; entries still in
 * flight are never evicted (they are bounded by the requests in flight instead).
 */

interface Entry {
  data: Promise<Uint8Array>;
  /** Set once `data` has resolved: the entry may be evicted. */
  settled: boolean;
  bytes: number;
}

/** Blocks by index; `maxBytes` bounds the settled entries' bytes. */
export class BlockCache {
  readonly #entries = new Map<number, Entry>();
  readonly #maxBytes: number;
  #bytes = 0;

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  /** The block's data, or its request in flight; marks it most recently used. */
  get(index: number): Promise<Uint8Array> | undefined {
    const entry = this.#entries.get(index);
    if (entry === undefined) return undefined;
    this.#entries.delete(index);
    this.#entries.set(index, entry);
    return entry.data;
  }

  /** True when the block is cached or being fetched (without touching its age). */
  has(index: number): boolean {
    return this.#entries.has(index);
  }

  /**
   * Adds a block whose bytes `data` will deliver (`bytes` long); a failed fetch removes it, so
   * the next read asks again.
   */
  put(index: number, data: Promise<Uint8Array>, bytes: number): void {
    const entry: Entry = { data, settled: false, bytes };
    this.#entries.set(index, entry);
    data.then(
      () => {
        if (this.#entries.get(index) !== entry) return;
        entry.settled = true;
        this.#bytes += bytes;
        this.#evict();
      },
      () => {
        if (this.#entries.get(index) === entry) this.#entries.delete(index);
      },
    );
  }

  /** Drops everything (after an error that makes every cached byte suspect). */
  clear(): void {
    this.#entries.clear();
    this.#bytes = 0;
  }

  #evict(): void {
    if (this.#bytes <= this.#maxBytes) return;
    for (const [index, entry] of this.#entries) {
      if (this.#bytes <= this.#maxBytes) break;
      if (!entry.settled) continue;
      this.#entries.delete(index);
      this.#bytes -= entry.bytes;
    }
  }
}
