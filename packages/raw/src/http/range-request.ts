/**
 * One HTTP conversation at a time: finding a remote file's size and validators (the open), and
 * reading one byte range of it into a buffer with every answer checked — status, Content-Range,
 * length, ETag / Last-Modified — inside a stall timeout, retried with back-off when asking again
 * may help. Only global `fetch`, so it runs in Node and in browsers alike (no HTTP cache: an
 * answer must come from the server, where its validators mean something). Messages use curl's
 * wording, as qemu's curl driver prints them.
 */
import { HttpError } from '../errors.js';
import { decodeContentRange, encodeRange } from './content-range.js';

/** How requests are made: the fetch to use, extra headers, the stall timeout and retries. */
export interface RequestSettings {
  fetch: typeof fetch;
  /** Sent with every request (Authorization, Cookie, ...). */
  headers: Readonly<Record<string, string>>;
  /** Milliseconds without a response byte before a request is abandoned; 0: never. */
  timeoutMs: number;
  /** Further attempts after a retryable failure. */
  retries: number;
  /** Wait before the first retry, doubled for each next one. */
  backoffMs: number;
  /**
   * The device's lifetime: once it ends (at the close) requests in flight end, and none is
   * made or retried, so no connection outlives the device (a keep-alive one would keep the
   * process alive).
   */
  lifetime: Lifetime;
}

/**
 * Tells the requests and back-offs under way that their device closed. A set of callbacks, not
 * an AbortSignal with a listener per request: Node warns of a leak past 10 listeners on one
 * signal, and a device may have more requests than that in flight (maxInFlight).
 */
export class Lifetime {
  #ended = false;
  readonly #watchers = new Set<() => void>();

  get ended(): boolean {
    return this.#ended;
  }

  /** Calls `onEnd` at the end (at once if it is over); the returned function cancels that. */
  watch(onEnd: () => void): () => void {
    if (this.#ended) {
      onEnd();
      return () => undefined;
    }
    this.#watchers.add(onEnd);
    return () => this.#watchers.delete(onEnd);
  }

