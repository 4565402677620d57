/**
 * The default fetch of HttpDevice in Node: a small fetch answering only what range-request.ts
 * asks of a Response (status, url, headers, a body read into a buffer). Plain http goes through
 * wire.ts (bodies read by the kernel into the caller's buffer); https, URLs with credentials
 * and answers wire.ts does not take go through node:http / node:https with keep-alive agents.
 * Global fetch (undici) costs twice node:http's CPU per byte here (241 MB of ranges: 0.8 s of
 * user time against 0.35 s), mostly in its web streams. The browser build takes
 * transport.browser.ts, the platform's fetch, instead.
 */
import http from 'node:http';
import https from 'node:https';
import type { BodyFill } from './range-request.js';
import { WireHeaders, WirePool, WireUnsupported } from './wire.js';

/** What a Response needs to be for range-request.ts. */
type Answer = Pick<Response, 'status' | 'ok' | 'url' | 'headers' | 'body'>;

/** A Response-like answer of `url`. */
function answer(url: URL, status: number, headers: WireHeaders, body: ReadableStream<Uint8Array>): Answer {
  return { status, ok: status >= 200 && status < 300, url: url.href, headers: headers as unknown as Headers, body };
}

/** Redirects followed, as fetch's limit. */
const MAX_REDIRECTS = 20;

/**
 * The body of a Node answer: what range-request.ts asks of a ReadableStream (getReader().read(),
 * cancel()), plus `fill`, which copies every chunk into the caller's buffer as it arrives.
 * fill is the fast way: a promise per body instead of one per socket chunk (an async iterator
 * over IncomingMessage cost ~30 µs a 64 KiB chunk here, the copy ~3 µs).
 */
function chunks(msg: http.IncomingMessage): ReadableStream<Uint8Array> & { fill: BodyFill } {
  let it: AsyncIterator<Buffer> | undefined;
  const cancel = async (): Promise<void> => {
    msg.destroy();
  };
  const reader = {
    read: async (): Promise<{ done: boolean; value: Uint8Array }> => {
      it ??= msg[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
      const r = await it.next();
      return r.done ? { done: true, value: new Uint8Array(0) } : { done: false, value: r.value };
    },
    cancel,
    releaseLock: () => undefined,
  };
  const fill: BodyFill = (into, progress) =>
    new Promise((resolve, reject) => {
      let pos = 0;
      let over = false;
      msg.on('data', (chunk: Buffer) => {
        if (over) return;
        if (pos + chunk.length > into.length) {
          over = true;
          msg.destroy();
          resolve(-1);
          return;
        }
        into.set(chunk, pos);
        pos += chunk.length;
        progress(chunk.length);
      });
      msg.on('end', () => resolve(pos));
      msg.on('error', (err) => (over ? undefined : reject(err)));
      msg.on('close', () => (msg.complete || over ? undefined : reject(new Error('connection closed before the body ended'))));
    });
  return { getReader: () => reader, cancel, fill } as unknown as ReadableStream<Uint8Array> & { fill: BodyFill };
}

/**
 * A fetch for HttpDevice over Node's own HTTP clients, with its own keep-alive agents, and the
 * function that closes their idle connections (at the device's close).
 */
export function defaultFetch(sslVerify = true): { fetch: typeof fetch; close: () => void } {
  // qemu's sslverify=off (CURLOPT_SSL_VERIFYPEER/HOST 0): certificates are not checked.
  const agents = { http: new http.Agent({ keepAlive: true }), https: new https.Agent({ keepAlive: true, rejectUnauthorized: sslVerify }) };
  const pool = new WirePool();
  /** Origins that sent an answer wire.ts does not take: node:http serves them from then on. */
  const odd = new Set<string>();
  const viaNode = (url: URL, init: RequestInit): Promise<Answer> =>
    new Promise<http.IncomingMessage>((resolve, reject) => {
      const secure = url.protocol === 'https:';
      const req = (secure ? https : http).request(url, {
        method: init.method ?? 'GET',
        headers: init.headers as Record<string, string>,
        agent: secure ? agents.https : agents.http,
        signal: init.signal ?? undefined,
      });
      req.on('response', resolve);
      req.on('error', reject);
      req.end();
    }).then((msg) => {
      const headers = new Map<string, string>();
      for (const [name, value] of Object.entries(msg.headers)) {
        if (value !== undefined) headers.set(name, Array.isArray(value) ? value.join(', ') : value);
      }
      return answer(url, msg.statusCode ?? 0, new WireHeaders(headers), chunks(msg));
    });
  const viaWire = async (url: URL, init: RequestInit): Promise<Answer> => {
    const method = init.method ?? 'GET';
    const res = await pool.request(url, method, (init.headers ?? {}) as Record<string, string>, init.signal ?? undefined);
    return answer(url, res.status, res.headers, res.body as unknown as ReadableStream<Uint8Array>);
  };
  const once = async (url: URL, init: RequestInit): Promise<Answer> => {
    const wire = url.protocol === 'http:' && url.username === '' && url.password === '' && !odd.has(url.host);
    if (!wire) return viaNode(url, init);
    try {
      return await viaWire(url, init);
    } catch (err) {
      if (!(err instanceof WireUnsupported)) throw err;
      odd.add(url.host);
      return viaNode(url, init);
    }
  };
  let closed = false;
  const run = async (input: string | URL | Request, init: RequestInit = {}): Promise<Answer> => {
    // The agents would open new sockets after close(), which nothing would close.
    if (closed) throw new TypeError('fetch failed: the transport is closed');
    let url = new URL(String(input));
    for (let hops = 0; ; hops++) {
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`fetch failed: unsupported protocol ${url.protocol}`);
      const res = await once(url, init);
      const location = res.headers.get('location');
      if ([301, 302, 303, 307, 308].includes(res.status) && location !== null && init.redirect !== 'manual') {
        await res.body?.cancel();
        if (hops >= MAX_REDIRECTS) throw new TypeError('fetch failed: redirect count exceeded');
        url = new URL(location, url);
        continue;
      }
      return res;
    }
  };
  const close = (): void => {
    closed = true;
    pool.close();
    agents.http.destroy();
    agents.https.destroy();
  };
  return { fetch: run as unknown as typeof fetch, close };
}
