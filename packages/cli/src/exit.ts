/**
 * How the CLI ends: `CliExit` carries an exit status and an optional one-line message
 * (printed as `tsimg: <message>` on stderr), and `errorMessage` turns library errors into
 * qemu-img's wording.
 */
import { TsimgError } from '@tsimg/raw';

/** Thrown by command code to stop with `status`; `message` (if any) is printed after `tsimg: `. */
export class CliExit extends Error {
  readonly status: number;
  constructor(status: number, message?: string) {
    super(message ?? '');
    this.name = 'CliExit';
    this.status = status;
  }
}

/** The one-line text for any thrown value, as qemu-img would print it after `qemu-img: `. */
export function errorMessage(err: unknown): string {
  if (err instanceof TsimgError || err instanceof CliExit) return err.message;
  if (err && typeof err === 'object' && 'code' in err && 'message' in err) {
    // node:fs errors: qemu prints strerror text, e.g. "No such file or directory".
    return osErrorText(err as NodeJS.ErrnoException);
  }
  return String(err instanceof Error ? err.message : err);
}

const STRERROR: Record<string, string> = {
  ENOENT: 'No such file or directory',
  EACCES: 'Permission denied',
  EPERM: 'Operation not permitted',
  EISDIR: 'Is a directory',
  ENOTDIR: 'Not a directory',
  EEXIST: 'File exists',
  ENOSPC: 'No space left on device',
  EIO: 'Input/output error',
  EINVAL: 'Invalid argument',
  EFBIG: 'File too large',
  EROFS: 'Read-only file system',
  ENOTSUP: 'Operation not supported',
  EBUSY: 'Device or resource busy',
  ENOMEM: 'Cannot allocate memory',
};

/** strerror()-style text for a Node errno error, the way qemu words OS errors. */
export function osErrorText(err: NodeJS.ErrnoException): string {
  return (err.code && STRERROR[err.code]) ?? err.message;
}
