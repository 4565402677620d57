/**
 * NbdClient: an NBD export as a BlockDevice, read and write, with block status through
 * `base:allocation` — qemu's nbd block driver. Requests are pipelined on one connection (as
 * many in flight as callers make, up to qemu's 16), replies matched to requests by handle in
 * whatever order the server sends them; large requests are split at the server's maximum.
 */
import { connect, type Socket } from 'node:net';
import {
  type BlockDevice, type BlockStatus, errorWithCode, IoError, ReadOnlyError, strerror, TsimgError, UsageError, type WriteZeroesOptions,
} from '@tsimg/raw';
import { type NbdAddress, nbdFilename, nbdPeerName } from './address.js';
import { clientNegotiate, type ExportInfo } from './client-negotiate.js';
import {
  errnoOfNbd, NBD_CMD_BLOCK_STATUS, NBD_CMD_DISC, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES,
  NBD_CMD_FLAG_NO_HOLE, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES, NBD_MAX_REQUESTS,
  NBD_REPLY_FLAG_DONE, NBD_REQUEST_SIZE, NBD_STATE_ZERO,
} from './protocol.js';
import { SocketIO } from './socket-io.js';
import { decodeChunkPayload, decodeReplyHeader, encodeRequest, type Extent, replyHeaderSize } from './transmission-codec.js';

/** Options of {@link NbdClient.connect}. */
export interface NbdClientOptions {
  /** Refuse writes even when the export allows them (default true, as tsimg opens read-only). */
  readOnly?: boolean;
}

/** A request waiting for its reply. */
interface Pending {
  /** Where a read's data goes (offset 0 = the request's offset). */
  into?: Uint8Array;
  offset: number;
  extents?: Extent[];
  error?: TsimgError;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** An NBD export as a BlockDevice. */
export class NbdClient implements BlockDevice {
  /** The name qemu reports for the export (`nbd://host:port/name`, `nbd+unix:///name?socket=…`). */
  readonly filename: string;
  readonly #io: SocketIO;
  readonly #info: ExportInfo;
  readonly #readOnly: boolean;
  readonly #pending = new Map<bigint, Pending>();
  #nextHandle = 1n;
  #slots = 0;
  #slotWaiters: (() => void)[] = [];
  #dead?: TsimgError;
  #closed = false;
  /** The extents of the last block status reply, answered from before asking again. */
  #statusCache?: { offset: number; extents: Extent[] };

  private constructor(filename: string, io: SocketIO, info: ExportInfo, readOnly: boolean) {
    this.filename = filename;
    this.#io = io;
    this.#info = info;
    this.#readOnly = readOnly || (info.flags & NBD_FLAG_READ_ONLY) !== 0;
    void this.#receive();
  }

