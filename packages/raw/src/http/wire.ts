/**
 * A small HTTP/1.1 client over node:net for HttpDevice's plain-http requests. The kernel reads
 * a range's body straight into the caller's buffer (net's `onread` with a buffer chosen per
 * read): no HTTP parser runs over the body, no 64 KiB chunk is allocated, emitted and copied.
 * Over node:http those three cost ~0.5 s of CPU per GiB here, more than the decompression of
 * the qcow2 being read.
 *
 * It speaks only what range reads need: GET and HEAD, answers framed by Content-Length (or
 * bodiless), keep-alive connections pooled per origin. An answer it does not take (chunked, a
 * body ended by closing, folded headers) is reported as {@link WireUnsupported}: the caller asks
 * again through node:http, which takes anything.
 */
import net from 'node:net';

/** Thrown for an answer this client does not read; the request is safe to make again. */
export class WireUnsupported extends Error {}

/** A response's headers by lower-case name, repeated ones joined with ", " (as fetch does). */
export class WireHeaders {
  readonly #map: Map<string, string>;
  constructor(map: Map<string, string>) {
    this.#map = map;
  }
  get(name: string): string | null {
    return this.#map.get(name.toLowerCase()) ?? null;
  }
  entries(): IterableIterator<[string, string]> {
    return this.#map.entries();
  }
}

/** What the answer's head said. */
export interface WireAnswer {
  status: number;
  headers: WireHeaders;
  body: WireBody;
}

/** Bytes of an answer's head first buffered; it may grow to HEAD_MAX. */
const HEAD_START = 16 * 1024;
/** Longest head accepted (curl's CURL_MAX_HTTP_HEADER is 100 KiB; servers send far less). */
const HEAD_MAX = 96 * 1024;
/** A body read through getReader() comes in pieces of at most this. */
const READER_PIECE = 1024 * 1024;

const CRLFCRLF = Buffer.from('\r\n\r\n');
const STATUS_LINE = /^HTTP\/1\.([01]) (\d{3})(?: .*)?$/;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

interface Parsed {
  status: number;
  headers: Map<string, string>;
  length: number;
  keepAlive: boolean;
}

/**
 * The body of one answer: `fill` reads it whole into a buffer (-1 when it is longer than the
 * buffer), `getReader` piece by piece, `cancel` drops it (and with it the connection, unless the
 * body was already read).
 */
export class WireBody {
  // Arrow properties: range-request.ts calls `fill` detached from its body.
  readonly fill: (into: Uint8Array, progress: (bytes: number) => void) => Promise<number>;
  readonly cancel: () => Promise<void>;
  readonly getReader: () => { read: () => Promise<{ done: boolean; value: Uint8Array }>; cancel: () => Promise<void>; releaseLock: () => void };
  constructor(conn: Connection) {
    this.fill = (into, progress) => conn.fill(this, into, progress);
    this.cancel = async () => conn.cancel(this);
    this.getReader = () => ({
      read: async () => {
        const left = conn.left(this);
        if (left === 0) return { done: true, value: new Uint8Array(0) };
        const piece = new Uint8Array(Math.min(left, READER_PIECE));
        const got = await conn.receive(this, piece, () => undefined);
        return { done: got === 0, value: piece.subarray(0, got) };
      },
      cancel: this.cancel,
      releaseLock: () => undefined,
    });
  }
}

/**
 * One connection, carrying one request at a time. Its read buffer is chosen before every read
 * (`#nextBuffer`): the head buffer while a head is awaited, the caller's buffer while a body is.
 */
class Connection {
  readonly socket: net.Socket;
  /** Set once the connection carried an answer: a failure before any byte may be a close it raced. */
  reused = false;
  #head = Buffer.allocUnsafe(HEAD_START);
  /** Bytes in #head: the head being read, or (after it) the body bytes that came with it. */
  #headLen = 0;
  #state: 'idle' | 'head' | 'wait' | 'body' | 'closed' = 'idle';
  /** Bytes of the answer's body not yet handed to a caller. */
  #left = 0;
  #keepAlive = false;
  #body: WireBody | undefined;
  /** While reading a head: the request's method and how the head is delivered. */
  #method = 'GET';
  #onHead: { resolve: (a: WireAnswer) => void; reject: (e: unknown) => void } | undefined;
  /** While reading a body: where it goes and who waits for it. */
  #into: Uint8Array | undefined;
  #pos = 0;
  #want = 0;
  #intoGiven = false;
  #onBody: { resolve: (n: number) => void; reject: (e: unknown) => void; progress: (n: number) => void } | undefined;
  /** Any byte of the current answer arrived. */
  #received = false;
  /** Why the connection ended, if by an error. */
  #error: Error | undefined;
  /** The request's AbortSignal (the stall timeout): it ends the connection, head or body. */
  #signal: AbortSignal | undefined;
  readonly #abort = (): void => this.destroy();
  readonly #release: (conn: Connection) => void;

