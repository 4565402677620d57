/**
 * The server's transmission phase on one connection, as qemu 7.2's nbd_trip and
 * nbd_handle_request run it: requests are read one after another, up to 16 in flight, each
 * handled as soon as it is read and answered when it completes — out of order, which NBD
 * allows and the image's own locking keeps safe. Malformed requests get qemu's errors; a bad
 * magic, a write whose payload was not read, or a vanished client ends the connection.
 */
import { isZero, TsimgError } from '@tsimg/raw';
import { blockStatusAbove } from '../block-status.js';
import { exportSize, META_ID_ALLOCATION_DEPTH, META_ID_BASE_ALLOCATION, META_ID_DIRTY_BITMAP, type NbdExport } from './export.js';
import {
  NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE, NBD_CMD_DISC, NBD_CMD_FLAG_DF, NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL, NBD_ENOTSUP, NBD_MAX_BLOCK_STATUS_EXTENTS, NBD_MAX_BUFFER_SIZE, NBD_MAX_REQUESTS,
  NBD_REPLY_FLAG_DONE, NBD_REQUEST_SIZE, NBD_STATE_DIRTY, NBD_STATE_HOLE, NBD_STATE_ZERO, nbdErrno,
} from './protocol.js';
import type { Negotiated } from './server-negotiate.js';
import type { SocketIO } from './socket-io.js';
import {
  type ChunkPayload, chunkType, decodeRequest, encodeChunkHeader, encodeChunkPayload, encodeSimpleReply, type Extent,
  type NbdRequest,
} from './transmission-codec.js';

/** A request's failure, as the client is told it: a wire errno and qemu's message. */
class RequestError extends Error {
  constructor(readonly nbdError: number, message: string) {
    super(message);
  }
}

/** qemu's nbd_cmd_lookup names, for its messages. */
const COMMAND_NAMES = ['read', 'write', 'discard', 'flush', 'trim', 'cache', 'write zeroes', 'block status', 'resize'];

/** A request's reply channel: simple or structured, as negotiated. */
class Replier {
  constructor(private readonly io: SocketIO, private readonly structured: boolean) {}

  chunk(handle: bigint, payload: ChunkPayload, done: boolean, data?: Uint8Array): Promise<void> {
    const head = encodeChunkPayload(payload);
    const length = head.length + (data?.length ?? 0);
    const header = encodeChunkHeader({ flags: done ? NBD_REPLY_FLAG_DONE : 0, type: chunkType(payload), handle, length });
    return data ? this.io.write(header, head, data) : this.io.write(header, head);
  }

  /** nbd_send_generic_reply: success (simple, or a structured NONE chunk), or the error. */
  generic(handle: bigint, err?: RequestError): Promise<void> {
    if (this.structured && err !== undefined) {
      return this.chunk(handle, { kind: 'error', error: err.nbdError, message: err.message }, true);
    }
    return this.io.write(encodeSimpleReply({ error: err?.nbdError ?? 0, handle }));
  }

  simpleRead(handle: bigint, data: Uint8Array): Promise<void> {
    return this.io.write(encodeSimpleReply({ error: 0, handle }), data);
  }
}

/** The request error for an image's failure, with qemu's message for the command. */
function failure(err: unknown, message: string): RequestError {
  if (err instanceof RequestError) return err;
  const errno = err instanceof TsimgError ? err.errno : (err as { code?: string } | null)?.code;
  return new RequestError(nbdErrno(errno), message);
}

/**
 * nbd_co_receive_request's checks on a request whose payload (if any) has been read; returns
 * the error to answer with, or undefined when the request is valid. Whatever the check, qemu
 * 7.2's nbd_trip answers EINVAL (with the check's message): a write to a read-only export or
 * past the end is EINVAL on the wire too, not EPERM / ENOSPC.
 */
function validate(req: NbdRequest, exp: NbdExport, structured: boolean): RequestError | undefined {
  const invalid = (message: string): RequestError => new RequestError(NBD_EINVAL, message);
  const size = exportSize(exp);
  if ((req.type === NBD_CMD_READ || req.type === NBD_CMD_WRITE || req.type === NBD_CMD_CACHE) && req.length > NBD_MAX_BUFFER_SIZE) {
    return invalid(`len (${req.length} ) is larger than max len (${NBD_MAX_BUFFER_SIZE})`);
  }
  const writing = req.type === NBD_CMD_WRITE || req.type === NBD_CMD_WRITE_ZEROES || req.type === NBD_CMD_TRIM;
  if (exp.readOnly && writing) return invalid('Export is read-only');
  if (req.offset > size || req.length > size - req.offset) {
    return invalid(`operation past EOF; From: ${req.offset}, Len: ${req.length}, Size: ${size}`);
  }
  let valid = NBD_CMD_FLAG_FUA;
  if (req.type === NBD_CMD_READ && structured) valid |= NBD_CMD_FLAG_DF;
  else if (req.type === NBD_CMD_WRITE_ZEROES) valid |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
  else if (req.type === NBD_CMD_BLOCK_STATUS) valid |= NBD_CMD_FLAG_REQ_ONE;
  if ((req.flags & ~valid) !== 0) {
    return invalid(`unsupported flags for command ${COMMAND_NAMES[req.type] ?? '<unknown>'} (got 0x${req.flags.toString(16)})`);
  }
  return undefined;
}

