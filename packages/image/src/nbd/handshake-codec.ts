/**
 * Codecs of the NBD handshake (fixed newstyle): the greeting, option requests and replies and
 * their payloads — pure encode/decode over bytes, no I/O. Decoders throw FormatError on bytes
 * that cannot be what they claim (a wrong magic, a length that overruns its payload).
 */
import { FormatError } from '@tsimg/raw';
import {
  NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION, NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INIT_MAGIC, NBD_OPTS_MAGIC, NBD_REP_MAGIC,
} from './protocol.js';

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function need(bytes: Uint8Array, end: number, what: string): void {
  if (end > bytes.length) throw new FormatError(`NBD ${what}: ${bytes.length} bytes, expected at least ${end}`);
}

/** Bytes of the server's newstyle greeting. */
export const GREETING_SIZE = 18;
/** Bytes of an option request header and of an option reply header. */
export const OPTION_HEADER_SIZE = 16;
export const OPTION_REPLY_HEADER_SIZE = 20;

/** The server's newstyle greeting: NBDMAGIC, IHAVEOPT, handshake flags. */
export function encodeGreeting(handshakeFlags: number): Uint8Array {
  const out = new Uint8Array(GREETING_SIZE);
  const v = viewOf(out);
  v.setBigUint64(0, NBD_INIT_MAGIC);
  v.setBigUint64(8, NBD_OPTS_MAGIC);
  v.setUint16(16, handshakeFlags);
  return out;
}

/** The handshake flags of a greeting; an oldstyle or foreign server is a FormatError. */
export function decodeGreeting(bytes: Uint8Array): number {
  need(bytes, GREETING_SIZE, 'greeting');
  const v = viewOf(bytes);
  if (v.getBigUint64(0) !== NBD_INIT_MAGIC) throw new FormatError('Bad initial magic received');
  if (v.getBigUint64(8) !== NBD_OPTS_MAGIC) throw new FormatError('Unsupported oldstyle or unknown server magic');
  return v.getUint16(16);
}

/** An option request's header; `length` bytes of data follow it. */
export interface OptionHeader {
  option: number;
  length: number;
}

export function encodeOptionHeader(h: OptionHeader): Uint8Array {
  const out = new Uint8Array(OPTION_HEADER_SIZE);
  const v = viewOf(out);
  v.setBigUint64(0, NBD_OPTS_MAGIC);
  v.setUint32(8, h.option);
  v.setUint32(12, h.length);
  return out;
}

export function decodeOptionHeader(bytes: Uint8Array): OptionHeader {
  need(bytes, OPTION_HEADER_SIZE, 'option');
  const v = viewOf(bytes);
  if (v.getBigUint64(0) !== NBD_OPTS_MAGIC) throw new FormatError('Bad magic received');
  return { option: v.getUint32(8), length: v.getUint32(12) };
}

/** An option reply's header; `length` bytes of data follow it. */
export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

export function encodeOptionReplyHeader(h: OptionReplyHeader): Uint8Array {
  const out = new Uint8Array(OPTION_REPLY_HEADER_SIZE);
  const v = viewOf(out);
  v.setBigUint64(0, NBD_REP_MAGIC);
  v.setUint32(8, h.option);
  v.setUint32(12, h.type);
  v.setUint32(16, h.length);
  return out;
}

export function decodeOptionReplyHeader(bytes: Uint8Array): OptionReplyHeader {
  need(bytes, OPTION_REPLY_HEADER_SIZE, 'option reply');
  const v = viewOf(bytes);
  if (v.getBigUint64(0) !== NBD_REP_MAGIC) throw new FormatError('Unexpected option reply magic');
  return { option: v.getUint32(8), type: v.getUint32(12), length: v.getUint32(16) };
}

/** Reads a u32-length-prefixed string at `at`; returns it and the offset after it. */
function readString(bytes: Uint8Array, at: number, what: string): [string, number] {
  need(bytes, at + 4, what);
  const len = viewOf(bytes).getUint32(at);
  need(bytes, at + 4 + len, what);
  return [fromUtf8.decode(bytes.subarray(at + 4, at + 4 + len)), at + 4 + len];
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  viewOf(b).setUint32(0, n);
  return b;
}

function prefixed(s: string): Uint8Array {
  const b = utf8.encode(s);
  return concat([u32(b.length), b]);
}

/** NBD_OPT_INFO / NBD_OPT_GO data: the export's name and the NBD_INFO_* items asked for. */
export interface InfoRequest {
  name: string;
  requests: number[];
}

export function encodeInfoRequest(r: InfoRequest): Uint8Array {
  const tail = new Uint8Array(2 + 2 * r.requests.length);
  const v = viewOf(tail);
  v.setUint16(0, r.requests.length);
  r.requests.forEach((q, i) => v.setUint16(2 + 2 * i, q));
  return concat([prefixed(r.name), tail]);
}

