/**
 * The errors of `convert`'s copy loop: a failed request becomes a {@link ConvertError} whose
 * message is the line qemu-img prints for it.
 */
import { IoError, TsimgError, strerror } from '@tsimg/raw';

/** The strerror text qemu prints for a failed request (EIO when the cause names no errno). */
export function reason(err: unknown): string {
  const errno = err instanceof TsimgError ? err.errno : (err as { code?: unknown } | null)?.code;
  return strerror(typeof errno === 'string' ? errno : 'EIO');
}

/**
 * A request of the copy loop failed; the message is the line qemu-img prints for it, the
 * original error is the `cause`.
 */
export class ConvertError extends IoError {
  constructor(op: 'read' | 'write' | 'status', offset: number, cause: unknown) {
    const text =
      op === 'status'
        ? `error while reading block status at offset ${offset}: ${reason(cause)}`
        : `error while ${op === 'read' ? 'reading' : 'writing'} at byte ${offset}: ${reason(cause)}`;
    super(text, { cause, errno: cause instanceof TsimgError ? cause.errno : undefined });
    this.name = 'ConvertError';
  }
}

/** Runs one request, turning its failure into a {@link ConvertError}. */
export async function request<T>(op: 'read' | 'write' | 'status', offset: number, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    throw err instanceof ConvertError ? err : new ConvertError(op, offset, err);
  }
}

/** Receives a salvage warning and the errors behind it (see ConvertCopyOptions.warn). */
export type Warn = (message: string, causes: readonly unknown[]) => void;
