/**
 * The client side of the fixed newstyle handshake, as qemu's nbd/client.c runs it for a block
 * device: structured replies, the `base:allocation` context, then NBD_OPT_GO (falling back to
 * NBD_OPT_EXPORT_NAME on servers without it), with qemu's messages for the server's refusals.
 */
import { FormatError, IoError, NotFoundError, TsimgError, UnsupportedError } from '@tsimg/raw';
import {
  decodeExportNameReply, decodeGreeting, decodeInfoItem, decodeMetaContextReply, decodeOptionReplyHeader, encodeInfoRequest,
  encodeMetaContextRequest, encodeOptionHeader, OPTION_REPLY_HEADER_SIZE, type OptionReplyHeader,
} from './handshake-codec.js';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES, NBD_INFO_BLOCK_SIZE,
  NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, NBD_REP_ERR_BLOCK_SIZE_REQD,
  NBD_REP_ERR_INVALID, NBD_REP_ERR_PLATFORM, NBD_REP_ERR_POLICY, NBD_REP_ERR_SHUTDOWN, NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP, NBD_REP_FLAG_ERROR, NBD_REP_INFO, NBD_REP_META_CONTEXT, NBD_MAX_BUFFER_SIZE,
} from './protocol.js';
import { optionName } from './server-negotiate.js';
import type { SocketIO } from './socket-io.js';

/** What the handshake learnt about the export. */
export interface ExportInfo {
  size: number;
  flags: number;
  structured: boolean;
  /** The id of base:allocation on this connection, when the server offers it. */
  baseAllocation?: number;
  /** The largest payload the server takes. */
  maxPayload: number;
}

const fromUtf8 = new TextDecoder();

async function sendOption(io: SocketIO, option: number, data: Uint8Array = new Uint8Array(0)): Promise<void> {
  await io.write(encodeOptionHeader({ option, length: data.length }), data);
}

async function readReply(io: SocketIO, option: number): Promise<{ h: OptionReplyHeader; data: Uint8Array }> {
  const h = decodeOptionReplyHeader(await io.readExactly(OPTION_REPLY_HEADER_SIZE));
  if (h.option !== option) {
    throw new FormatError(`Unexpected option type ${h.option} (${optionName(h.option)}), expected ${option} (${optionName(option)})`);
  }
  if (h.length > NBD_MAX_BUFFER_SIZE) throw new FormatError('length too long for option end');
  return { h, data: (await io.readExactly(h.length)).slice() };
}

/** nbd_handle_reply_err: the server's refusal as qemu words it, with its message as a hint. */
function replyError(h: OptionReplyHeader, data: Uint8Array): TsimgError {
  const o = `option ${h.option} (${optionName(h.option)})`;
  const texts: Record<number, string> = {
    [NBD_REP_ERR_POLICY]: `Denied by server for ${o}`,
    [NBD_REP_ERR_INVALID]: `Invalid parameters for ${o}`,
    [NBD_REP_ERR_PLATFORM]: `Server lacks support for ${o}`,
    [NBD_REP_ERR_TLS_REQD]: `TLS negotiation required before ${o}`,
    [NBD_REP_ERR_UNKNOWN]: 'Requested export not available',
    [NBD_REP_ERR_SHUTDOWN]: `Server shutting down before ${o}`,
    [NBD_REP_ERR_BLOCK_SIZE_REQD]: `Server requires INFO_BLOCK_SIZE for ${o}`,
  };
  const text = texts[h.type] ?? `Unknown error code when asking for ${o}`;
  const msg = fromUtf8.decode(data);
  const hint = msg !== '' ? `server reported: ${msg}` : undefined;
  const opts = { errno: 'EINVAL', hint };
  const err = h.type === NBD_REP_ERR_UNKNOWN ? new NotFoundError(text, opts) : new UnsupportedError(text, opts);
  if (hint !== undefined) Object.assign(err, { hint });
  return err;
}

/** Negotiates `exportName` on a fresh connection. */
export async function clientNegotiate(io: SocketIO, exportName: string): Promise<ExportInfo> {
  const handshake = decodeGreeting(await io.readExactly(18));
  if ((handshake & NBD_FLAG_FIXED_NEWSTYLE) === 0) throw new UnsupportedError('Server does not support fixed newstyle negotiation');
  const noZeroes = (handshake & NBD_FLAG_NO_ZEROES) !== 0;
  const cflags = new Uint8Array(4);
  new DataView(cflags.buffer).setUint32(0, NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0));
  await io.write(cflags);

  await sendOption(io, NBD_OPT_STRUCTURED_REPLY);
  const sr = await readReply(io, NBD_OPT_STRUCTURED_REPLY);
  const structured = sr.h.type === NBD_REP_ACK;

  let baseAllocation: number | undefined;
  if (structured) {
    await sendOption(io, NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest({ exportName, queries: ['base:allocation'] }));
    for (;;) {
      const r = await readReply(io, NBD_OPT_SET_META_CONTEXT);
      if (r.h.type === NBD_REP_META_CONTEXT) {
        const ctx = decodeMetaContextReply(r.data);
        if (ctx.name === 'base:allocation') baseAllocation = ctx.id;
      } else {
        // ACK, or an error: a server without meta contexts serves without block status.
        break;
      }
    }
  }

  await sendOption(io, NBD_OPT_GO, encodeInfoRequest({ name: exportName, requests: [NBD_INFO_BLOCK_SIZE] }));
  let size: number | undefined;
  let flags = 0;
  let maxPayload = NBD_MAX_BUFFER_SIZE;
  for (;;) {
    const r = await readReply(io, NBD_OPT_GO);
    if (r.h.type === NBD_REP_INFO) {
      const item = decodeInfoItem(r.data);
      if (item.kind === 'export') {
        size = item.size;
        flags = item.flags;
      } else if (item.kind === 'block-size') {
        maxPayload = Math.min(maxPayload, item.maximum);
      }
      continue;
    }
    if (r.h.type === NBD_REP_ACK) {
      if (size === undefined) throw new FormatError('broken server omitted NBD_INFO_EXPORT');
      return { size, flags, structured, baseAllocation, maxPayload };
    }
    if (r.h.type === NBD_REP_ERR_UNSUP) break; // an old server: NBD_OPT_EXPORT_NAME instead
    if ((r.h.type & NBD_REP_FLAG_ERROR) !== 0) {
      // nbd_send_opt_abort: tell the server we are going, before hanging up.
      await sendOption(io, NBD_OPT_ABORT).catch(() => undefined);
      throw replyError(r.h, r.data);
    }
    throw new FormatError(`Server answered option ${NBD_OPT_GO} (go) with unexpected reply type ${r.h.type}`);
  }
  await sendOption(io, NBD_OPT_EXPORT_NAME, new TextEncoder().encode(exportName));
  let reply: Uint8Array;
  try {
    reply = await io.readExactly(noZeroes ? 10 : 134);
  } catch (err) {
    throw new IoError(`No export with name '${exportName}' available`, { errno: 'EINVAL', cause: err });
  }
  const { size: s, flags: f } = decodeExportNameReply(reply);
  return { size: s, flags: f, structured, baseAllocation, maxPayload };
}
