/**
 * The NBD protocol's numbers, named as in the specification (doc/proto.md of the NBD project)
 * and qemu's include/block/nbd.h: magics, handshake and transmission flags, option and reply
 * types, commands, structured reply chunk types, errors and the limits qemu enforces.
 *
 * Sizes on the wire are big-endian. 64-bit fields other than magics and handles (offsets,
 * sizes) are JS numbers here: safe up to 2^53, beyond any export; a larger offset from a peer
 * decodes to an inexact number that is past the end all the same and is refused as such.
 */

/** "NBDMAGIC": the first 8 bytes a server sends. */
export const NBD_INIT_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": newstyle greeting, and the prefix of every option request. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** The oldstyle greeting's second magic (never sent by tsimg; refused by its client). */
export const NBD_CLIENT_MAGIC = 0x0000420281861253n;
/** Prefix of every option reply. */
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server → client, 16 bits). */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Client flags (client → server, 32 bits). */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

/** Transmission flags of an export (16 bits). */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

/** Option types. */
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_PEEK_EXPORT = 4;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

/** Option reply types; errors have bit 31 set (added, not OR-ed: `|` would make them negative). */
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

/** NBD_REP_INFO item types (NBD_OPT_INFO / NBD_OPT_GO). */
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

/** Commands (16 bits). */
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;
export const NBD_CMD_RESIZE = 8;

/** Command flags (16 bits). */
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

/** Structured reply chunk flags and types; error types have bit 15 set. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) | 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2;

/** base:allocation extent flags. */
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;
/** qemu:dirty-bitmap:NAME extent flag. */
export const NBD_STATE_DIRTY = 1 << 0;

/** Error values on the wire (Linux's numbers, as the spec fixes them). */
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/** The wire error for an errno name (qemu's system_errno_to_nbd_errno); EIO for the rest. */
export function nbdErrno(errno: string | undefined): number {
  switch (errno) {
    case 'EPERM':
    case 'EROFS':
      return NBD_EPERM;
    case 'ENOMEM':
      return NBD_ENOMEM;
    case 'EINVAL':
      return NBD_EINVAL;
    case 'ENOSPC':
    case 'EFBIG':
    case 'EDQUOT':
      return NBD_ENOSPC;
    case 'EOVERFLOW':
      return NBD_EOVERFLOW;
    case 'ENOTSUP':
      return NBD_ENOTSUP;
    case 'ESHUTDOWN':
      return NBD_ESHUTDOWN;
    default:
      return NBD_EIO;
  }
}

/** The errno name of a wire error (unknown values read as EINVAL, as the spec asks). */
export function errnoOfNbd(error: number): string {
  const names: Record<number, string> = {
    [NBD_EPERM]: 'EPERM', [NBD_EIO]: 'EIO', [NBD_ENOMEM]: 'ENOMEM', [NBD_EINVAL]: 'EINVAL', [NBD_ENOSPC]: 'ENOSPC',
    [NBD_EOVERFLOW]: 'EOVERFLOW', [NBD_ENOTSUP]: 'ENOTSUP', [NBD_ESHUTDOWN]: 'ESHUTDOWN',
  };
  return names[error] ?? 'EINVAL';
}

/** qemu's NBD_MAX_BUFFER_SIZE: the largest read or write payload (32 MiB). */
export const NBD_MAX_BUFFER_SIZE = 32 * 1024 * 1024;
/** qemu's NBD_MAX_STRING_SIZE: export names, descriptions, context names. */
export const NBD_MAX_STRING_SIZE = 4096;
/** qemu's NBD_MAX_BLOCK_STATUS_EXTENTS: extents in one block status chunk. */
export const NBD_MAX_BLOCK_STATUS_EXTENTS = (1024 * 1024) / 8;
/** qemu's NBD_DEFAULT_PORT. */
export const NBD_DEFAULT_PORT = 10809;
/** Bytes of the request header, simple reply header and structured chunk header. */
export const NBD_REQUEST_SIZE = 28;
export const NBD_SIMPLE_REPLY_SIZE = 16;
export const NBD_STRUCTURED_REPLY_SIZE = 20;
/** qemu's MAX_NBD_REQUESTS: requests one connection has in flight at most. */
export const NBD_MAX_REQUESTS = 16;
