/**
 * Typed errors for every tsimg package. Library code throws these; only the CLI turns them into
 * a `tsimg: ...` line and an exit status.
 */

/** Machine-readable error categories. */
export type TsimgErrorCode =
  | 'format' // the bytes on disk are not a valid image of the claimed format
  | 'unsupported' // valid, but a feature tsimg (or qemu-img) does not handle
  | 'io' // the device failed (EIO, ENOSPC, short file, ...)
  | 'usage' // the caller asked for something impossible (bad size, bad option)
  | 'corrupt' // the image is marked or found corrupt; writes are refused
  | 'not-found' // a file, snapshot or bitmap that does not exist
  | 'read-only' // a write to a device opened read-only
  | 'limit' // a size or count beyond the limits qemu enforces
  | 'locked'; // another process (or open) holds a conflicting image lock

/** Base class of all tsimg errors: `code` says what kind, `message` is one line for a person. */
export class TsimgError extends Error {
  readonly code: TsimgErrorCode;
  /** errno-style value when the error mirrors an OS error qemu would print (e.g. 'EINVAL'). */
  readonly errno?: string;
  constructor(code: TsimgErrorCode, message: string, options?: { cause?: unknown; errno?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TsimgError';
    this.code = code;
    this.errno = options?.errno;
  }
}

/** The image's bytes are malformed. */
export class FormatError extends TsimgError {
  constructor(message: string, options?: { cause?: unknown; errno?: string }) {
    super('format', message, options);
    this.name = 'FormatError';
  }
}

/** A valid image that uses something not supported. */
export class UnsupportedError extends TsimgError {
  constructor(message: string, options?: { cause?: unknown; errno?: string }) {
    super('unsupported', message, options);
    this.name = 'UnsupportedError';
  }
}

/** The underlying storage failed. */
export class IoError extends TsimgError {
  constructor(message: string, options?: { cause?: unknown; errno?: string }) {
    super('io', message, options);
    this.name = 'IoError';
  }
}

/** Invalid arguments from the caller. */
export class UsageError extends TsimgError {
  constructor(message: string, options?: { cause?: unknown; errno?: string }) {
    super('usage', message, options);
    this.name = 'UsageError';
  }
}

/** A write, discard or resize reached a device opened read-only. */
export class ReadOnlyError extends TsimgError {
  constructor(message = 'Block node is read-only', options?: { cause?: unknown; errno?: string }) {
    super('read-only', message, { errno: 'EPERM', ...options });
    this.name = 'ReadOnlyError';
  }
}

/**
 * An image lock could not be taken: another user of the file holds a conflicting permission
 * (qemu's file-posix: `Failed to get "write" lock`, `Failed to get shared "write" lock`), or a
 * lock byte could not be set. `hint` is qemu's second line, `Is another process using the
 * image [NAME]?`, present when a conflict was found (qemu's error_append_hint); the CLI prints
 * it on a line of its own after the message.
 */
export class LockError extends TsimgError {
  /** qemu's hint line (without a newline), or undefined when qemu prints none. */
  readonly hint?: string;
  constructor(message: string, options?: { cause?: unknown; errno?: string; hint?: string }) {
    super('locked', message, { errno: 'EAGAIN', ...options });
    this.name = 'LockError';
    this.hint = options?.hint;
  }
}

/** The image is marked or found corrupt: qemu refuses to write it (and says so once). */
export class CorruptError extends TsimgError {
  constructor(message: string, options?: { cause?: unknown; errno?: string }) {
    super('corrupt', message, options);
    this.name = 'CorruptError';
  }
}

/** A file, snapshot or bitmap that does not exist. */
export class NotFoundError extends TsimgError {
  constructor(message: string, options?: { cause?: unknown; errno?: string }) {
    super('not-found', message, options);
    this.name = 'NotFoundError';
  }
}

/** A size or count beyond what qemu accepts (a table too large, a chain too deep). */
export class LimitError extends TsimgError {
  constructor(message: string, options?: { cause?: unknown; errno?: string }) {
    super('limit', message, options);
    this.name = 'LimitError';
  }
}

/**
 * An HTTP(S) image could not be read: the server answered with an error status, refused byte
 * ranges, sent a response that does not match the request, changed the file under us (its ETag
 * or Last-Modified moved), or could not be reached in time. `status` is the HTTP status when
 * there was one; `retryable` says whether asking again may help (network errors, 5xx, stalls).
 */
export class HttpError extends IoError {
  readonly url: string;
  readonly status?: number;
  readonly retryable: boolean;
  constructor(message: string, options: { url: string; status?: number; retryable?: boolean; cause?: unknown }) {
    super(message, { cause: options.cause, errno: 'EIO' });
    this.name = 'HttpError';
    this.url = options.url;
    this.status = options.status;
    this.retryable = options.retryable ?? false;
  }
}

/** The subclass each code's errors are instances of. */
const CLASS_OF: { readonly [C in TsimgErrorCode]: new (message: string, options?: { cause?: unknown; errno?: string }) => TsimgError } = {
  format: FormatError,
  unsupported: UnsupportedError,
  io: IoError,
  usage: UsageError,
  corrupt: CorruptError,
  'not-found': NotFoundError,
  'read-only': ReadOnlyError,
  limit: LimitError,
  locked: LockError,
};

/**
 * An error of `code` as an instance of that code's subclass: for code that passes a code along
 * (re-wording an error with a prefix, keeping what kind it is). A `hint` is kept too.
 */
export function errorWithCode(
  code: TsimgErrorCode,
  message: string,
  options?: { cause?: unknown; errno?: string; hint?: string },
): TsimgError {
  const err = new CLASS_OF[code](message, options);
  if (options?.hint !== undefined && !(err instanceof LockError)) Object.assign(err, { hint: options.hint });
  return err;
}

// glibc's strerror texts, so messages read like qemu's ("Could not open 'x': No such file or directory").
const STRERROR: Readonly<Record<string, string>> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  EIO: 'Input/output error',
  ENXIO: 'No such device or address',
  EBADF: 'Bad file descriptor',
  EAGAIN: 'Resource temporarily unavailable',
  ENOMEM: 'Cannot allocate memory',
  EACCES: 'Permission denied',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  ENODEV: 'No such device',
  ENOTDIR: 'Not a directory',
  EISDIR: 'Is a directory',
  EINVAL: 'Invalid argument',
  EMFILE: 'Too many open files',
  EFBIG: 'File too large',
  ENOSPC: 'No space left on device',
  ESPIPE: 'Illegal seek',
  EROFS: 'Read-only file system',
  ENAMETOOLONG: 'File name too long',
  ENOSYS: 'Function not implemented',
  ELOOP: 'Too many levels of symbolic links',
  EOVERFLOW: 'Value too large for defined data type',
  ENOTSUP: 'Operation not supported',
  ENOLCK: 'No locks available',
  EADDRINUSE: 'Address already in use',
  EADDRNOTAVAIL: 'Cannot assign requested address',
  ECONNREFUSED: 'Connection refused',
  ECONNRESET: 'Connection reset by peer',
  EPIPE: 'Broken pipe',
  ETIMEDOUT: 'Connection timed out',
  EHOSTUNREACH: 'No route to host',
  ENETUNREACH: 'Network is unreachable',
  EDQUOT: 'Disk quota exceeded',
};

/** The C library's text for an errno name (`'ENOENT'` → `'No such file or directory'`). */
export function strerror(errno: string): string {
  return STRERROR[errno] ?? errno;
}

/**
 * Turns whatever an OS call threw into a TsimgError: `"<context>: <strerror>"`, with `errno`
 * kept. ENOENT becomes `not-found`, every other OS error `io`; a TsimgError passes through.
 */
export function systemError(err: unknown, context: string): TsimgError {
  if (err instanceof TsimgError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  const errno = typeof code === 'string' ? code : undefined;
  const reason = errno !== undefined ? strerror(errno) : err instanceof Error ? err.message : String(err);
  const message = `${context}: ${reason}`;
  if (errno === 'ENOENT') return new NotFoundError(message, { cause: err, errno });
  return new IoError(message, { cause: err, errno });
}
