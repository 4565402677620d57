/** The prefix qemu-img's img_open puts on an open failure: "Could not open 'x': ...". */
import { TsimgError } from '@tsimg/raw';

/** Wraps `err` as qemu words an open failure, keeping its code, errno and hint line. */
export function openError(name: string, err: unknown): TsimgError {
  const inner = err instanceof TsimgError ? err : new TsimgError('io', String(err instanceof Error ? err.message : err));
  const hint = (err as { hint?: unknown }).hint;
  const out = new TsimgError(inner.code, `Could not open '${name}': ${inner.message}`, { cause: err, errno: inner.errno });
  if (typeof hint === 'string') Object.assign(out, { hint });
  return out;
}
