/**
 * NbdServer and NbdClient against each other, in-process over a Unix socket and loopback TCP:
 * operation sequences checked against a plain model (with many requests in flight), several
 * clients at once, and clients that break the protocol — bad magic, oversized and
 * out-of-range requests, writes to a read-only export, unknown commands and flags, vanishing
 * mid-request — which get the protocol's errors or are dropped while the server and the image
 * stay consistent (`qemu-img check` afterwards when qemu is installed). Servers are closed by
 * afterEach; nothing is timed.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createQcow2 } from '@tsimg/qcow2';
import { createFile, FileDevice, TsimgError } from '@tsimg/raw';
import { openImage, type Image } from '../src/index.js';
import { NbdClient } from '../src/nbd/client.js';
import type { NbdExport } from '../src/nbd/export.js';
import { NbdServer } from '../src/nbd/server.js';
import { SocketIO } from '../src/nbd/socket-io.js';
import { clientNegotiate } from '../src/nbd/client-negotiate.js';
import {
  NBD_CMD_BLOCK_STATUS, NBD_CMD_READ, NBD_CMD_WRITE, NBD_EINVAL, NBD_MAX_BUFFER_SIZE, NBD_REPLY_FLAG_DONE,
} from '../src/nbd/protocol.js';
import { decodeChunkPayload, decodeReplyHeader, encodeRequest } from '../src/nbd/transmission-codec.js';

const SIZE = 4 << 20;
const hasQemuImg = spawnSync('qemu-img', ['--version']).status === 0;

let dir: string;
let server: NbdServer | undefined;
let image: Image | undefined;
const clients: NbdClient[] = [];
const sockets: Socket[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'tsimg-nbd-'));
});

afterEach(async () => {
  for (const c of clients.splice(0)) await c.close().catch(() => undefined);
  for (const s of sockets.splice(0)) s.destroy();
  await server?.close();
  server = undefined;
  await image?.close().catch(() => undefined);
  image = undefined;
  rmSync(dir, { recursive: true, force: true });
});

async function makeImage(format: 'raw' | 'qcow2'): Promise<string> {
  const path = join(dir, `disk.${format}`);
  if (format === 'raw') {
    await createFile(path, { size: BigInt(SIZE) });
  } else {
    await createFile(path);
    const f = await FileDevice.open(path);
    await createQcow2(f, { size: BigInt(SIZE) });
    await f.close();
  }
  return path;
}

/** Serves `path` on a Unix socket (or TCP port 0) and returns the address clients use. */
async function serve(path: string, exp: Partial<NbdExport> = {}, tcp = false) {
  image = await openImage(path, { readOnly: exp.readOnly ?? false, unmap: true });
  server = new NbdServer([{ name: 'e', image, readOnly: false, multiConn: true, unmap: true, ...exp }], { shared: 0, persistent: true });
  const bound = await server.listen(tcp ? { kind: 'inet', host: '127.0.0.1', port: 0 } : { kind: 'unix', path: join(dir, 's.sock') });
  return { ...bound, export: 'e' } as const;
}

/** Closes the clients, the server and the image, then checks the image. */
async function finish(path: string): Promise<void> {
  for (const c of clients.splice(0)) await c.close();
  await server!.close();
  await image!.close();
  image = undefined;
  checkImage(path);
}

function checkImage(path: string): void {
  // Without qemu-img the model checks above still ran; raw has nothing to check.
  if (!hasQemuImg || path.endsWith('.raw')) return;
  const r = spawnSync('qemu-img', ['check', path], { encoding: 'utf8' });
  expect(r.stdout + r.stderr).toContain('No errors were found on the image.');
  expect(r.status).toBe(0);
}

type Op =
  | { op: 'write'; offset: number; length: number; byte: number }
  | { op: 'zero'; offset: number; length: number; unmap: boolean }
  | { op: 'trim'; offset: number; length: number };

const range = fc.integer({ min: 0, max: SIZE / 512 - 1 }).chain((s) =>
  fc.integer({ min: 1, max: Math.min(256, SIZE / 512 - s) }).map((n) => ({ offset: s * 512, length: n * 512 })),
);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.tuple(range, fc.integer({ min: 1, max: 255 })).map(([r, byte]) => ({ op: 'write' as const, ...r, byte })),
  fc.tuple(range, fc.boolean()).map(([r, unmap]) => ({ op: 'zero' as const, ...r, unmap })),
  range.map((r) => ({ op: 'trim' as const, ...r })),
);