export function decodeInfoRequest(bytes: Uint8Array): InfoRequest {
  const [name, at] = readString(bytes, 0, 'NBD_OPT_INFO');
  need(bytes, at + 2, 'NBD_OPT_INFO');
  const v = viewOf(bytes);
  const n = v.getUint16(at);
  if (bytes.length !== at + 2 + 2 * n) throw new FormatError('NBD_OPT_INFO: request length does not match its item count');
  const requests: number[] = [];
  for (let i = 0; i < n; i++) requests.push(v.getUint16(at + 2 + 2 * i));
  return { name, requests };
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data. */
export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

export function encodeMetaContextRequest(r: MetaContextRequest): Uint8Array {
  return concat([prefixed(r.exportName), u32(r.queries.length), ...r.queries.map(prefixed)]);
}

export function decodeMetaContextRequest(bytes: Uint8Array): MetaContextRequest {
  let [exportName, at] = readString(bytes, 0, 'meta context request');
  need(bytes, at + 4, 'meta context request');
  const n = viewOf(bytes).getUint32(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < n; i++) {
    const [q, next] = readString(bytes, at, 'meta context request');
    queries.push(q);
    at = next;
  }
  if (at !== bytes.length) throw new FormatError('meta context request: trailing bytes');
  return { exportName, queries };
}

/** NBD_REP_SERVER data: one export of NBD_OPT_LIST. */
export interface ServerEntry {
  name: string;
  description: string;
}

export function encodeServerEntry(e: ServerEntry): Uint8Array {
  return concat([prefixed(e.name), utf8.encode(e.description)]);
}

export function decodeServerEntry(bytes: Uint8Array): ServerEntry {
  const [name, at] = readString(bytes, 0, 'NBD_REP_SERVER');
  return { name, description: fromUtf8.decode(bytes.subarray(at)) };
}

/** NBD_REP_META_CONTEXT data: a context's id for this connection, and its name. */
export interface MetaContextReply {
  id: number;
  name: string;
}

export function encodeMetaContextReply(r: MetaContextReply): Uint8Array {
  return concat([u32(r.id), utf8.encode(r.name)]);
}

export function decodeMetaContextReply(bytes: Uint8Array): MetaContextReply {
  need(bytes, 4, 'NBD_REP_META_CONTEXT');
  return { id: viewOf(bytes).getUint32(0), name: fromUtf8.decode(bytes.subarray(4)) };
}

/** One NBD_REP_INFO item. */
export type InfoItem =
  | { kind: 'export'; size: number; flags: number }
  | { kind: 'name'; name: string }
  | { kind: 'description'; description: string }
  | { kind: 'block-size'; minimum: number; preferred: number; maximum: number }
  | { kind: 'unknown'; type: number };

export function encodeInfoItem(item: InfoItem): Uint8Array {
  const head = (type: number, len: number): [Uint8Array, DataView] => {
    const b = new Uint8Array(2 + len);
    const v = viewOf(b);
    v.setUint16(0, type);
    return [b, v];
  };
  switch (item.kind) {
    case 'export': {
      const [b, v] = head(NBD_INFO_EXPORT, 10);
      v.setBigUint64(2, BigInt(item.size));
      v.setUint16(10, item.flags);
      return b;
    }
    case 'name':
    case 'description': {
      const text = utf8.encode(item.kind === 'name' ? item.name : item.description);
      const [b] = head(item.kind === 'name' ? NBD_INFO_NAME : NBD_INFO_DESCRIPTION, text.length);
      b.set(text, 2);
      return b;
    }
    case 'block-size': {
      const [b, v] = head(NBD_INFO_BLOCK_SIZE, 12);
      v.setUint32(2, item.minimum);
      v.setUint32(6, item.preferred);
      v.setUint32(10, item.maximum);
      return b;
    }
    case 'unknown':
      return head(item.type, 0)[0];
  }
}

export function decodeInfoItem(bytes: Uint8Array): InfoItem {
  need(bytes, 2, 'NBD_REP_INFO');
  const v = viewOf(bytes);
  const type = v.getUint16(0);
  const exact = (len: number): void => {
    if (bytes.length !== 2 + len) throw new FormatError(`NBD_REP_INFO type ${type}: unexpected length ${bytes.length - 2}`);
  };
  switch (type) {
    case NBD_INFO_EXPORT:
      exact(10);
      return { kind: 'export', size: Number(v.getBigUint64(2)), flags: v.getUint16(10) };
    case NBD_INFO_NAME:
      return { kind: 'name', name: fromUtf8.decode(bytes.subarray(2)) };
    case NBD_INFO_DESCRIPTION:
      return { kind: 'description', description: fromUtf8.decode(bytes.subarray(2)) };
    case NBD_INFO_BLOCK_SIZE:
      exact(12);
      return { kind: 'block-size', minimum: v.getUint32(2), preferred: v.getUint32(6), maximum: v.getUint32(10) };
    default:
      return { kind: 'unknown', type };
  }
}

/** The reply to NBD_OPT_EXPORT_NAME: size and flags, padded with 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Uint8Array {
  const out = new Uint8Array(noZeroes ? 10 : 134);
  const v = viewOf(out);
  v.setBigUint64(0, BigInt(size));
  v.setUint16(8, flags);
  return out;
}

export function decodeExportNameReply(bytes: Uint8Array): { size: number; flags: number } {
  need(bytes, 10, 'export name reply');
  const v = viewOf(bytes);
  return { size: Number(v.getBigUint64(0)), flags: v.getUint16(8) };
}
