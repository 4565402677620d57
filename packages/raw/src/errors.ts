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
  | 'limit'; // a size or count beyond the limits qemu enforces

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
