/**
 * Codecs of the NBD transmission phase: the request header, the simple reply, and structured
 * reply chunks (header and payloads: offset data, offset hole, block status, errors) — pure
 * encode/decode, no I/O.
 */
import { FormatError } from '@tsimg/raw';
import {
  NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_ERROR_OFFSET, NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE, NBD_REQUEST_MAGIC, NBD_REQUEST_SIZE, NBD_SIMPLE_REPLY_MAGIC, NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC, NBD_STRUCTURED_REPLY_SIZE,
} from './protocol.js';

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A request: `handle` is the client's opaque cookie, echoed in the reply. */
export interface NbdRequest {
  flags: number;
  type: number;
  handle: bigint;
  offset: number;
  length: number;
}

export function encodeRequest(r: NbdRequest, into: Uint8Array = new Uint8Array(NBD_REQUEST_SIZE)): Uint8Array {
  const v = viewOf(into);
  v.setUint32(0, NBD_REQUEST_MAGIC);
  v.setUint16(4, r.flags);
  v.setUint16(6, r.type);
  v.setBigUint64(8, r.handle);
  v.setBigUint64(16, BigInt(r.offset));
  v.setUint32(24, r.length);
  return into;
}

/** The request in the first 28 bytes; a wrong magic is a FormatError (qemu drops the client). */
export function decodeRequest(bytes: Uint8Array): NbdRequest {
  const v = viewOf(bytes);
  const magic = v.getUint32(0);
  if (magic !== NBD_REQUEST_MAGIC) throw new FormatError(`invalid magic (got 0x${magic.toString(16)})`);
  return { flags: v.getUint16(4), type: v.getUint16(6), handle: v.getBigUint64(8), offset: Number(v.getBigUint64(16)), length: v.getUint32(24) };
}

/** A simple reply header (data follows it for a successful read). */
export interface SimpleReply {
  error: number;
  handle: bigint;
}

export function encodeSimpleReply(r: SimpleReply, into: Uint8Array = new Uint8Array(NBD_SIMPLE_REPLY_SIZE)): Uint8Array {
  const v = viewOf(into);
  v.setUint32(0, NBD_SIMPLE_REPLY_MAGIC);
  v.setUint32(4, r.error);
  v.setBigUint64(8, r.handle);
  return into;
}

/** A structured reply chunk's header; `length` bytes of payload follow it. */
export interface ChunkHeader {
  flags: number;
  type: number;
  handle: bigint;
  length: number;
}

export function encodeChunkHeader(h: ChunkHeader, into: Uint8Array = new Uint8Array(NBD_STRUCTURED_REPLY_SIZE)): Uint8Array {
  const v = viewOf(into);
  v.setUint32(0, NBD_STRUCTURED_REPLY_MAGIC);
  v.setUint16(4, h.flags);
  v.setUint16(6, h.type);
  v.setBigUint64(8, h.handle);
  v.setUint32(16, h.length);
  return into;
}

/**
 * A reply's first bytes: the simple reply (16 bytes) or a structured chunk header (20 bytes),
 * told apart by the magic in the first 4; `bytes` must hold at least the 16 of a simple reply,
 * and 20 when the magic is the structured one.
 */
export type ReplyHeader = ({ kind: 'simple' } & SimpleReply) | ({ kind: 'chunk' } & ChunkHeader);

/** The header kind and size announced by a reply's first 4 bytes. */
export function replyHeaderSize(magic: number): number {
  if (magic === NBD_SIMPLE_REPLY_MAGIC) return NBD_SIMPLE_REPLY_SIZE;
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) return NBD_STRUCTURED_REPLY_SIZE;
  throw new FormatError(`Unexpected reply magic 0x${magic.toString(16)}`);
}

export function decodeReplyHeader(bytes: Uint8Array): ReplyHeader {
  const v = viewOf(bytes);
  const magic = v.getUint32(0);
  replyHeaderSize(magic);
  if (magic === NBD_SIMPLE_REPLY_MAGIC) return { kind: 'simple', error: v.getUint32(4), handle: v.getBigUint64(8) };
  return { kind: 'chunk', flags: v.getUint16(4), type: v.getUint16(6), handle: v.getBigUint64(8), length: v.getUint32(16) };
}

/** One extent of a block status chunk. */
export interface Extent {
  length: number;
  flags: number;
}

/** A structured chunk's payload. `data` of an offset-data chunk is a view into the payload. */
export type ChunkPayload =
  | { kind: 'none' }
  | { kind: 'data'; offset: number; data: Uint8Array }
  | { kind: 'hole'; offset: number; length: number }
  | { kind: 'status'; contextId: number; extents: Extent[] }
  | { kind: 'error'; error: number; message: string; offset?: number }
  | { kind: 'unknown'; type: number };

