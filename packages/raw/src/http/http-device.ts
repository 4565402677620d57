/**
 * HttpDevice: a read-only BlockDevice over an HTTP(S) URL, read with `Range:` requests through
 * global `fetch` (Node and browsers). Reads are cut into aligned blocks kept in a bounded cache;
 * the missing blocks of a read go out as few coalesced requests, several at once; each read
 * also asks for `readahead` bytes after it (as qemu's curl driver does), and reads that follow
 * each other get a read-ahead window that doubles up to `maxReadahead`, fetched in the
 * background while requests are free.
 */
import { HttpError, UsageError } from '../errors.js';
import { ReadOnlySource } from '../source-device.js';
import { BlockCache } from './block-cache.js';
import { defaultFetch } from './transport.js';
import { Lifetime, probeRemoteFile, readRange, type RemoteFile, type RequestSettings } from './range-request.js';

/** Options for {@link HttpDevice.open}. */
export interface HttpDeviceOptions {
  /** Bytes read after every read, in the same request (qemu's `readahead`; default 256 KiB). */
  readahead?: number;
  /** Seconds without an answer byte before a request fails (qemu's `timeout`; default 5; 0: never). */
  timeout?: number;
  /** Basic authentication (qemu's `username` / `password-secret`). */
  username?: string;
  password?: string;
  /** Check the server's certificate (qemu's `sslverify`; default true). */
  sslVerify?: boolean;
  /** A `Cookie:` header value (qemu's `cookie`). */
  cookie?: string;
  /** More request headers. */
  headers?: Readonly<Record<string, string>>;
  /** The fetch to use (default: one over node:http in Node, the platform's in a browser). */
  fetch?: typeof fetch;
  /** Cache and alignment unit (default 64 KiB). */
  blockSize?: number;
  /** Bytes of finished blocks kept (default 64 MiB). */
  cacheSize?: number;
  /** Requests in flight at once (default 6). */
  maxInFlight?: number;
  /** Largest single request (default 4 MiB). */
  maxRequest?: number;
  /** Largest read-ahead window of sequential reads (default 16 MiB). */
  maxReadahead?: number;
  /** Further attempts of a request after a retryable failure (default 3). */
  retries?: number;
  /** Milliseconds before the first retry, doubled for each next one (default 200). */
  backoff?: number;
  /**
   * The name the device goes by (what `map` prints as its file): qemu names a curl node with
   * strong options by a `json:` filename instead of its URL. Default: the URL opened.
   */
  filename?: string;
}

/** Sequential streams tracked at once (see HttpDevice's #streams). */
const MAX_STREAMS = 4;
/** Request buffers kept for reuse, per size, once no cached block and no reader holds them. */
const SPARES_PER_SIZE = 4;
/** The smallest request buffer (smaller requests get one this size). */
const MIN_BUFFER = 64 * 1024;

/**
 * One request's buffer, shared by the cache blocks that are slices of it: `refs` counts them,
 * the request while it runs, and the reads copying out of it. At 0 the buffer goes back to the
 * spares of its size: a fresh buffer per request cost a page fault per 4 KiB the socket wrote
 * into (~45 k per GiB of a compressed image read), which on this VM was also where most
 * run-to-run noise came from. Buffers come in powers of two (up to the largest request), so a
 * buffer is at most twice the bytes its blocks account for in the cache.
 */
interface Run {
  refs: number;
  buffer: Uint8Array | undefined;
}

/** Counts requests in flight and hands out free ones: reads queue, read-ahead never does. */
class RequestSlots {
  #free: number;
  readonly #waiting: (() => void)[] = [];
  constructor(count: number) {
    this.#free = count;
  }
  tryTake(): boolean {
    if (this.#free === 0) return false;
    this.#free--;
    return true;
  }
  async take(): Promise<void> {
    if (this.tryTake()) return;
    await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }
  give(): void {
    const next = this.#waiting.shift();
    if (next !== undefined) next();
    else this.#free++;
  }
}

function basicAuth(username: string, password: string): string {
  const bytes = new TextEncoder().encode(`${username}:${password}`);
  let text = '';
  for (const b of bytes) text += String.fromCharCode(b);
  return `Basic ${btoa(text)}`;
}

function positive(value: number | undefined, fallback: number, what: string): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < 1) throw new UsageError(`${what} must be a positive integer, got ${v}`);
  return v;
}

/**
 * A remote file read by byte ranges; writes, discards and resizes are refused. `close()` ends
 * the requests in flight (their reads fail with an HttpError) and the connections.
 */
