/**
 * NbdServer: serves exports over TCP or a Unix socket, as qemu-nbd does — each connection
 * negotiated then served (server-negotiate.ts, server-transmission.ts), at most `shared`
 * clients at a time (later ones wait, as qemu-nbd stops accepting), and, unless persistent,
 * done once the last client has gone.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { rm } from 'node:fs/promises';
import { IoError, strerror } from '@tsimg/raw';
import type { NbdExport } from './export.js';
import { negotiate } from './server-negotiate.js';
import { serveTransmission } from './server-transmission.js';
import { SocketIO } from './socket-io.js';

/** Where a server listens. */
export type NbdListenAddress = { kind: 'inet'; host: string; port: number } | { kind: 'unix'; path: string };

/** Options of {@link NbdServer}. */
export interface NbdServerOptions {
  /** qemu-nbd's `-e`: clients served at once (0: no limit); others wait their turn. Default 1. */
  shared?: number;
  /** qemu-nbd's `-t`: keep serving after the last client left. Default false. */
  persistent?: boolean;
  /** Receives one line per dropped client (qemu's "Disconnect client, due to: ..."). */
  onError?: (message: string) => void;
  /**
   * Seconds a client has to finish the handshake before it is dropped (qemu's
   * NBD_DEFAULT_HANDSHAKE_MAX_SECS, 10), so a silent client cannot hold a slot of `shared`.
   */
  handshakeMaxSeconds?: number;
}

/** An NBD server of one or more exports. */
export class NbdServer {
  readonly #exports: readonly NbdExport[];
  readonly #shared: number;
  readonly #persistent: boolean;
  readonly #onError?: (message: string) => void;
  readonly #handshakeMs: number;
  #server?: Server;
  #unixPath?: string;
  #active = new Set<Socket>();
  #waiting: Socket[] = [];
  #served = false;
  #finished!: () => void;
  /** Resolves when the server has stopped: closed, or (not persistent) its last client left. */
  readonly done: Promise<void>;

  constructor(exports: readonly NbdExport[], options: NbdServerOptions = {}) {
    this.#exports = exports;
    this.#shared = options.shared ?? 1;
    this.#persistent = options.persistent ?? false;
    this.#onError = options.onError;
    this.#handshakeMs = (options.handshakeMaxSeconds ?? 10) * 1000;
    this.done = new Promise((resolve) => (this.#finished = resolve));
  }

  /** Starts listening; resolves with the bound address (the port chosen when 0 was asked). */
  async listen(address: NbdListenAddress): Promise<NbdListenAddress> {
    const server = createServer({ allowHalfOpen: false }, (socket) => this.#accept(socket));
    this.#server = server;
    // qemu's socket_listen_unix removes a stale socket file first.
    if (address.kind === 'unix') await rm(address.path, { force: true }).catch(() => undefined);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        const reason = strerror(err.code ?? 'EIO');
        // inet_listen_saddr / unix_listen_saddr's words
        const message =
          address.kind === 'unix'
            ? `Failed to bind socket to ${address.path}: ${reason}`
            : err.code === 'EADDRINUSE'
              ? `Failed to find an available port: ${reason}`
              : `Failed to bind socket: ${reason}`;
        reject(new IoError(message, { errno: err.code, cause: err }));
      });
      if (address.kind === 'unix') server.listen(address.path, resolve);
      else server.listen(address.port, address.host, resolve);
    });
    if (address.kind === 'unix') {
      this.#unixPath = address.path;
      return address;
    }
    const bound = server.address();
    return { kind: 'inet', host: address.host, port: typeof bound === 'object' && bound !== null ? bound.port : address.port };
  }

  #accept(socket: Socket): void {
    socket.on('error', () => undefined);
    if (this.#shared > 0 && this.#active.size >= this.#shared) {
      this.#waiting.push(socket);
      socket.once('close', () => {
        this.#waiting = this.#waiting.filter((s) => s !== socket);
      });
      return;
    }
    this.#start(socket);
  }

  #start(socket: Socket): void {
    this.#active.add(socket);
    this.#served = true;
    void this.#run(socket).finally(() => {
      this.#active.delete(socket);
      socket.destroy();
      const next = this.#waiting.shift();
      if (next !== undefined) this.#start(next);
      else if (!this.#persistent && this.#active.size === 0) void this.close();
    });
  }

  async #run(socket: Socket): Promise<void> {
    const io = new SocketIO(socket);
    // nbd_handshake_timer_cb: the channel is shut down when the handshake takes too long.
    const timer = setTimeout(() => socket.destroy(), this.#handshakeMs);
    timer.unref();
    try {
      const session = await negotiate(io, this.#exports).finally(() => clearTimeout(timer));
      if (session === undefined) return;
      const end = await serveTransmission(io, session);
      if (end.reason === 'error') this.#onError?.(`Disconnect client, due to: ${end.message}`);
    } catch (err) {
      // A client that vanished mid-handshake is no error worth a line (qemu traces it only).
      if (!io.ended) this.#onError?.(`Disconnect client, due to: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  /** Whether a client has been served (qemu-nbd without -t stops after the first one leaves). */
  get served(): boolean {
    return this.#served;
  }

  /** Stops listening and drops every client; resolves when the sockets are closed. */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    for (const s of [...this.#active, ...this.#waiting]) s.destroy();
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()));
    if (this.#unixPath !== undefined) await rm(this.#unixPath, { force: true }).catch(() => undefined);
    this.#finished();
  }
}