  end(): void {
    this.#ended = true;
    const watchers = [...this.#watchers];
    this.#watchers.clear();
    for (const onEnd of watchers) onEnd();
  }
}

/** What a request made after the device closed fails with. */
function closedError(url: string): HttpError {
  return new HttpError('The remote file was closed', { url });
}

/** What the open learnt of the file; every later answer must agree with it. */
export interface RemoteFile {
  /** The URL requests go to: the given one after redirects. */
  url: string;
  size: number;
  etag?: string;
  lastModified?: string;
}

/** Past the HTTP cache (the DOM's RequestInit has `cache`; Node's typings lack it). */
const NO_STORE = { cache: 'no-store' } as RequestInit;

/** Waits `ms`, or less when the lifetime ends meanwhile (no timer left to hold the process). */
function sleep(ms: number, lifetime: Lifetime): Promise<void> {
  return new Promise((resolve) => {
    let forget = (): void => undefined;
    const timer = setTimeout(() => {
      forget();
      resolve();
    }, ms);
    forget = lifetime.watch(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** curl's text for a failed status (CURLOPT_FAILONERROR); 5xx, 408 and 429 may pass with time. */
function statusError(url: string, status: number): HttpError {
  const retryable = status >= 500 || status === 408 || status === 429;
  return new HttpError(`The requested URL returned error: ${status}`, { url, status, retryable });
}

/** A network failure of fetch (or of reading its body) in curl's words; always retryable. */
function networkError(url: string, err: unknown, timedOut: { ms: number; bytes: number } | undefined): HttpError {
  if (timedOut !== undefined) {
    return new HttpError(`Operation timed out after ${timedOut.ms} milliseconds with ${timedOut.bytes} bytes received`, { url, retryable: true, cause: err });
  }
  if (err instanceof HttpError) return err;
  let code: unknown;
  for (let e: unknown = err; e instanceof Error && code === undefined; e = (e as { cause?: unknown }).cause) code = (e as { code?: unknown }).code;
  let host = url;
  let port = '';
  try {
    const u = new URL(url);
    host = u.hostname;
    port = u.port || (u.protocol === 'https:' ? '443' : '80');
  } catch {
    // keep the URL as it is
  }
  let text: string;
  if (code === 'ECONNREFUSED') text = `Failed to connect to ${host} port ${port}: Couldn't connect to server`;
  else if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') text = `Could not resolve host: ${host}`;
  else if (code === 'ECONNRESET') text = 'Recv failure: Connection reset by peer';
  else if (code === 'UND_ERR_SOCKET' || code === 'UND_ERR_CLOSED') text = 'transfer closed with outstanding read data remaining';
  else text = err instanceof Error ? (err.cause instanceof Error ? `${err.message}: ${err.cause.message}` : err.message) : String(err);
  return new HttpError(text, { url, retryable: true, cause: err });
}

/**
 * Runs `attempt` with a fresh AbortSignal that fires after `timeoutMs` without progress
 * (`progress()` restarts the clock), turning the abort into curl's timeout message, or when
 * the device closes.
 */
async function withStallTimeout<T>(
  url: string,
  settings: RequestSettings,
  attempt: (signal: AbortSignal, progress: (bytes: number) => void) => Promise<T>,
): Promise<T> {
  const { timeoutMs, lifetime } = settings;
  if (lifetime.ended) throw closedError(url);
  const controller = new AbortController();
  const forget = lifetime.watch(() => controller.abort());
  let timer: ReturnType<typeof setTimeout> | undefined;
  let received = 0;
  let timedOut: { ms: number; bytes: number } | undefined;
  const arm = (): void => {
    if (timeoutMs <= 0) return;
    if (timer !== undefined) clearTimeout(timer);
    timer = setTimeout(() => {
      timedOut = { ms: timeoutMs, bytes: received };
      controller.abort();
    }, timeoutMs);
  };
  arm();
  try {
    return await attempt(controller.signal, (bytes) => {
      received += bytes;
      arm();
    });
  } catch (err) {
    throw lifetime.ended ? closedError(url) : networkError(url, err, timedOut);
  } finally {
    if (timer !== undefined) clearTimeout(timer);
    forget();
  }
}

/** Retries `op` on retryable HttpErrors, waiting backoffMs, 2×, 4×, ... between attempts. */
async function withRetries<T>(settings: RequestSettings, op: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await op();
    } catch (err) {
      if (!(err instanceof HttpError) || !err.retryable || attempt >= settings.retries) throw err;
      // The next attempt fails at once if the device closed meanwhile.
      await sleep(settings.backoffMs * 2 ** attempt, settings.lifetime);
    }
  }
}

/** The answer's validators must be the open's: else the file changed under us. */
function checkValidators(file: RemoteFile, res: Response): void {
  const etag = res.headers.get('etag') ?? undefined;
  const lastModified = res.headers.get('last-modified') ?? undefined;
  if ((file.etag !== undefined && etag !== file.etag) || (file.etag === undefined && file.lastModified !== undefined && lastModified !== file.lastModified)) {
    const was = file.etag !== undefined ? `ETag ${file.etag}, now ${etag ?? 'none'}` : `Last-Modified ${file.lastModified}, now ${lastModified ?? 'none'}`;
    throw new HttpError(`The remote file changed while it was open (${was})`, { url: file.url });
  }
}

/**
 * qemu's curl open: a HEAD request (redirects followed) that must report the size and
 * `Accept-Ranges: bytes`. A server that refuses HEAD (403, 405, 501: presigned URLs often do)
 * is asked for byte 0 instead, whose 206 answer proves ranges and gives the size.
 */
export async function probeRemoteFile(url: string, settings: RequestSettings): Promise<RemoteFile> {
  return withRetries(settings, () =>
    withStallTimeout(url, settings, async (signal) => {
      const head = await settings.fetch(url, { method: 'HEAD', headers: { ...settings.headers, 'Accept-Encoding': 'identity' }, ...NO_STORE, redirect: 'follow', signal });
      if (head.ok) {
        const length = head.headers.get('content-length');
        const size = length === null || !/^\d+$/.test(length.trim()) ? undefined : Number(length);
        if (size === undefined || !Number.isSafeInteger(size)) throw new HttpError("Server didn't report file size.", { url });
        const ranges = (head.headers.get('accept-ranges') ?? '').split(',').map((s) => s.trim().toLowerCase());
        if (!ranges.includes('bytes')) throw new HttpError("Server does not support 'range' (byte ranges).", { url });
        return { url: head.url || url, size, etag: head.headers.get('etag') ?? undefined, lastModified: head.headers.get('last-modified') ?? undefined };
      }
      if (head.status !== 403 && head.status !== 405 && head.status !== 501) throw statusError(url, head.status);
      const res = await settings.fetch(url, { headers: { ...settings.headers, Range: encodeRange(0, 0), 'Accept-Encoding': 'identity' }, ...NO_STORE, redirect: 'follow', signal });
      await res.body?.cancel().catch(() => undefined);
      if (res.status === 200) throw new HttpError("Server does not support 'range' (byte ranges).", { url });
      if (res.status !== 206) throw statusError(url, res.status);
      const range = decodeContentRange(res.headers.get('content-range'));
      if (range?.total === undefined) throw new HttpError("Server didn't report file size.", { url });
      return { url: res.url || url, size: range.total, etag: res.headers.get('etag') ?? undefined, lastModified: res.headers.get('last-modified') ?? undefined };
    }),
  );
}

/**
 * Reads bytes `start ..< start + into.length` of `file` into `into`, in as many range requests
 * as the server's answers need (a server may send fewer bytes than asked: the rest is asked for
 * next). Each request is retried when that may help. Throws an HttpError when the server
 * ignores the range, answers another range, sends more than it announced, or changed the file.
 */
export async function readRange(file: RemoteFile, settings: RequestSettings, start: number, into: Uint8Array): Promise<void> {
  let done = 0;
  while (done < into.length) {
    done += await withRetries(settings, () => readOnce(file, settings, start + done, into.subarray(done)));
  }
}

/** One range request: the number of bytes it delivered into `into` (at least 1). */
async function readOnce(file: RemoteFile, settings: RequestSettings, start: number, into: Uint8Array): Promise<number> {
  const { url } = file;
  const last = start + into.length - 1;
  return withStallTimeout(url, settings, async (signal, progress) => {
    const headers = { ...settings.headers, Range: encodeRange(start, last), 'Accept-Encoding': 'identity' };
    const res = await settings.fetch(url, { headers, ...NO_STORE, redirect: 'follow', signal });
    if (res.status !== 206) {
      await res.body?.cancel().catch(() => undefined);
      if (res.status === 200) {
        throw new HttpError(`Server answered a range request with the whole file (status 200), refusing to download ${file.size} bytes`, { url, status: 200 });
      }
      if (res.status === 416) throw new HttpError(`The remote file changed while it was open (range ${start}-${last} not satisfiable)`, { url, status: 416 });
      throw statusError(url, res.status);
    }
    try {
      checkValidators(file, res);
      const range = decodeContentRange(res.headers.get('content-range'));
      if (range === undefined || range.start !== start || range.end > last) {
        throw new HttpError(`Server answered range ${start}-${last} with ${res.headers.get('content-range') ?? 'no Content-Range'}`, { url, status: 206 });
      }
      if (range.total !== undefined && range.total !== file.size) {
        throw new HttpError(`The remote file changed while it was open (size ${file.size}, now ${range.total})`, { url, status: 206 });
      }
      const want = range.end - range.start + 1;
      const got = await readBody(url, res, into.subarray(0, want), progress);
      if (got < want) {
        throw new HttpError(`transfer closed with ${want - got} bytes remaining to read`, { url, retryable: true });
      }
      return want;
    } catch (err) {
      await res.body?.cancel().catch(() => undefined);
      throw err;
    }
  });
}

/**
 * What a body may offer besides a reader (the Node transport's): copies it into `into` as it
 * arrives, reporting each chunk to `progress`; the bytes copied, or -1 when the body is longer
 * than `into` (the connection is then dropped).
 */
export type BodyFill = (into: Uint8Array, progress: (bytes: number) => void) => Promise<number>;

/** Copies the body into `into`; more bytes than `into` holds is an error (never silently cut). */
async function readBody(url: string, res: Response, into: Uint8Array, progress: (bytes: number) => void): Promise<number> {
  if (res.body === null) return 0;
  const fill = (res.body as { fill?: BodyFill }).fill;
  if (fill !== undefined) {
    const got = await fill(into, progress);
    if (got < 0) throw new HttpError(`Server sent more than the ${into.length} bytes of the range it announced`, { url, status: res.status });
    return got;
  }
  const reader = res.body.getReader();
  let pos = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return pos;
    if (pos + value.length > into.length) {
      await reader.cancel().catch(() => undefined);
      throw new HttpError(`Server sent more than the ${into.length} bytes of the range it announced`, { url, status: res.status });
    }
    into.set(value, pos);
    pos += value.length;
    progress(value.length);
  }
}
