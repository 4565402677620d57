/**
 * The QAPI visitor's view of QemuOpts values, as qemu_opts_to_qdict plus the visit of a
 * BlockdevCreateOptions member sees them: bools, C integers and enum members, with its messages.
 */
import { UsageError } from '@tsimg/raw';
import type { QemuOpts } from './qemu-opts.js';

/** A bool option's value as the visitor reads it; undefined when absent. */
export function qapiBool(opts: QemuOpts, name: string): boolean | undefined {
  const e = opts.get(name);
  return e === undefined ? undefined : (e.value as boolean);
}

/** The visitor's refusal of a value that is no member of the enum `param`. */
export function enumError(param: string, value: string): never {
  throw new UsageError(`Parameter '${param}' does not accept value '${value}'`);
}

/** qemu_strtoi64(str, NULL, 0) for a QAPI int such as refcount-bits. */
export function qapiInt(param: string, str: string): bigint {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(str);
  if (!m) throw new UsageError(`Parameter '${param}' expects integer`);
  const d = m[2]!;
  const abs = /^0[xX]/.test(d) ? BigInt(d) : d.length > 1 && d[0] === '0' ? BigInt(`0o${d.slice(1)}`) : BigInt(d);
  const v = m[1] === '-' ? -abs : abs;
  if (v > (1n << 63n) - 1n || v < -(1n << 63n)) throw new UsageError(`Parameter '${param}' expects integer`);
  return v;
}

/** The preallocation modes BlockdevCreateOptions accept (PreallocMode), checked as the visit does. */
export function checkPreallocation(prealloc: string | undefined): void {
  if (prealloc !== undefined && !['off', 'metadata', 'falloc', 'full'].includes(prealloc)) enumError('preallocation', prealloc);
}