/** Ops of a batch run concurrently, so a batch keeps only ranges that do not overlap. */
function disjoint(ops: Op[]): Op[] {
  const out: Op[] = [];
  for (const o of ops) if (out.every((p) => o.offset + o.length <= p.offset || p.offset + p.length <= o.offset)) out.push(o);
  return out;
}

async function apply(c: NbdClient, model: Uint8Array, o: Op): Promise<void> {
  if (o.op === 'write') {
    await c.write(o.offset, new Uint8Array(o.length).fill(o.byte));
    model.fill(o.byte, o.offset, o.offset + o.length);
  } else if (o.op === 'zero') {
    await c.writeZeroes(o.offset, o.length, { mayUnmap: o.unmap });
    model.fill(0, o.offset, o.offset + o.length);
  } else {
    // After a trim the range reads as it was or as zeroes (qcow2 drops whole clusters only);
    // the model takes what it reads then.
    await c.discard(o.offset, o.length);
    const now = new Uint8Array(o.length);
    await c.read(o.offset, now);
    const before = model.subarray(o.offset, o.offset + o.length);
    expect(now.every((b, i) => b === 0 || b === before[i])).toBe(true);
    model.set(now, o.offset);
  }
}

describe.each(['raw', 'qcow2'] as const)('tsimg NBD server and client (%s)', (format) => {
  it('batches of concurrent operations match a model, and block status agrees with the data', async () => {
    const path = await makeImage(format);
    const addr = await serve(path);
    const c = await NbdClient.connect(addr, { readOnly: false });
    clients.push(c);
    const model = new Uint8Array(SIZE);
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(opArb, { minLength: 1, maxLength: 12 }), { minLength: 1, maxLength: 4 }), async (batches) => {
        for (const batch of batches) await Promise.all(disjoint(batch).map((o) => apply(c, model, o)));
        const got = new Uint8Array(SIZE);
        await c.read(0, got);
        expect(Buffer.compare(got, model)).toBe(0);
        for (let at = 0; at < SIZE; ) {
          const st = await c.blockStatus(at, SIZE - at);
          if (st.kind === 'zero') expect(model.subarray(at, at + st.length).every((b) => b === 0)).toBe(true);
          at += st.length;
        }
      }),
      { numRuns: 8 },
    );
    await c.flush();
    await finish(path);
  });

  it('serves several clients at once, many requests in flight each, over TCP', async () => {
    const path = await makeImage(format);
    const addr = await serve(path, {}, true);
    const N = 4;
    const slice = SIZE / N;
    const conns = await Promise.all(Array.from({ length: N }, () => NbdClient.connect(addr, { readOnly: false })));
    clients.push(...conns);
    // Each client owns a quarter and writes 64 KiB blocks into it, 32 requests at a time.
    await Promise.all(
      conns.map(async (c, i) => {
        const writes: Promise<void>[] = [];
        for (let b = 0; b < slice / 65536; b++) writes.push(c.write(i * slice + b * 65536, new Uint8Array(65536).fill(1 + ((i * 7 + b) % 250))));
        await Promise.all(writes);
        await c.flush();
      }),
    );
    // Every client reads every quarter back.
    for (const c of conns) {
      const got = new Uint8Array(SIZE);
      await Promise.all(Array.from({ length: 64 }, (_, k) => c.read(k * 65536, got.subarray(k * 65536, (k + 1) * 65536))));
      for (let i = 0; i < N; i++) {
        for (let b = 0; b < slice / 65536; b++) expect(got[i * slice + b * 65536 + 123]).toBe(1 + ((i * 7 + b) % 250));
      }
    }
    await finish(path);
  });
});