  constructor(host: string, port: number, release: (conn: Connection) => void) {
    this.#release = release;
    this.socket = net.connect({ host, port, noDelay: true, onread: { buffer: () => this.#nextBuffer(), callback: (n, buf) => this.#onRead(n, buf) } });
    this.socket.on('error', (err) => this.#fail(err));
    this.socket.on('end', () => this.#fail(undefined));
    this.socket.on('close', () => this.#fail(undefined));
  }

  get idle(): boolean {
    return this.#state === 'idle';
  }

  /** Sends a request and resolves with its answer's head. */
  request(method: string, text: string, signal: AbortSignal | undefined): Promise<WireAnswer> {
    return new Promise((resolve, reject) => {
      this.#state = 'head';
      this.#method = method;
      this.#received = false;
      this.#onHead = { resolve, reject };
      this.#signal = signal;
      signal?.addEventListener('abort', this.#abort, { once: true });
      // Reading may have been paused by the last answer's end.
      this.socket.resume();
      this.socket.write(text);
    });
  }

  #unwatch(): void {
    this.#signal?.removeEventListener('abort', this.#abort);
    this.#signal = undefined;
  }

  destroy(): void {
    this.socket.destroy();
    this.#fail(undefined);
  }

  left(body: WireBody): number {
    return body === this.#body ? this.#left : 0;
  }

  fill(body: WireBody, into: Uint8Array, progress: (n: number) => void): Promise<number> {
    if (body !== this.#body) return Promise.resolve(0);
    if (this.#left > into.length) {
      this.destroy();
      return Promise.resolve(-1);
    }
    return this.receive(body, into, progress);
  }

  /** Reads the next min(left, into.length) body bytes into `into`; fewer when the connection ends. */
  receive(body: WireBody, into: Uint8Array, progress: (n: number) => void): Promise<number> {
    if (this.#state === 'closed') return this.#error !== undefined ? Promise.reject(this.#error) : Promise.resolve(0);
    if (body !== this.#body || this.#left === 0) return Promise.resolve(0);
    return new Promise((resolve, reject) => {
      this.#into = into;
      this.#want = Math.min(this.#left, into.length);
      this.#onBody = { resolve, reject, progress };
      // The body bytes that came with the head first.
      const early = Math.min(this.#headLen, this.#want);
      this.#pos = early;
      if (early > 0) {
        into.set(this.#head.subarray(0, early));
        this.#head.copyWithin(0, early, this.#headLen);
        this.#headLen -= early;
        this.#left -= early;
        progress(early);
      }
      this.#state = 'body';
      if (this.#pos === this.#want) this.#bodyDone();
      else this.socket.resume();
    });
  }

  cancel(body: WireBody): void {
    if (body === this.#body && this.#left > 0) this.destroy();
  }

  #nextBuffer(): Uint8Array {
    // Never a zero-length read buffer (it would read as the end of the stream).
    if (this.#headLen === this.#head.length) this.#grow(this.#head.length * 2);
    this.#intoGiven = this.#state === 'body' && this.#headLen === 0;
    if (this.#intoGiven) return this.#into!.subarray(this.#pos, this.#want);
    return this.#head.subarray(this.#headLen);
  }

  #onRead(n: number, buf: Uint8Array): boolean {
    this.#received = true;
    if (this.#state === 'body') {
      if (!this.#intoGiven) {
        // The first read after a pause went into the head buffer.
        const take = Math.min(n, this.#want - this.#pos);
        this.#into!.set(buf.subarray(0, take), this.#pos);
        if (take < n) {
          this.#protocolError('the server sent more than the answer announced');
          return false;
        }
      }
      this.#pos += n;
      this.#left -= n;
      this.#onBody!.progress(n);
      if (this.#pos === this.#want) this.#bodyDone();
      return !this.#waiting();
    }
    if (this.#state !== 'head' && this.#state !== 'wait') {
      this.#protocolError('the server sent bytes nobody asked for');
      return false;
    }
    if (buf.buffer !== this.#head.buffer || buf.byteOffset !== this.#head.byteOffset + this.#headLen) {
      // The read went where an earlier state pointed (the head buffer before the last body's
      // bytes were taken from it): move it to the end of what #head holds.
      if (this.#headLen + n > this.#head.length) this.#grow(this.#headLen + n);
      this.#head.set(buf.subarray(0, n), this.#headLen);
    }
    this.#headLen += n;
    if (this.#state === 'wait') return false;
    return this.#parseHeads();
  }

  /** Takes every complete head in #head (1xx ones are skipped); false pauses reading. */
  #parseHeads(): boolean {
    for (;;) {
      const end = this.#head.subarray(0, this.#headLen).indexOf(CRLFCRLF);
      if (end < 0) {
        if (this.#headLen < this.#head.length) return true;
        if (this.#head.length >= HEAD_MAX) {
          this.#protocolError(`the answer's head is longer than ${HEAD_MAX} bytes`);
          return false;
        }
        this.#grow(Math.min(this.#head.length * 2, HEAD_MAX));
        return true;
      }
      let parsed: Parsed | 'informational';
      try {
        parsed = parseHead(this.#head.toString('latin1', 0, end), this.#method);
      } catch (err) {
        this.#failHead(err);
        return false;
      }
      this.#head.copyWithin(0, end + 4, this.#headLen);
      this.#headLen -= end + 4;
      if (parsed === 'informational') continue;
      const onHead = this.#onHead!;
      this.#onHead = undefined;
      this.#left = parsed.length;
      this.#keepAlive = parsed.keepAlive;
      const body = new WireBody(this);
      this.#body = body;
      if (this.#left === 0) this.#answerDone();
      else this.#state = 'wait';
      onHead.resolve({ status: parsed.status, headers: new WireHeaders(parsed.headers), body });
      return this.#state === 'head';
    }
  }

  /** A larger head buffer holding what #head holds. */
  #grow(size: number): void {
    const grown = Buffer.allocUnsafe(size);
    this.#head.copy(grown, 0, 0, this.#headLen);
    this.#head = grown;
  }

  /** Between a body's pieces: reading pauses until the caller asks for more. */
  #waiting(): boolean {
    return this.#state === 'wait';
  }

  #bodyDone(): void {
    const onBody = this.#onBody!;
    this.#onBody = undefined;
    this.#into = undefined;
    if (this.#left === 0) this.#answerDone();
    else this.#state = 'wait';
    onBody.resolve(this.#pos);
  }

  /** The answer was read whole: the connection goes back to its pool, or is closed. */
  #answerDone(): void {
    this.#body = undefined;
    this.#unwatch();
    if (!this.#keepAlive || this.#headLen > 0) {
      this.destroy();
      return;
    }
    this.#state = 'idle';
    this.reused = true;
    this.#release(this);
  }

  #failHead(err: unknown): void {
    const onHead = this.#onHead;
    this.#onHead = undefined;
    this.socket.destroy();
    this.#state = 'closed';
    onHead?.reject(err);
  }

  #protocolError(text: string): void {
    const err = new Error(`Weird server reply: ${text}`);
    this.socket.destroy();
    this.#fail(err);
  }

  /** The connection ended (err undefined: closed): whoever waits learns it once. */
  #fail(err: Error | undefined): void {
    const was = this.#state;
    this.#state = 'closed';
    if (was === 'closed') return;
    this.#error = err;
    this.#unwatch();
    this.#release(this);
    const onHead = this.#onHead;
    const onBody = this.#onBody;
    this.#onHead = undefined;
    this.#onBody = undefined;
    if (onHead !== undefined) {
      // curl's CURLE_GOT_NOTHING; a pooled connection the server closed is tried again.
      const e = err ?? new Error('Empty reply from server');
      if (this.reused && !this.#received) onHead.reject(new WireStale(e));
      else onHead.reject(e);
    }
    // A body cut short resolves with what arrived: the caller names the missing bytes.
    if (onBody !== undefined) {
      if (err !== undefined) onBody.reject(err);
      else onBody.resolve(this.#pos);
    }
  }
}

/** A pooled connection failed before its answer's first byte: safe to ask on a fresh one. */
export class WireStale extends Error {
  constructor(readonly failure: Error) {
    super(failure.message);
  }
}

/** Parses a head (without its closing CRLFCRLF): its framing, or 'informational' for 1xx. */
function parseHead(text: string, method: string): Parsed | 'informational' {
  const lines = text.split('\r\n');
  const m = STATUS_LINE.exec(lines[0]!);
  if (m === null) throw new Error(`Weird server reply: ${JSON.stringify(lines[0]!.slice(0, 80))}`);
  const minor = Number(m[1]);
  const status = Number(m[2]);
  if (status === 101) throw new WireUnsupported('101 Switching Protocols');
  if (status < 200) return 'informational';
  const headers = new Map<string, string>();
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(':');
    if (line[0] === ' ' || line[0] === '\t') throw new WireUnsupported('a folded header line');
    const name = line.slice(0, colon).toLowerCase();
    if (colon <= 0 || !TOKEN.test(name)) throw new Error(`Weird server reply: header line ${JSON.stringify(line.slice(0, 80))}`);
    const value = line.slice(colon + 1).trim();
    const had = headers.get(name);
    headers.set(name, had === undefined ? value : `${had}, ${value}`);
  }
  const connection = (headers.get('connection') ?? '').toLowerCase().split(',').map((s) => s.trim());
  const keepAlive = minor === 1 ? !connection.includes('close') : connection.includes('keep-alive');
  if (method === 'HEAD' || status === 204 || status === 304) return { status, headers, length: 0, keepAlive };
  if (headers.has('transfer-encoding')) throw new WireUnsupported('Transfer-Encoding');
  const length = headers.get('content-length');
  if (length === undefined) throw new WireUnsupported('a body without Content-Length');
  if (!/^\d{1,15}$/.test(length)) throw new Error(`Weird server reply: Content-Length ${JSON.stringify(length.slice(0, 40))}`);
  return { status, headers, length: Number(length), keepAlive };
}

/** Header names and values as node:http accepts them: no line breaks smuggled into a request. */
function headerLines(headers: Readonly<Record<string, string>>): string {
  let text = '';
  for (const [name, value] of Object.entries(headers)) {
    if (!TOKEN.test(name)) throw new TypeError(`Invalid header name: ${JSON.stringify(name)}`);
    if (/[\r\n\0]/.test(value)) throw new TypeError(`Invalid character in header content ["${name}"]`);
    text += `${name}: ${value}\r\n`;
  }
  return text;
}

/**
 * Keep-alive connections to plain-http origins, at most one request on each at a time. An
 * abort (the stall timeout) destroys the request's connection.
 */
export class WirePool {
  readonly #idle = new Map<string, Connection[]>();
  readonly #all = new Set<Connection>();
  #closed = false;

  /** Makes a GET or HEAD request of `url` (http:) and resolves with its answer's head. */
  async request(url: URL, method: string, headers: Readonly<Record<string, string>>, signal: AbortSignal | undefined): Promise<WireAnswer> {
    const host = url.host;
    const text = `${method} ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${host}\r\n${headerLines(headers)}\r\n`;
    signal?.throwIfAborted();
    // A connection made after close() would never be closed, and keep the process alive.
    if (this.#closed) throw new Error('the connection pool is closed');
    for (;;) {
      const conn = this.#take(url);
      try {
        return await conn.request(method, text, signal);
      } catch (err) {
        if (err instanceof WireStale && !signal?.aborted) continue;
        throw err instanceof WireStale ? err.failure : err;
      }
    }
  }

  /** Closes every connection; later requests fail. */
  close(): void {
    this.#closed = true;
    for (const conn of this.#all) conn.destroy();
    this.#all.clear();
    this.#idle.clear();
  }

  #take(url: URL): Connection {
    const idle = this.#idle.get(url.host);
    for (let conn = idle?.pop(); conn !== undefined; conn = idle?.pop()) {
      if (conn.idle) return conn;
    }
    const port = url.port === '' ? 80 : Number(url.port);
    const hostname = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const key = url.host;
    const conn = new Connection(hostname, port, (c) => {
      if (!c.idle) {
        this.#all.delete(c);
        const list = this.#idle.get(key);
        const i = list?.indexOf(c) ?? -1;
        if (i >= 0) list!.splice(i, 1);
        return;
      }
      let list = this.#idle.get(key);
      if (list === undefined) this.#idle.set(key, (list = []));
      list.push(c);
    });
    this.#all.add(conn);
    return conn;
  }
}
