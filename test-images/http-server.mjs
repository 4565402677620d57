/**
 * A small HTTP server over a directory, for tests and the bench: HEAD and GET with one
 * `Range: bytes=a-b`, `Accept-Ranges`, ETag and Last-Modified from the file's stat, and
 * `/redirect/<path>` answering 302 to `/<path>`. `faults` injects what real servers do wrong;
 * `requests` logs every request (method, path, range) so tests can count them.
 *
 *   node test-images/http-server.mjs DIR [PORT] [--big-reads]    # serve DIR, print the base URL
 */
import { createReadStream, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { join, normalize } from 'node:path';

/**
 * @typedef {object} HttpFaults
 * @property {boolean} [noRange] ignore Range and send no Accept-Ranges (a plain static server)
 * @property {number} [status] every request (HEAD too) answers this status
 * @property {number} [failGets] the next N GETs answer 503
 * @property {boolean} [short] range answers carry half the bytes asked for
 * @property {boolean} [oversized] range answers carry 4 KiB more than asked for
 * @property {boolean} [fullBody] range GETs answer 200 with the whole file
 * @property {boolean} [reset] range GETs send headers and a few bytes, then reset the connection
 * @property {boolean} [stall] range GETs send headers, then nothing
 * @property {string} [etag] the ETag sent instead of the file's (the file "changed")
 * @property {boolean} [noValidators] send neither ETag nor Last-Modified
 * @property {boolean} [noEtag] send Last-Modified only
 * @property {number} [changeAfter] after this many more GETs, the ETag changes (the file "changed")
 * @property {boolean} [noLength] HEAD sends no Content-Length (chunked)
 * @property {boolean} [noHead] HEAD answers 405 (as presigned object-store URLs do)
 */

/** Content types by file extension (module scripts and wasm need theirs in a browser). */
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.map': 'application/json', '.wasm': 'application/wasm', '.css': 'text/css' };

/**
 * Starts a server for `root` on 127.0.0.1 (`port` 0: any free port); `mounts` serves other
 * directories under URL prefixes (`{ '/images/': dir }`). `bigReads` reads and sends a range in
 * one piece up to 4 MiB, as a sendfile server does, instead of the stream's 64 KiB pieces: the
 * bench's server CPU per GiB drops from ~0.5 to ~0.2 s (on the cores the client runs on), but
 * qemu-img 7.2's curl driver hangs far more often on such answers (a backing chain over HTTP:
 * 16 of 30 converts against 2–4 of 30 with 64 KiB pieces), so the tests keep the default.
 * @param {string} root
 * @param {number} [port]
 * @param {{ mounts?: Record<string, string>, bigReads?: boolean }} [options]
 * @returns {Promise<{ url: string, faults: HttpFaults, requests: { method: string, path: string, range?: string }[], close: () => Promise<void> }>}
 */
export async function startHttpServer(root, port = 0, options = {}) {
  /** @type {HttpFaults} */
  const faults = {};
  /** @type {{ method: string, path: string, range?: string }[]} */
  const requests = [];
  const sockets = new Set();
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const range = req.headers.range;
    requests.push({ method: req.method ?? '', path: url.pathname, range });
    if (url.pathname.startsWith('/redirect/')) {
      res.writeHead(302, { Location: url.pathname.slice('/redirect'.length) + url.search, 'Content-Length': 0 });
      res.end();
      return;
    }
    if (faults.status !== undefined) {
      res.writeHead(faults.status, { 'Content-Length': 0 });
      res.end();
      return;
    }
    if (req.method === 'GET' && faults.failGets) {
      faults.failGets--;
      res.writeHead(503, { 'Content-Length': 0 });
      res.end();
      return;
    }
    let base = root;
    let rel = url.pathname === '/' ? '/index.html' : url.pathname;
    for (const [prefix, dir] of Object.entries(options.mounts ?? {})) {
      if (rel.startsWith(prefix)) {
        base = dir;
        rel = rel.slice(prefix.length - 1);
        break;
      }
    }
    const path = join(base, normalize(decodeURIComponent(rel)).replace(/^(\.\.[/\\])+/, ''));
    let st;
    try {
      st = statSync(path);
      if (!st.isFile()) throw new Error('not a file');
    } catch {
      res.writeHead(404, { 'Content-Length': 0 });
      res.end();
      return;
    }
    if (req.method === 'GET' && faults.changeAfter !== undefined && faults.changeAfter-- <= 0) faults.etag = '"changed"';
    const headers = {};
    const type = TYPES[/\.[a-z]+$/.exec(path)?.[0] ?? ''];
    if (type !== undefined) headers['Content-Type'] = type;
    if (!faults.noValidators) {
      if (!faults.noEtag) headers.ETag = faults.etag ?? `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
      headers['Last-Modified'] = st.mtime.toUTCString();
    }
    if (!faults.noRange) headers['Accept-Ranges'] = 'bytes';
    if (req.method === 'HEAD' && faults.noHead) {
      res.writeHead(405, { 'Content-Length': 0 });
      res.end();
      return;
    }
    if (req.method === 'HEAD') {
      if (!faults.noLength) headers['Content-Length'] = st.size;
      else headers['Transfer-Encoding'] = 'chunked';
      res.writeHead(200, headers);
      res.end();
      return;
    }
    const m = /^bytes=(\d+)-(\d*)$/.exec(range ?? '');
    if (faults.noRange || faults.fullBody || m === null) {
      res.writeHead(200, { ...headers, 'Content-Length': st.size });
      createReadStream(path).pipe(res);
      return;
    }
    const start = Number(m[1]);
    let end = m[2] === '' ? st.size - 1 : Math.min(Number(m[2]), st.size - 1);
    if (start >= st.size) {
      res.writeHead(416, { ...headers, 'Content-Range': `bytes */${st.size}`, 'Content-Length': 0 });
      res.end();
      return;
    }
    if (faults.short) end = start + Math.floor((end - start) / 2);
    let sendEnd = end;
    if (faults.oversized) sendEnd = Math.min(end + 4096, st.size - 1);
    res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${end}/${st.size}`, 'Content-Length': sendEnd - start + 1 });
    if (faults.stall) {
      res.flushHeaders();
      return;
    }
    if (faults.reset) {
      res.write(Buffer.alloc(Math.min(16, end - start + 1)));
      setTimeout(() => req.socket.destroy(), 20);
      return;
    }
    const highWaterMark = options.bigReads ? Math.min(sendEnd - start + 1, 4 << 20) : undefined;
    createReadStream(path, { start, end: sendEnd, highWaterMark }).pipe(res);
  });
  // Idle keep-alive connections stay open (Node closes them after 5 s by default): qemu-img's
  // curl driver hung for minutes on a connection closed under it while the machine was loaded.
  server.keepAliveTimeout = 0;
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(undefined)));
  const addr = /** @type {import('node:net').AddressInfo} */ (server.address());
  return {
    url: `http://127.0.0.1:${addr.port}`,
    faults,
    requests,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve(undefined));
      }),
  };
}

/**
 * This process's open sockets to the server at `url` (a client's keep-alive connection left
 * open keeps a command from exiting).
 * @param {string} url
 * @returns {number}
 */
export function socketsTo(url) {
  const port = Number(new URL(url).port);
  return process._getActiveHandles().filter((h) => h.remotePort === port).length;
}

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  const args = process.argv.slice(2).filter((a) => a !== '--big-reads');
  const srv = await startHttpServer(args[0] ?? '.', Number(args[1] ?? 0), { bigReads: process.argv.includes('--big-reads') });
  console.log(srv.url);
}