describe('connection limit (qemu-nbd -e)', () => {
  it('lets a client beyond the limit wait until one leaves, then serves it', async () => {
    const path = await makeImage('raw');
    image = await openImage(path, { readOnly: false });
    server = new NbdServer([{ name: 'e', image, readOnly: false, multiConn: false }], { shared: 1, persistent: true });
    const addr = { ...(await server.listen({ kind: 'unix', path: join(dir, 's.sock') })), export: 'e' } as const;
    const events: string[] = [];
    const first = await NbdClient.connect(addr, { readOnly: false });
    const second = NbdClient.connect(addr, { readOnly: false }).then((c) => {
      events.push('second connected');
      clients.push(c);
      return c;
    });
    // Many round trips on the first connection: the waiting one is not let in meanwhile.
    for (let i = 0; i < 20; i++) await first.write(i * 512, new Uint8Array(512).fill(i + 1));
    events.push('first done');
    await first.close();
    const c2 = await second;
    const back = new Uint8Array(512);
    await c2.read(19 * 512, back);
    expect(back[0]).toBe(20);
    expect(events).toEqual(['first done', 'second connected']);
  });

  it('drops a client that does not finish its handshake in time, freeing its slot', async () => {
    const path = await makeImage('raw');
    image = await openImage(path);
    server = new NbdServer([{ name: 'e', image, readOnly: true, multiConn: false }], { shared: 1, persistent: true, handshakeMaxSeconds: 0.05 });
    const addr = { ...(await server.listen({ kind: 'unix', path: join(dir, 's.sock') })), export: 'e' } as const;
    const silent = connect({ path: addr.path });
    sockets.push(silent);
    await new Promise<void>((r) => silent.once('close', () => r()).resume());
    const c = await NbdClient.connect(addr);
    clients.push(c);
    expect(c.size()).toBe(SIZE);
  });

  it('stops by itself when not persistent and its last client has gone', async () => {
    const path = await makeImage('raw');
    image = await openImage(path);
    server = new NbdServer([{ name: '', image, readOnly: true, multiConn: false }]);
    const bound = await server.listen({ kind: 'inet', host: '127.0.0.1', port: 0 });
    const c = await NbdClient.connect({ ...bound });
    expect(c.size()).toBe(SIZE);
    await c.close();
    await server.done;
    await expect(NbdClient.connect({ ...bound })).rejects.toThrow(/Failed to connect to '127\.0\.0\.1:\d+': Connection refused/);
  });
});

/** A raw protocol client: negotiated, then raw requests and their replies. */
async function rawClient(addr: Awaited<ReturnType<typeof serve>>) {
  const socket = connect(addr.kind === 'unix' ? { path: addr.path } : { port: addr.port, host: addr.host });
  sockets.push(socket);
  await new Promise((r) => socket.once('connect', r));
  const io = new SocketIO(socket);
  const info = await clientNegotiate(io, 'e');
  let handle = 100n;
  /** Sends one request; resolves with the error of its reply (0 = success) and the chunks' kinds. */
  const request = async (type: number, offset: number, length: number, flags = 0, payload?: Uint8Array) => {
    const h = handle++;
    const header = encodeRequest({ flags, type, handle: h, offset, length });
    await io.write(header, ...(payload ? [payload] : []));
    return reply(h);
  };
  const reply = async (h: bigint) => {
    const kinds: string[] = [];
    let error = 0;
    for (;;) {
      const first = await io.readExactly(16);
      const magic = new DataView(first.buffer, first.byteOffset).getUint32(0);
      const head = magic === 0x67446698 ? first : new Uint8Array([...first, ...(await io.readExactly(4))]);
      const r = decodeReplyHeader(head);
      expect(r.handle).toBe(h);
      if (r.kind === 'simple') return { error: r.error, kinds };
      const p = decodeChunkPayload(r.type, (await io.readExactly(r.length)).slice());
      kinds.push(p.kind);
      if (p.kind === 'error') error = p.error;
      if ((r.flags & NBD_REPLY_FLAG_DONE) !== 0) return { error, kinds };
    }
  };
  const closed = () => new Promise<void>((resolve) => (socket.destroyed ? resolve() : socket.once('close', () => resolve())));
  return { io, info, request, socket, closed };
}

