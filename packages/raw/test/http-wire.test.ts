// The plain-http client of the Node transport (wire.ts), against raw TCP servers that answer
// exactly as scripted: heads and bodies cut anywhere, keep-alive and its races, 1xx heads,
// answers it leaves to node:http (chunked, no length), and the ways a server breaks framing.
import net from 'node:net';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { WirePool, WireUnsupported } from '../src/http/wire.js';
import { defaultFetch } from '../src/http/transport.js';
import { HttpDevice } from '../src/index.js';

/** One scripted answer: the request it got, and the connection to write the answer on. */
type Script = (request: string, socket: net.Socket, connection: number) => void;

interface Scripted {
  url: string;
  /** Connections accepted so far. */
  connections: () => number;
  requests: string[];
  close: () => Promise<void>;
}

const servers: Scripted[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

/** A TCP server that calls `script` for every request head it reads (one request at a time per connection). */
async function scripted(script: Script): Promise<Scripted> {
  let connections = 0;
  const requests: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    const id = connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let pending = '';
    socket.on('data', (d) => {
      pending += d.toString('latin1');
      for (let end = pending.indexOf('\r\n\r\n'); end >= 0; end = pending.indexOf('\r\n\r\n')) {
        const head = pending.slice(0, end);
        pending = pending.slice(end + 4);
        requests.push(head);
        script(head, socket, id);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  const s: Scripted = {
    url: `http://127.0.0.1:${port}/disk.img`,
    connections: () => connections,
    requests,
    close: () =>
      new Promise((resolve) => {
        for (const sock of sockets) sock.destroy();
        server.close(() => resolve());
      }),
  };
  servers.push(s);
  return s;
}

const DATA = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7 + (i >> 9)) & 0xff));

/** The asked range of DATA (`bytes=a-b`), clamped. */
function asked(request: string): [number, number] {
  const m = /range: bytes=(\d+)-(\d+)/i.exec(request);
  return m === null ? [0, DATA.length - 1] : [Number(m[1]), Math.min(Number(m[2]), DATA.length - 1)];
}

/** A well-formed 206 answer to `request` as bytes. */
function answer206(request: string, extra = ''): Buffer {
  const [a, b] = asked(request);
  const head = `HTTP/1.1 206 Partial Content\r\nContent-Range: bytes ${a}-${b}/${DATA.length}\r\nContent-Length: ${b - a + 1}\r\n${extra}\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), DATA.subarray(a, b + 1)]);
}

/** Reads `[a, b]` through a pool: the answer's status and body. */
async function get(pool: WirePool, url: string, a: number, b: number): Promise<{ status: number; body: Buffer }> {
  const res = await pool.request(new URL(url), 'GET', { Range: `bytes=${a}-${b}` }, undefined);
  const into = new Uint8Array(b - a + 1);
  const got = await res.body.fill(into, () => undefined);
  return { status: res.status, body: Buffer.from(into.subarray(0, got)) };
}

describe('the plain-http client', () => {
  it('reads answers cut at any byte, head and body alike, on one kept-alive connection', async () => {
    // Each answer goes out in pieces whose sizes the property picks, with a pause between.
    let cuts: number[] = [];
    const server = await scripted((request, socket) => {
      const bytes = answer206(request);
      let pos = 0;
      const next = (k: number): void => {
        if (pos >= bytes.length) return;
        const n = k < cuts.length ? cuts[k]! : bytes.length;
        socket.write(bytes.subarray(pos, pos + n));
        pos += n;
        setImmediate(() => next(k + 1));
      };
      next(0);
    });
    const pool = new WirePool();
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 1, max: 9000 }), { maxLength: 12 }), fc.nat(DATA.length - 1), fc.integer({ min: 1, max: 70_000 }), async (pieces, a, length) => {
        cuts = pieces;
        const b = Math.min(a + length - 1, DATA.length - 1);
        const { status, body } = await get(pool, server.url, a, b);
        expect(status).toBe(206);
        expect(body.equals(DATA.subarray(a, b + 1))).toBe(true);
      }),
      { numRuns: 60 },
    );
    pool.close();
    expect(server.connections()).toBe(1);
  });

  it('skips 1xx heads, and reads a bodiless HEAD answer', async () => {
    const server = await scripted((request, socket) => {
      if (request.startsWith('HEAD')) socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${DATA.length}\r\nAccept-Ranges: bytes\r\nX-Two: a\r\nx-two: b\r\n\r\n`);
      else socket.write(Buffer.concat([Buffer.from('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n'), answer206(request)]));
    });
    const pool = new WirePool();
    const head = await pool.request(new URL(server.url), 'HEAD', {}, undefined);
    expect(head.status).toBe(200);
    expect(head.headers.get('Content-Length')).toBe(String(DATA.length));
    expect(head.headers.get('x-two')).toBe('a, b');
    const { status, body } = await get(pool, server.url, 10, 99);
    expect(status).toBe(206);
    expect(body.equals(DATA.subarray(10, 100))).toBe(true);
    pool.close();
    expect(server.connections()).toBe(1);
  });

  it('opens a new connection after Connection: close, and after the server closed an idle one', async () => {
    const server = await scripted((request, socket, id) => {
      socket.write(answer206(request, id === 0 ? 'Connection: close\r\n' : ''));
      if (id === 0) socket.end();
      // The second connection is closed by the server once idle (a keep-alive timeout).
      if (id === 1) setTimeout(() => socket.end(), 20);
    });
    const pool = new WirePool();
    for (let i = 0; i < 3; i++) {
      expect((await get(pool, server.url, i * 100, i * 100 + 50)).body.equals(DATA.subarray(i * 100, i * 100 + 51))).toBe(true);
      await new Promise((r) => setTimeout(r, 60));
    }
    pool.close();
    expect(server.connections()).toBe(3);
  });

  it('asks again on a fresh connection when a kept-alive one closes under a request', async () => {
    // The server answers the first request of each connection, then drops the connection on
    // the next request without a byte: the race of a keep-alive timeout with a new request.
    const server = await scripted((request, socket) => {
      const seen = ((socket as unknown as { seen?: number }).seen ?? 0) + 1;
      (socket as unknown as { seen?: number }).seen = seen;
      if (seen === 1) socket.write(answer206(request));
      else socket.destroy();
    });
    const pool = new WirePool();
    for (let i = 0; i < 3; i++) expect((await get(pool, server.url, i, i + 1000)).body.equals(DATA.subarray(i, i + 1001))).toBe(true);
    pool.close();
    expect(server.connections()).toBe(3);
  });

  it('reports a connection that ends before any answer as curl does', async () => {
    const server = await scripted((_request, socket) => socket.destroy());
    const pool = new WirePool();
    await expect(get(pool, server.url, 0, 10)).rejects.toThrow(/^Empty reply from server$/);
    pool.close();
  });

  it('leaves chunked and close-delimited answers to node:http, with the same bytes', async () => {
    const server = await scripted((request, socket) => {
      const [a, b] = asked(request);
      const body = DATA.subarray(a, b + 1);
      const head = `HTTP/1.1 206 Partial Content\r\nContent-Range: bytes ${a}-${b}/${DATA.length}\r\n`;
      if (request.includes('chunked-please')) {
        socket.write(`${head}Transfer-Encoding: chunked\r\n\r\n`);
        // Two chunks where the body has two bytes (a 0-size chunk would end it).
        for (const piece of [body.subarray(0, body.length >> 1), body.subarray(body.length >> 1)].filter((p) => p.length > 0)) {
          socket.write(`${piece.length.toString(16)}\r\n`);
          socket.write(piece);
          socket.write('\r\n');
        }
        socket.write('0\r\n\r\n');
      } else {
        socket.write(`${head}Connection: close\r\n\r\n`);
        socket.end(body);
      }
    });
    const pool = new WirePool();
    await expect(pool.request(new URL(server.url), 'GET', { Range: 'bytes=0-9', X: 'chunked-please' }, undefined)).rejects.toBeInstanceOf(WireUnsupported);
    pool.close();
    for (const marker of ['chunked-please', 'close']) {
      const { fetch, close } = defaultFetch();
      for (const [a, b] of [[5, 20_004], [70_000, 70_000]] as const) {
        const res = await fetch(server.url, { headers: { Range: `bytes=${a}-${b}`, X: marker } });
        expect(res.status).toBe(206);
        const fill = (res.body as unknown as { fill: (into: Uint8Array, p: () => void) => Promise<number> }).fill;
        const into = new Uint8Array(b - a + 1);
        expect(await fill(into, () => undefined)).toBe(into.length);
        expect(Buffer.from(into).equals(DATA.subarray(a, b + 1))).toBe(true);
      }
      close();
    }
  });

  it('refuses broken framing: a garbled status line, an endless head, a bad length, bytes after the body', async () => {
    const server = await scripted((request, socket) => {
      if (request.includes('garbled')) socket.write('HTTP/2 206\r\n\r\n');
      else if (request.includes('endless')) socket.write(`HTTP/1.1 206 Partial Content\r\nX: ${'y'.repeat(200_000)}`);
      else if (request.includes('length')) socket.write('HTTP/1.1 206 Partial Content\r\nContent-Length: -5\r\n\r\n');
      else socket.write(Buffer.concat([answer206(request), Buffer.from('surplus')]));
    });
    const pool = new WirePool();
    const ask = (x: string): Promise<unknown> => pool.request(new URL(server.url), 'GET', { Range: 'bytes=0-99', X: x }, undefined);
    await expect(ask('garbled')).rejects.toThrow(/^Weird server reply: "HTTP\/2 206"$/);
    await expect(ask('endless')).rejects.toThrow(/^Weird server reply: the answer's head is longer than/);
    await expect(ask('length')).rejects.toThrow(/^Weird server reply: Content-Length "-5"$/);
    // The surplus after a body ends that connection (its next answer could not be trusted),
    // not the read: the next request goes out on a new one.
    const before = server.connections();
    expect((await get(pool, server.url, 0, 99)).body.equals(DATA.subarray(0, 100))).toBe(true);
    expect((await get(pool, server.url, 0, 99)).body.equals(DATA.subarray(0, 100))).toBe(true);
    expect(server.connections()).toBe(before + 2);
    pool.close();
  });

  it('refuses header values that would smuggle a line into the request', async () => {
    const server = await scripted((request, socket) => socket.write(answer206(request)));
    const pool = new WirePool();
    await expect(pool.request(new URL(server.url), 'GET', { Cookie: 'a=b\r\nX-Evil: 1' }, undefined)).rejects.toThrow(TypeError);
    await expect(pool.request(new URL(server.url), 'GET', { 'Bad Name': 'x' }, undefined)).rejects.toThrow(TypeError);
    pool.close();
    expect(server.requests).toEqual([]);
  });

  it('ends a request whose signal aborts, head or body, with the connection', async () => {
    const server = await scripted((request, socket) => {
      const bytes = answer206(request);
      if (request.includes('head')) socket.write(bytes.subarray(0, 20));
      else socket.write(bytes.subarray(0, bytes.length - 10));
    });
    const pool = new WirePool();
    const a1 = new AbortController();
    const head = pool.request(new URL(server.url), 'GET', { Range: 'bytes=0-999', X: 'head' }, a1.signal);
    setTimeout(() => a1.abort(), 50);
    await expect(head).rejects.toThrow();
    const a2 = new AbortController();
    const res = await pool.request(new URL(server.url), 'GET', { Range: 'bytes=0-999' }, a2.signal);
    const into = new Uint8Array(1000);
    const fill = res.body.fill(into, () => undefined);
    setTimeout(() => a2.abort(), 50);
    expect(await fill).toBe(990);
    pool.close();
  });

  it('serves HttpDevice reads many at once over a pool of kept-alive connections', async () => {
    const server = await scripted((request, socket) => {
      if (request.startsWith('HEAD')) socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${DATA.length}\r\nAccept-Ranges: bytes\r\n\r\n`);
      else socket.write(answer206(request));
    });
    const dev = await HttpDevice.open(server.url, { maxInFlight: 3, maxRequest: 64 * 1024, blockSize: 4096, readahead: 0 });
    const bufs = Array.from({ length: 20 }, (_, i) => ({ offset: i * 14_999, buf: new Uint8Array(14_999) }));
    await Promise.all(bufs.map(({ offset, buf }) => dev.read(offset, buf)));
    for (const { offset, buf } of bufs) expect(Buffer.from(buf).equals(DATA.subarray(offset, offset + buf.length))).toBe(true);
    await dev.close();
    expect(server.connections()).toBeLessThanOrEqual(3);
  });
});