/** Adds a run to an extent list, merging it into the last extent when the flags agree. */
function addExtent(list: Extent[], length: number, flags: number, max: number): boolean {
  const last = list[list.length - 1];
  if (last !== undefined && last.flags === flags) {
    last.length += length;
    return true;
  }
  if (list.length >= max) return false;
  list.push({ length, flags });
  return true;
}

/** The extents of one context over [offset, offset+length), at most `max` of them. */
async function contextExtents(exp: NbdExport, id: number, offset: number, length: number, max: number): Promise<Extent[]> {
  const out: Extent[] = [];
  const end = offset + length;
  let at = offset;
  while (at < end) {
    let run: number;
    let flags: number;
    if (id === META_ID_BASE_ALLOCATION) {
      const st = await blockStatusAbove(exp.image, at, end - at);
      run = st.length;
      flags = (st.data ? 0 : NBD_STATE_HOLE) | (st.zero ? NBD_STATE_ZERO : 0);
    } else if (id === META_ID_ALLOCATION_DEPTH) {
      // bdrv_is_allocated_above: the 1-based depth of the layer that allocates, 0 for none.
      const st = await blockStatusAbove(exp.image, at, end - at, { recurse: false });
      run = st.length;
      flags = st.allocated ? st.depth + 1 : 0;
    } else {
      const st = await exp.bitmaps![id - META_ID_DIRTY_BITMAP]!.status(at, end - at);
      run = st.length;
      flags = st.dirty ? NBD_STATE_DIRTY : 0;
    }
    // A run merged into the last extent is free even when the list is full (one extent with REQ_ONE).
    if (!addExtent(out, Math.min(run, 0xffffffff), flags, max)) break;
    at += run;
  }
  // qemu's extent array merges, and never reports beyond the request.
  return out;
}