export class HttpDevice extends ReadOnlySource {
  readonly #file: RemoteFile;
  readonly #settings: RequestSettings;
  readonly #cache: BlockCache<Run>;
  readonly #spares = new Map<number, Uint8Array[]>();
  readonly #slots: RequestSlots;
  readonly #block: number;
  readonly #readahead: number;
  readonly #maxReadahead: number;
  readonly #maxRequestBlocks: number;
  /** See HttpDeviceOptions.filename. */
  readonly filename: string;
  /**
   * The sequential streams being read (most recent last): where each one's last read ended and
   * its read-ahead window. Several, so that metadata reads between the data reads of a convert
   * (L2 tables elsewhere in the file) do not end the data's stream.
   */
  readonly #closeTransport: () => void;
  readonly #streams: { end: number; window: number; ahead: number }[] = [];
  /** Set once the server misbehaved or the file changed: every later read fails with it. */
  #failed: HttpError | undefined;
  private constructor(file: RemoteFile, settings: RequestSettings, options: HttpDeviceOptions, closeTransport: () => void) {
    super();
    this.#closeTransport = closeTransport;
    this.#file = file;
    this.#settings = settings;
    this.filename = options.filename ?? file.url;
    this.#block = positive(options.blockSize, 64 * 1024, 'blockSize');
    this.#cache = new BlockCache<Run>(options.cacheSize ?? 64 * 1024 * 1024, (run) => this.#unref(run));
    this.#slots = new RequestSlots(positive(options.maxInFlight, 6, 'maxInFlight'));
    this.#readahead = options.readahead ?? 256 * 1024;
    this.#maxReadahead = Math.max(this.#readahead, options.maxReadahead ?? 16 * 1024 * 1024);
    this.#maxRequestBlocks = Math.max(1, Math.floor(positive(options.maxRequest, 4 * 1024 * 1024, 'maxRequest') / this.#block));
  }

  /**
   * Opens `url`: asks for its size (HEAD, redirects followed) and requires byte-range support,
   * refusing a server without it rather than downloading the file whole. Errors are
   * HttpErrors with qemu's curl wording (`CURL: Error opening file: ...`).
   */
  static async open(url: string, options: HttpDeviceOptions = {}): Promise<HttpDevice> {
    const headers: Record<string, string> = { ...options.headers };
    if (options.cookie !== undefined) headers.Cookie = options.cookie;
    if (options.username !== undefined || options.password !== undefined) {
      headers.Authorization = basicAuth(options.username ?? '', options.password ?? '');
    }
    const transport = options.fetch !== undefined ? { fetch: options.fetch, close: () => undefined } : defaultFetch(options.sslVerify ?? true);
    const lifetime = new Lifetime();
    const settings: RequestSettings = {
      lifetime,
      fetch: transport.fetch,
      headers,
      timeoutMs: (options.timeout ?? 5) * 1000,
      retries: options.retries ?? 3,
      backoffMs: options.backoff ?? 200,
    };
    const close = (): void => {
      lifetime.end();
      transport.close();
    };
    let file: RemoteFile;
    try {
      file = await probeRemoteFile(url, settings);
    } catch (err) {
      close();
      const reason = err instanceof Error ? err.message : String(err);
      throw new HttpError(`CURL: Error opening file: ${reason}`, { url, status: err instanceof HttpError ? err.status : undefined, cause: err });
    }
    return new HttpDevice(file, settings, { ...options, filename: options.filename ?? url }, close);
  }

  /** The URL reads go to (after the open's redirects). */
  get url(): string {
    return this.#file.url;
  }

  size(): number {
    return this.#file.size;
  }

