/**
 * The prefixes qemu puts on an open failure ("Could not open 'x': ...", "Could not open backing
 * file: ..."), keeping the error's code and errno.
 */
import { TsimgError, IoError, errorWithCode } from '@tsimg/raw';

/** `err` with `prefix` before its message, keeping its code and errno (`io` for a foreign error). */
export function prefixedError(prefix: string, err: unknown): TsimgError {
  if (err instanceof TsimgError) {
    return errorWithCode(err.code, `${prefix}${err.message}`, { cause: err, errno: err.errno });
  }
  return new IoError(`${prefix}${err instanceof Error ? err.message : String(err)}`, { cause: err });
}

/** Wraps `err` as qemu-img's img_open words an open failure, keeping its hint line too. */
export function openError(name: string, err: unknown): TsimgError {
  const out = prefixedError(`Could not open '${name}': `, err);
  const hint = (err as { hint?: unknown }).hint;
  if (typeof hint === 'string') Object.assign(out, { hint });
  return out;
}