/** The chunk type of a payload. */
export function chunkType(p: ChunkPayload): number {
  switch (p.kind) {
    case 'none':
      return NBD_REPLY_TYPE_NONE;
    case 'data':
      return NBD_REPLY_TYPE_OFFSET_DATA;
    case 'hole':
      return NBD_REPLY_TYPE_OFFSET_HOLE;
    case 'status':
      return NBD_REPLY_TYPE_BLOCK_STATUS;
    case 'error':
      return p.offset === undefined ? NBD_REPLY_TYPE_ERROR : NBD_REPLY_TYPE_ERROR_OFFSET;
    case 'unknown':
      return p.type;
  }
}

/**
 * The payload bytes of a chunk, except an offset-data chunk's data, which the sender writes
 * after these bytes (to avoid copying it): for 'data' this is only the 8-byte offset.
 */
export function encodeChunkPayload(p: ChunkPayload): Uint8Array {
  switch (p.kind) {
    case 'none':
    case 'unknown':
      return new Uint8Array(0);
    case 'data': {
      const b = new Uint8Array(8);
      viewOf(b).setBigUint64(0, BigInt(p.offset));
      return b;
    }
    case 'hole': {
      const b = new Uint8Array(12);
      const v = viewOf(b);
      v.setBigUint64(0, BigInt(p.offset));
      v.setUint32(8, p.length);
      return b;
    }
    case 'status': {
      const b = new Uint8Array(4 + 8 * p.extents.length);
      const v = viewOf(b);
      v.setUint32(0, p.contextId);
      p.extents.forEach((e, i) => {
        v.setUint32(4 + 8 * i, e.length);
        v.setUint32(8 + 8 * i, e.flags);
      });
      return b;
    }
    case 'error': {
      const msg = utf8.encode(p.message);
      const extra = p.offset === undefined ? 0 : 8;
      const b = new Uint8Array(6 + msg.length + extra);
      const v = viewOf(b);
      v.setUint32(0, p.error);
      v.setUint16(4, msg.length);
      b.set(msg, 6);
      if (p.offset !== undefined) v.setBigUint64(6 + msg.length, BigInt(p.offset));
      return b;
    }
  }
}

/** Decodes a whole chunk payload of `type` (for 'data', the offset and the data after it). */
export function decodeChunkPayload(type: number, bytes: Uint8Array): ChunkPayload {
  const v = viewOf(bytes);
  const bad = (what: string): never => {
    throw new FormatError(`Protocol error: invalid payload for ${what}`);
  };
  switch (type) {
    case NBD_REPLY_TYPE_NONE:
      if (bytes.length !== 0) bad('NBD_REPLY_TYPE_NONE');
      return { kind: 'none' };
    case NBD_REPLY_TYPE_OFFSET_DATA:
      if (bytes.length <= 8) bad('NBD_REPLY_TYPE_OFFSET_DATA');
      return { kind: 'data', offset: Number(v.getBigUint64(0)), data: bytes.subarray(8) };
    case NBD_REPLY_TYPE_OFFSET_HOLE:
      if (bytes.length !== 12) bad('NBD_REPLY_TYPE_OFFSET_HOLE');
      return { kind: 'hole', offset: Number(v.getBigUint64(0)), length: v.getUint32(8) };
    case NBD_REPLY_TYPE_BLOCK_STATUS: {
      if (bytes.length < 12 || (bytes.length - 4) % 8 !== 0) bad('NBD_REPLY_TYPE_BLOCK_STATUS');
      const extents: Extent[] = [];
      for (let at = 4; at < bytes.length; at += 8) extents.push({ length: v.getUint32(at), flags: v.getUint32(at + 4) });
      return { kind: 'status', contextId: v.getUint32(0), extents };
    }
    case NBD_REPLY_TYPE_ERROR:
    case NBD_REPLY_TYPE_ERROR_OFFSET: {
      if (bytes.length < 6) bad('NBD_REPLY_TYPE_ERROR');
      const len = v.getUint16(4);
      const extra = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
      if (bytes.length !== 6 + len + extra) bad('NBD_REPLY_TYPE_ERROR');
      const out: ChunkPayload = { kind: 'error', error: v.getUint32(0), message: fromUtf8.decode(bytes.subarray(6, 6 + len)) };
      if (extra) out.offset = Number(v.getBigUint64(6 + len));
      return out;
    }
    default:
      return { kind: 'unknown', type };
  }
}