  protected async readInside(offset: number, into: Uint8Array): Promise<void> {
    if (this.#failed !== undefined) throw this.#failed;
    const size = this.#file.size;
    const end = offset + into.length;
    const B = this.#block;
    const first = Math.floor(offset / B);
    const last = Math.floor((end - 1) / B);
    const withReadahead = Math.floor((Math.min(end + this.#readahead, size) - 1) / B);
    const blocks = this.#blocks(first, withReadahead, true);
    this.#readAhead(offset, end, withReadahead);
    // Held until copied out: else a block could be evicted and its buffer reused meanwhile.
    const held = blocks.slice(0, last - first + 1);
    for (const b of held) b.owner.refs++;
    try {
      for (let i = first; i <= last; i++) {
        const data = await held[i - first]!.data;
        const blockStart = i * B;
        const from = Math.max(offset, blockStart);
        const to = Math.min(end, blockStart + data.length);
        into.set(data.subarray(from - blockStart, to - blockStart), from - offset);
      }
    } finally {
      for (const b of held) this.#unref(b.owner);
    }
  }

  /**
   * The blocks `first..last` (cached, in flight, or asked for now in coalesced runs). With
   * `urgent` false (read-ahead), a run is only started while a request is free, and the
   * returned list holds only what already existed or was started.
   */
  #blocks(first: number, last: number, urgent: boolean): { data: Promise<Uint8Array>; owner: Run }[] {
    const out: { data: Promise<Uint8Array>; owner: Run }[] = [];
    let i = first;
    while (i <= last) {
      const cached = this.#cache.get(i);
      if (cached !== undefined) {
        out.push(cached);
        i++;
        continue;
      }
      let count = 1;
      while (i + count <= last && count < this.#maxRequestBlocks && !this.#cache.has(i + count)) count++;
      if (!urgent && !this.#slots.tryTake()) break;
      // Held by each of its blocks and by the request.
      const owner: Run = { refs: count + 1, buffer: undefined };
      const run = this.#fetchRun(i, count, urgent, owner);
      for (let k = 0; k < count; k++) {
        const index = i + k;
        const offset = k * this.#block;
        const data = run.then((buf) => buf.subarray(offset, Math.min(buf.length, offset + this.#block)));
        // A failed read-ahead is nobody's error: the read that needs the block asks again.
        if (!urgent) data.catch(() => undefined);
        this.#cache.put(index, data, Math.min(this.#block, this.#file.size - index * this.#block), owner);
        out.push({ data, owner });
      }
      i += count;
    }
    return out;
  }

  /** One request for `count` blocks from block `first` (a slot is already held unless urgent). */
  async #fetchRun(first: number, count: number, urgent: boolean, owner: Run): Promise<Uint8Array> {
    if (urgent) await this.#slots.take();
    try {
      if (this.#failed !== undefined) throw this.#failed;
      const start = first * this.#block;
      const length = Math.min(count * this.#block, this.#file.size - start);
      const size = Math.min(2 ** Math.ceil(Math.log2(Math.max(length, MIN_BUFFER))), this.#maxRequestBlocks * this.#block);
      owner.buffer = this.#spares.get(size)?.pop() ?? new Uint8Array(size);
      const buf = owner.buffer.subarray(0, length);
      await readRange(this.#file, this.#settings, start, buf);
      return buf;
    } catch (err) {
      if (err instanceof HttpError && !err.retryable && this.#failed === undefined) {
        this.#failed = err;
        this.#cache.clear();
      }
      throw err;
    } finally {
      this.#slots.give();
      this.#unref(owner);
    }
  }

  #unref(run: Run): void {
    if (--run.refs > 0 || run.buffer === undefined) return;
    const size = run.buffer.length;
    let spares = this.#spares.get(size);
    if (spares === undefined) this.#spares.set(size, (spares = []));
    if (spares.length < SPARES_PER_SIZE) spares.push(run.buffer);
    run.buffer = undefined;
  }

  /** Sequential reads widen their stream's read-ahead window and fetch it in the background. */
  #readAhead(offset: number, end: number, fetchedTo: number): void {
    // Forward progress from near a stream's end (a re-read of the same bytes is not).
    const i = this.#streams.findIndex((st) => end > st.end && offset >= st.end - this.#block && offset <= st.end + st.window);
    const stream = i >= 0 ? this.#streams.splice(i, 1)[0]! : undefined;
    const window = stream !== undefined ? Math.min(Math.max(stream.window, this.#block) * 2, this.#maxReadahead) : this.#readahead;
    // `ahead`: the last block this stream's read-ahead asked for. The blocks before it are
    // cached or in flight, so a read looks only past it: a walk over the whole window for
    // every small read (a compressed cluster) cost more than the reads themselves.
    const next = { end, window, ahead: Math.max(fetchedTo, stream?.ahead ?? -1) };
    this.#streams.push(next);
    if (this.#streams.length > MAX_STREAMS) this.#streams.shift();
    if (stream === undefined) return;
    const to = Math.floor((Math.min(end + window, this.#file.size) - 1) / this.#block);
    if (to > next.ahead) next.ahead = next.ahead + this.#blocks(next.ahead + 1, to, false).length;
  }

  protected override closed(): void {
    this.#cache.clear();
    this.#closeTransport();
  }
}