  /** Connects to `addr` and negotiates its export; errors read like qemu's. */
  static async connect(addr: NbdAddress, options: NbdClientOptions = {}): Promise<NbdClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = addr.kind === 'unix' ? connect(addr.path) : connect(addr.port, addr.host);
      s.once('connect', () => resolve(s));
      s.once('error', (err: NodeJS.ErrnoException) => {
        const errno = err.code ?? 'EIO';
        reject(
          errorWithCode(errno === 'ENOENT' ? 'not-found' : 'io', `Failed to connect to '${nbdPeerName(addr)}': ${strerror(errno)}`, { errno, cause: err }),
        );
      });
    });
    const io = new SocketIO(socket);
    try {
      const info = await clientNegotiate(io, addr.export ?? '');
      return new NbdClient(nbdFilename(addr), io, info, options.readOnly ?? true);
    } catch (err) {
      io.destroy();
      if (err instanceof TsimgError) throw err;
      throw new IoError(`Failed to read initial magic: ${(err as Error).message}`, { errno: 'EIO' });
    }
  }

  get readOnly(): boolean {
    return this.#readOnly;
  }

  size(): number {
    return this.#info.size;
  }

  /** The NBD peer keeps its own locks; there is no local file to lock (see open.ts). */
  setPermissions(_permissions?: unknown): void {}

  async allocatedSize(): Promise<number | undefined> {
    return undefined;
  }

  async #slot(): Promise<void> {
    while (this.#slots >= NBD_MAX_REQUESTS) await new Promise<void>((r) => this.#slotWaiters.push(r));
    this.#slots++;
  }

  #release(): void {
    this.#slots--;
    this.#slotWaiters.shift()?.();
  }

  /** Sends one request and waits for its whole reply. */
  async #request(type: number, offset: number, length: number, flags = 0, payload?: Uint8Array, into?: Uint8Array): Promise<Pending> {
    if (this.#closed) throw new UsageError('device is closed');
    await this.#slot();
    try {
      if (this.#dead) throw this.#dead;
      const handle = this.#nextHandle++;
      const p = new Promise<void>((resolve, reject) => {
        this.#pending.set(handle, { into, offset, resolve, reject });
      });
      const entry = this.#pending.get(handle)!;
      const header = encodeRequest({ flags, type, handle, offset, length }, new Uint8Array(NBD_REQUEST_SIZE));
      try {
        await (payload ? this.#io.write(header, payload) : this.#io.write(header));
      } catch (err) {
        this.#pending.delete(handle);
        throw err;
      }
      await p;
      if (entry.error) throw entry.error;
      return entry;
    } finally {
      this.#release();
    }
  }

  /** The reply loop: headers, payloads, and the pending request each belongs to. */
  async #receive(): Promise<void> {
    const io = this.#io;
    try {
      for (;;) {
        const first = await io.readExactly(4);
        const size = replyHeaderSize(new DataView(first.buffer, first.byteOffset, 4).getUint32(0));
        const head = new Uint8Array(size);
        head.set(first, 0);
        head.set(await io.readExactly(size - 4), 4);
        const h = decodeReplyHeader(head);
        const p = this.#pending.get(h.handle);
        if (p === undefined) throw new IoError(`Protocol error: unexpected handle ${h.handle}`);
        if (h.kind === 'simple') {
          if (h.error !== 0) p.error = this.#wireError(h.error, '');
          else if (p.into !== undefined) p.into.set(await io.readExactly(p.into.length));
          this.#pending.delete(h.handle);
          p.resolve();
          continue;
        }
        const chunk = decodeChunkPayload(h.type, (await io.readExactly(h.length)).slice());
        if (chunk.kind === 'data' || chunk.kind === 'hole') {
          const at = chunk.offset - p.offset;
          const len = chunk.kind === 'data' ? chunk.data.length : chunk.length;
          if (p.into === undefined || at < 0 || at + len > p.into.length) throw new IoError('Protocol error: server sent chunk exceeding requested region');
          if (chunk.kind === 'data') p.into.set(chunk.data, at);
          else p.into.fill(0, at, at + len);
        } else if (chunk.kind === 'status') {
          if (chunk.contextId === this.#info.baseAllocation) p.extents = chunk.extents;
        } else if (chunk.kind === 'error') {
          p.error ??= this.#wireError(chunk.error, chunk.message);
        }
        if ((h.flags & NBD_REPLY_FLAG_DONE) !== 0) {
          this.#pending.delete(h.handle);
          p.resolve();
        }
      }
    } catch (err) {
      const dead = err instanceof TsimgError ? err : new IoError(String(err), { errno: 'EIO' });
      this.#dead = this.#closed ? new UsageError('device is closed') : new IoError(dead.message, { errno: 'EIO', cause: err });
      for (const p of this.#pending.values()) p.reject(this.#dead);
      this.#pending.clear();
      io.destroy();
    }
  }

  #wireError(error: number, message: string): TsimgError {
    const errno = errnoOfNbd(error);
    return errorWithCode(errno === 'EPERM' ? 'read-only' : errno === 'EINVAL' ? 'usage' : 'io', message || strerror(errno), { errno });
  }

  #inside(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.#info.size) {
      throw new UsageError(`range ${offset}+${length} is beyond the end of the export`, { errno: 'EIO' });
    }
  }

  /** Splits [offset, offset+length) into pieces the server accepts, run concurrently. */
  async #split(offset: number, length: number, one: (at: number, len: number) => Promise<unknown>): Promise<void> {
    const max = this.#info.maxPayload;
    const parts: Promise<unknown>[] = [];
    for (let at = 0; at < length; at += max) parts.push(one(offset + at, Math.min(max, length - at)));
    await Promise.all(parts);
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.#inside(offset, into.length);
    await this.#split(offset, into.length, (at, len) =>
      this.#request(NBD_CMD_READ, at, len, 0, undefined, into.subarray(at - offset, at - offset + len)),
    );
  }

  #writable(): void {
    if (this.#readOnly) throw new ReadOnlyError();
    this.#statusCache = undefined;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#writable();
    this.#inside(offset, data.length);
    await this.#split(offset, data.length, (at, len) => this.#request(NBD_CMD_WRITE, at, len, 0, data.subarray(at - offset, at - offset + len)));
  }

  async writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): Promise<void> {
    this.#writable();
    this.#inside(offset, length);
    if ((this.#info.flags & NBD_FLAG_SEND_WRITE_ZEROES) === 0) {
      const zero = new Uint8Array(Math.min(length, this.#info.maxPayload));
      await this.#split(offset, length, (at, len) => this.#request(NBD_CMD_WRITE, at, len, 0, zero.subarray(0, len)));
      return;
    }
    const flags = options?.mayUnmap ? 0 : NBD_CMD_FLAG_NO_HOLE;
    for (let at = 0; at < length; at += 0x80000000) {
      await this.#request(NBD_CMD_WRITE_ZEROES, offset + at, Math.min(0x80000000, length - at), flags);
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    this.#writable();
    this.#inside(offset, length);
    if ((this.#info.flags & NBD_FLAG_SEND_TRIM) === 0) return;
    for (let at = 0; at < length; at += 0x80000000) await this.#request(NBD_CMD_TRIM, offset + at, Math.min(0x80000000, length - at));
  }

  async flush(): Promise<void> {
    if (this.#closed || this.#readOnly || (this.#info.flags & NBD_FLAG_SEND_FLUSH) === 0) return;
    await this.#request(NBD_CMD_FLUSH, 0, 0);
  }

  async resize(): Promise<void> {
    throw new UsageError('Cannot resize an NBD export', { errno: 'ENOTSUP' });
  }

  /**
   * The run at `offset`: from base:allocation when negotiated (HOLE|ZERO → zero, a plain hole
   * → data, read to be sure, else data), all data otherwise, as qemu's nbd driver answers.
   * Every run has its own offset as host offset (BDRV_BLOCK_OFFSET_VALID with map = offset).
   */
  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    this.#inside(offset, length);
    if (length < 1) throw new UsageError('blockStatus needs a length of at least 1');
    if (this.#info.baseAllocation === undefined) return { kind: 'data', offset, length, hostOffset: offset };
    let hit = this.#fromCache(offset, length);
    if (hit === undefined) {
      const asked = Math.min(length, 0x80000000);
      const r = await this.#request(NBD_CMD_BLOCK_STATUS, offset, asked);
      const extents = r.extents ?? [];
      if (extents.length === 0 || extents[0]!.length === 0) throw new IoError('Protocol error: invalid block status reply');
      this.#statusCache = { offset, extents };
      hit = this.#fromCache(offset, length)!;
    }
    const kind = (hit.flags & NBD_STATE_ZERO) !== 0 ? 'zero' : 'data';
    return { kind, offset, length: hit.length, hostOffset: offset };
  }

  #fromCache(offset: number, length: number): { length: number; flags: number } | undefined {
    const c = this.#statusCache;
    if (c === undefined || offset < c.offset) return undefined;
    let at = c.offset;
    for (const e of c.extents) {
      if (offset < at + e.length) return { length: Math.min(at + e.length - offset, length), flags: e.flags };
      at += e.length;
    }
    return undefined;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      if (!this.#dead) await this.flush().catch(() => undefined);
    } finally {
      this.#closed = true;
      if (!this.#dead) {
        await this.#io.write(encodeRequest({ flags: 0, type: NBD_CMD_DISC, handle: 0n, offset: 0, length: 0 })).catch(() => undefined);
      }
      this.#io.socket.end();
      this.#io.destroy();
    }
  }
}