describe('clients that break the protocol', () => {
  it('get the protocol errors for bad requests and stay connected', async () => {
    const path = await makeImage('qcow2');
    const addr = await serve(path);
    const c = await rawClient(addr);
    expect((await c.request(NBD_CMD_READ, SIZE - 512, 1024)).error).toBe(NBD_EINVAL);
    expect((await c.request(NBD_CMD_WRITE, SIZE, 512, 0, new Uint8Array(512))).error).toBe(NBD_EINVAL); // qemu 7.2: EINVAL, not ENOSPC
    expect((await c.request(NBD_CMD_READ, 0, NBD_MAX_BUFFER_SIZE + 1)).error).toBe(NBD_EINVAL);
    expect((await c.request(NBD_CMD_READ, 0, 512, 0x40)).error).toBe(NBD_EINVAL); // an unknown flag
    expect((await c.request(42, 0, 0)).error).toBe(NBD_EINVAL); // an unknown command
    expect((await c.request(NBD_CMD_READ, 2 ** 53, 512)).error).toBe(NBD_EINVAL);
    expect(await c.request(NBD_CMD_BLOCK_STATUS, 0, 0)).toEqual({ error: NBD_EINVAL, kinds: ['error'] });
    expect(await c.request(NBD_CMD_BLOCK_STATUS, 0, 4096, 0x1)).toEqual({ error: 0, kinds: ['status'] });
    // Still serving: a good read after all of that.
    const ok = await c.request(NBD_CMD_READ, 0, 4096);
    expect(ok.error).toBe(0);
    expect(ok.kinds).toEqual(['hole']);
    c.socket.destroy();
    await finish(path);
  });

  it('refuses writes to a read-only export (EINVAL on the wire, as qemu 7.2 answers)', async () => {
    const path = await makeImage('raw');
    const addr = await serve(path, { readOnly: true });
    const c = await rawClient(addr);
    expect((await c.request(NBD_CMD_WRITE, 0, 512, 0, new Uint8Array(512).fill(9))).error).toBe(NBD_EINVAL);
    const client = await NbdClient.connect(addr, { readOnly: false });
    clients.push(client);
    expect(client.readOnly).toBe(true);
    await expect(client.write(0, new Uint8Array(512))).rejects.toBeInstanceOf(TsimgError);
  });

  it('drops a client with a bad magic or an oversized write, and serves the next one', async () => {
    const path = await makeImage('qcow2');
    const addr = await serve(path);
    const bad = await rawClient(addr);
    const junk = encodeRequest({ flags: 0, type: NBD_CMD_READ, handle: 1n, offset: 0, length: 512 });
    junk[0] ^= 0xff;
    await bad.io.write(junk);
    await bad.closed();
    const big = await rawClient(addr);
    expect((await big.request(NBD_CMD_WRITE, 0, NBD_MAX_BUFFER_SIZE + 512)).error).toBe(NBD_EINVAL);
    await big.closed();
    const c = await NbdClient.connect(addr, { readOnly: false });
    clients.push(c);
    await c.write(0, new Uint8Array(4096).fill(7));
    const back = new Uint8Array(4096);
    await c.read(0, back);
    expect(back.every((b) => b === 7)).toBe(true);
  });

  it('survives clients that vanish mid-handshake, mid-request and mid-payload', async () => {
    const path = await makeImage('qcow2');
    const addr = await serve(path);
    // mid-handshake: connect and hang up
    const s = connect({ path: (addr as { path: string }).path });
    sockets.push(s);
    await new Promise((r) => s.once('connect', r));
    s.destroy();
    // mid-request header, and mid-write payload
    const a = await rawClient(addr);
    await a.io.write(encodeRequest({ flags: 0, type: NBD_CMD_READ, handle: 1n, offset: 0, length: 512 }).subarray(0, 10));
    a.socket.destroy();
    const b = await rawClient(addr);
    await b.io.write(encodeRequest({ flags: 0, type: NBD_CMD_WRITE, handle: 2n, offset: 0, length: 65536 }), new Uint8Array(1000).fill(5));
    b.socket.destroy();
    // many reads in flight, then gone before the replies
    const r = await rawClient(addr);
    for (let i = 0; i < 32; i++) await r.io.write(encodeRequest({ flags: 0, type: NBD_CMD_READ, handle: BigInt(i), offset: 0, length: 1 << 20 }));
    r.socket.destroy();
    const c = await NbdClient.connect(addr, { readOnly: false });
    clients.push(c);
    await c.write(8192, new Uint8Array(512).fill(3));
    const back = new Uint8Array(512);
    await c.read(8192, back);
    expect(back[0]).toBe(3);
    await finish(path);
  });
});