/** Handles one valid request and sends its reply (or error). */
async function handle(req: NbdRequest, data: Uint8Array | undefined, session: Negotiated, reply: Replier): Promise<void> {
  const { exp, structured, meta } = session;
  const img = exp.image;
  const h = req.handle;
  const attempt = async (message: string, op: () => Promise<unknown>): Promise<RequestError | undefined> => {
    try {
      await op();
      return undefined;
    } catch (err) {
      return failure(err, message);
    }
  };
  const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0 || exp.writethrough === true;
  if (req.type === NBD_CMD_WRITE || req.type === NBD_CMD_WRITE_ZEROES || req.type === NBD_CMD_TRIM) {
    for (const b of exp.bitmaps ?? []) b.dirtied?.();
  }
  switch (req.type) {
    case NBD_CMD_READ: {
      if (fua) {
        const err = await attempt('flush failed', () => img.flush());
        if (err) return reply.generic(h, err);
      }
      if (structured && (req.flags & NBD_CMD_FLAG_DF) === 0 && req.length > 0) return sparseRead(req, exp, reply);
      const buf = new Uint8Array(req.length);
      const err = await attempt('reading from file failed', () => img.read(req.offset, buf));
      if (err) return reply.generic(h, err);
      if (!structured) return reply.simpleRead(h, buf);
      if (req.length === 0) return reply.chunk(h, { kind: 'none' }, true);
      return reply.chunk(h, { kind: 'data', offset: req.offset, data: buf }, true, buf);
    }
    case NBD_CMD_WRITE: {
      const err = await attempt('writing to file failed', async () => {
        const dz = exp.detectZeroes ?? 'off';
        if (dz !== 'off' && isZero(data!)) {
          await img.writeZeroes(req.offset, req.length, { mayUnmap: dz === 'unmap' && exp.unmap === true });
        } else {
          await img.write(req.offset, data!);
        }
        if (fua) await img.flush();
      });
      return reply.generic(h, err);
    }
    case NBD_CMD_WRITE_ZEROES: {
      // blk_pwrite_zeroes hands MAY_UNMAP to the image whatever its discard mode (only what the
      // format passes on to its file loses it without discard=unmap: OpenImageOptions.unmap).
      const mayUnmap = (req.flags & NBD_CMD_FLAG_NO_HOLE) === 0;
      if ((req.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0 && !(exp.fastZero ?? false)) {
        // BDRV_REQ_NO_FALLBACK on an image that would have to write zeroes: the client falls back.
        return reply.generic(h, new RequestError(NBD_ENOTSUP, 'writing to file failed'));
      }
      const err = await attempt('writing to file failed', async () => {
        await img.writeZeroes(req.offset, req.length, { mayUnmap });
        if (fua) await img.flush();
      });
      return reply.generic(h, err);
    }
    case NBD_CMD_FLUSH:
      return reply.generic(h, await attempt('flush failed', () => img.flush()));
    case NBD_CMD_TRIM:
      return reply.generic(
        h,
        await attempt('discard failed', async () => {
          if (exp.unmap === true) await img.discard(req.offset, req.length);
          if (fua) await img.flush();
        }),
      );
    case NBD_CMD_CACHE:
      // A prefetch: nothing is kept between requests, so the range is only checked (above).
      return reply.generic(h);
    case NBD_CMD_BLOCK_STATUS: {
      if (req.length === 0) return reply.generic(h, new RequestError(NBD_EINVAL, 'need non-zero length'));
      const ids = [
        ...(meta.baseAllocation ? [META_ID_BASE_ALLOCATION] : []),
        ...(meta.allocationDepth ? [META_ID_ALLOCATION_DEPTH] : []),
        ...meta.bitmaps.map((i) => META_ID_DIRTY_BITMAP + i),
      ];
      if (!structured || ids.length === 0) return reply.generic(h, new RequestError(NBD_EINVAL, 'CMD_BLOCK_STATUS not negotiated'));
      const max = (req.flags & NBD_CMD_FLAG_REQ_ONE) !== 0 ? 1 : NBD_MAX_BLOCK_STATUS_EXTENTS;
      for (let i = 0; i < ids.length; i++) {
        let extents: Extent[];
        try {
          extents = await contextExtents(exp, ids[i]!, req.offset, req.length, max);
        } catch (err) {
          return reply.chunk(h, { kind: 'error', error: failure(err, '').nbdError, message: "can't get block status" }, true);
        }
        await reply.chunk(h, { kind: 'status', contextId: ids[i]!, extents }, i === ids.length - 1);
      }
      return;
    }
    default:
      return reply.generic(h, new RequestError(NBD_EINVAL, `invalid request type (${req.type}) received`));
  }
}

/**
 * nbd_co_send_sparse_read: the range in chunks along the image's block status — holes as
 * OFFSET_HOLE, data read and sent as OFFSET_DATA.
 */
async function sparseRead(req: NbdRequest, exp: NbdExport, reply: Replier): Promise<void> {
  const end = req.offset + req.length;
  let at = req.offset;
  while (at < end) {
    let st;
    try {
      st = await blockStatusAbove(exp.image, at, end - at);
    } catch (err) {
      const e = failure(err, 'unable to check for holes');
      return reply.chunk(req.handle, { kind: 'error', error: e.nbdError, message: e.message }, true);
    }
    const final = at + st.length === end;
    if (st.zero) {
      await reply.chunk(req.handle, { kind: 'hole', offset: at, length: st.length }, final);
    } else {
      const buf = new Uint8Array(st.length);
      try {
        await exp.image.read(at, buf);
      } catch (err) {
        const e = failure(err, 'reading from file failed');
        return reply.chunk(req.handle, { kind: 'error', error: e.nbdError, message: e.message, offset: at }, true);
      }
      await reply.chunk(req.handle, { kind: 'data', offset: at, data: buf }, final, buf);
    }
    at += st.length;
  }
}

/** Why a connection ended: undefined for a clean NBD_CMD_DISC or a client that hung up. */
export type TransmissionEnd = { reason: 'disconnect' } | { reason: 'closed' } | { reason: 'error'; message: string };

/**
 * Serves requests on a negotiated connection until the client disconnects, vanishes or breaks
 * the protocol; requests in flight are answered before it returns (when the peer still listens).
 */
export async function serveTransmission(io: SocketIO, session: Negotiated): Promise<TransmissionEnd> {
  const reply = new Replier(io, session.structured);
  const inFlight = new Set<Promise<void>>();
  let end: TransmissionEnd | undefined;
  const track = (p: Promise<void>): void => {
    const q = p.catch(() => {
      io.destroy(); // a reply could not be sent: the client is gone
    }).finally(() => inFlight.delete(q));
    inFlight.add(q);
  };
  while (end === undefined) {
    while (inFlight.size >= NBD_MAX_REQUESTS) await Promise.race(inFlight);
    let req: NbdRequest;
    let data: Uint8Array | undefined;
    try {
      req = decodeRequest(await io.readExactly(NBD_REQUEST_SIZE));
    } catch (err) {
      end = err instanceof TsimgError && err.code === 'format' ? { reason: 'error', message: err.message } : { reason: 'closed' };
      break;
    }
    if (req.type === NBD_CMD_DISC) {
      end = { reason: 'disconnect' };
      break;
    }
    if (req.type === NBD_CMD_WRITE) {
      if (req.length > NBD_MAX_BUFFER_SIZE) {
        // The payload is not read: answer, then drop the client (qemu: "intermediate state").
        track(reply.generic(req.handle, validate(req, session.exp, session.structured)));
        end = { reason: 'error', message: 'Request handling failed in intermediate state' };
        break;
      }
      try {
        data = await io.readExactly(req.length);
      } catch {
        end = { reason: 'closed' };
        break;
      }
    }
    const invalid = validate(req, session.exp, session.structured);
    track(invalid ? reply.generic(req.handle, invalid) : handle(req, data, session, reply));
  }
  await Promise.all(inFlight);
  return end;
}
