/**
 * The server side of the fixed newstyle handshake, option by option as qemu 7.2's
 * nbd_negotiate_options answers them: EXPORT_NAME, ABORT, LIST, STARTTLS (refused: no TLS),
 * INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT, with qemu's error
 * replies and texts.
 */
import { FormatError, TsimgError } from '@tsimg/raw';
import { exportSize, metaContextNames, type MetaSelection, type NbdExport, selectMetaContexts, transmissionFlags } from './export.js';
import {
  decodeInfoRequest, decodeMetaContextRequest, decodeOptionHeader, encodeExportNameReply, encodeGreeting, encodeInfoItem,
  encodeMetaContextReply, encodeOptionReplyHeader, encodeServerEntry, OPTION_HEADER_SIZE,
} from './handshake-codec.js';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES, NBD_INFO_NAME,
  NBD_MAX_BUFFER_SIZE, NBD_MAX_STRING_SIZE, NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK,
  NBD_REP_ERR_INVALID, NBD_REP_ERR_POLICY, NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP, NBD_REP_INFO, NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
} from './protocol.js';
import type { SocketIO } from './socket-io.js';

/** What a finished handshake agreed on. */
export interface Negotiated {
  exp: NbdExport;
  structured: boolean;
  /** The metadata contexts block status answers for (empty: block status refused). */
  meta: MetaSelection;
}

/** qemu's nbd_opt_lookup names, for its messages. */
const OPTION_NAMES: Record<number, string> = {
  [NBD_OPT_EXPORT_NAME]: 'export name',
  [NBD_OPT_ABORT]: 'abort',
  [NBD_OPT_LIST]: 'list',
  4: 'peek export',
  [NBD_OPT_STARTTLS]: 'starttls',
  [NBD_OPT_INFO]: 'info',
  [NBD_OPT_GO]: 'go',
  [NBD_OPT_STRUCTURED_REPLY]: 'structured reply',
  [NBD_OPT_LIST_META_CONTEXT]: 'list meta context',
  [NBD_OPT_SET_META_CONTEXT]: 'set meta context',
};

export function optionName(option: number): string {
  return OPTION_NAMES[option] ?? '<unknown>';
}

const fromUtf8 = new TextDecoder();

/** qemu's nbd_sanitize_name: long names are cut for messages. */
function sanitized(name: string): string {
  return name.length > 80 ? `${name.slice(0, 80)}...` : name;
}

/**
 * Runs the handshake on a fresh connection. Resolves with what was agreed, or undefined when
 * the client aborted; rejects (FormatError / IoError) when the client must be dropped.
 */
export async function negotiate(io: SocketIO, exports: readonly NbdExport[]): Promise<Negotiated | undefined> {
  await io.write(encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
  let flags = new DataView((await io.readExactly(4)).slice().buffer).getUint32(0);
  const fixed = (flags & NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
  flags &= ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  if (flags !== 0) throw new FormatError(`Unknown client flags 0x${flags.toString(16)} received`);
  let structured = false;
  let meta: { exp: NbdExport; sel: MetaSelection } | undefined;
  const find = (name: string): NbdExport | undefined => exports.find((e) => e.name === name);

  for (;;) {
    const { option, length } = decodeOptionHeader(await io.readExactly(OPTION_HEADER_SIZE));
    if (length > NBD_MAX_BUFFER_SIZE) throw new FormatError(`len (${length}) is larger than max len (${NBD_MAX_BUFFER_SIZE})`);
    const data = (await io.readExactly(length)).slice();
    const reply = (type: number, payload: Uint8Array = new Uint8Array(0)): Promise<void> =>
      io.write(encodeOptionReplyHeader({ option, type, length: payload.length }), payload);
    const error = (type: number, message: string): Promise<void> => reply(type, new TextEncoder().encode(message));
    const badLength = (): Promise<void> => error(NBD_REP_ERR_INVALID, `option '${optionName(option)}' has unexpected length`);

    if (!fixed) {
      if (option !== NBD_OPT_EXPORT_NAME) throw new FormatError(`Unsupported option ${option} (${optionName(option)})`);
    }
    switch (option) {
      case NBD_OPT_EXPORT_NAME: {
        const exp = find(fromUtf8.decode(data));
        if (exp === undefined) throw new FormatError('export not found');
        await io.write(encodeExportNameReply(exportSize(exp), transmissionFlags(exp, structured), noZeroes));
        return { exp, structured, meta: meta?.exp === exp ? meta.sel : emptySelection() };
      }
      case NBD_OPT_ABORT:
        await reply(NBD_REP_ACK).catch(() => undefined);
        return undefined;
      case NBD_OPT_LIST:
        if (length !== 0) {
          await badLength();
          break;
        }
        for (const e of exports) await reply(NBD_REP_SERVER, encodeServerEntry({ name: e.name, description: e.description ?? '' }));
        await reply(NBD_REP_ACK);
        break;
      case NBD_OPT_STARTTLS:
        if (length !== 0) await badLength();
        else await error(NBD_REP_ERR_POLICY, 'TLS not configured');
        break;
      case NBD_OPT_STRUCTURED_REPLY:
        if (length !== 0) await badLength();
        else if (structured) await error(NBD_REP_ERR_INVALID, 'structured reply already negotiated');
        else {
          await reply(NBD_REP_ACK);
          structured = true;
        }
        break;
      case NBD_OPT_INFO:
      case NBD_OPT_GO: {
        let req;
        try {
          req = decodeInfoRequest(data);
        } catch {
          await badLength();
          break;
        }
        if (req.name.length > NBD_MAX_STRING_SIZE) {
          await error(NBD_REP_ERR_INVALID, 'name too long');
          break;
        }
        const exp = find(req.name);
        if (exp === undefined) {
          await error(NBD_REP_ERR_UNKNOWN, `export '${sanitized(req.name)}' not present`);
          break;
        }
        const info = (item: Parameters<typeof encodeInfoItem>[0]): Promise<void> => reply(NBD_REP_INFO, encodeInfoItem(item));
        if (req.requests.includes(NBD_INFO_NAME)) await info({ kind: 'name', name: exp.name });
        if (exp.description !== undefined) await info({ kind: 'description', description: exp.description });
        // qemu sends the block sizes always: minimum 1 (tsimg's request alignment, as qemu's for
        // a file without O_DIRECT), preferred 4096, maximum qemu's buffer limit.
        await info({ kind: 'block-size', minimum: 1, preferred: 4096, maximum: NBD_MAX_BUFFER_SIZE });
        await info({ kind: 'export', size: exportSize(exp), flags: transmissionFlags(exp, structured) });
        await reply(NBD_REP_ACK);
        if (option === NBD_OPT_GO) return { exp, structured, meta: meta?.exp === exp ? meta.sel : emptySelection() };
        break;
      }
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT: {
        const list = option === NBD_OPT_LIST_META_CONTEXT;
        if (!list && !structured) {
          await error(NBD_REP_ERR_INVALID, `request option '${optionName(option)}' when structured reply is not negotiated`);
          break;
        }
        if (!list) meta = undefined;
        let req;
        try {
          req = decodeMetaContextRequest(data);
        } catch (err) {
          if (!(err instanceof TsimgError)) throw err;
          await badLength();
          break;
        }
        const exp = find(req.exportName);
        if (exp === undefined) {
          await error(NBD_REP_ERR_UNKNOWN, `export '${sanitized(req.exportName)}' not present`);
          break;
        }
        const queries = req.queries.filter((q) => q.length <= NBD_MAX_STRING_SIZE);
        const sel = selectMetaContexts(exp, queries, list);
        // nbd_negotiate_send_meta_context: a listed context's id means nothing, and is 0.
        for (const ctx of metaContextNames(exp, sel)) {
          await reply(NBD_REP_META_CONTEXT, encodeMetaContextReply({ id: list ? 0 : ctx.id, name: ctx.name }));
        }
        await reply(NBD_REP_ACK);
        if (!list) meta = { exp, sel };
        break;
      }
      default:
        await error(NBD_REP_ERR_UNSUP, `Unsupported option ${option} (${optionName(option)})`);
    }
  }
}

function emptySelection(): MetaSelection {
  return { baseAllocation: false, allocationDepth: false, bitmaps: [] };
}
