/**
 * qemu-img info's two output forms, byte for byte as qemu 7.2 prints them: the human text
 * (block/qapi.c bdrv_image_info_dump, bdrv_snapshot_dump, dump_qobject) and the pretty JSON
 * (qobject_to_json_pretty), plus qemu's `size_to_str`. The QObject printing itself (QDict key
 * order, JSON escaping) is in qobject-output.ts; the ImageInfo objects from @tsimg/image are built
 * in QAPI schema order, which is what that key order needs.
 */
import { type ImageInfo, type SnapshotInfo } from '@tsimg/image';
import { encodeByteString } from '@tsimg/qcow2';
import { dumpQObject, toQemuJson, type QValue } from './qobject-output.js';

/** frexp's exponent: x = m * 2^e with m in [0.5, 1); 0 for x = 0. */
function frexpExponent(x: number): number {
  if (x === 0) return 0;
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const biased = (view.getUint16(0) >> 4) & 0x7ff;
  if (biased === 0) return frexpExponent(x * 2 ** 64) - 64; // subnormal (cannot happen for sizes)
  return biased - 1022;
}

function pow10(n: number): bigint {
  return 10n ** BigInt(n);
}

/** round(num / den) with ties to even, for non-negative bigints. */
function roundHalfEven(num: bigint, den: bigint): bigint {
  const q = num / den;
  const r2 = (num % den) * 2n;
  if (r2 > den || (r2 === den && q % 2n === 1n)) return q + 1n;
  return q;
}

/**
 * C's `%.<p>g` of the exact non-negative rational num/den (glibc rounds the exact binary
 * value, ties to even): fixed or exponent form, trailing zeros removed.
 */
export function formatG(num: bigint, den: bigint, p = 3): string {
  if (num === 0n) return '0';
  // Decimal exponent E with 10^E <= x < 10^(E+1).
  let e = num.toString().length - den.toString().length;
  const ge = (k: number): boolean => (k >= 0 ? num >= den * pow10(k) : num * pow10(-k) >= den);
  while (!ge(e)) e--;
  while (ge(e + 1)) e++;
  const shift = p - 1 - e;
  let n = shift >= 0 ? roundHalfEven(num * pow10(shift), den) : roundHalfEven(num, den * pow10(-shift));
  if (n === pow10(p)) {
    n = pow10(p - 1);
    e++;
  }
  const digits = n.toString();
  if (e < -4 || e >= p) {
    const mant = (digits[0] + '.' + digits.slice(1)).replace(/\.?0+$/, '');
    const exp = Math.abs(e).toString().padStart(2, '0');
    return `${mant}e${e < 0 ? '-' : '+'}${exp}`;
  }
  const decimals = p - 1 - e;
  if (decimals <= 0) return digits;
  const padded = digits.padStart(decimals + 1, '0');
  const s = padded.slice(0, padded.length - decimals) + '.' + padded.slice(padded.length - decimals);
  return s.replace(/0+$/, '').replace(/\.$/, '');
}

const SIZE_SUFFIXES = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];

/** qemu's size_to_str (util/cutils.c): "196 KiB", "2.19 MiB", "1 GiB", "512 B". */
export function sizeToStr(val: number | bigint): string {
  const big = BigInt.asUintN(64, BigInt(val));
  const asDouble = Number(big); // (double)val, as C converts it
  const i = Math.trunc((frexpExponent(asDouble / (1000.0 / 1024.0)) - 1) / 10);
  // (double)val / div: exact, since div is a power of two.
  return `${formatG(BigInt(asDouble), 1n << BigInt(i * 10))} ${SIZE_SUFFIXES[i]}B`;
}

/** printf("%-Ns") / ("%Ns") counting bytes, as C does. */
function padBytes(s: string, width: number, left: boolean): string {
  const n = encodeByteString(s).length;
  if (n >= width) return s;
  return left ? s + ' '.repeat(width - n) : ' '.repeat(width - n) + s;
}

function two(n: number): string {
  return String(n).padStart(2, '0');
}

/** The local date as "%Y-%m-%d %H:%M:%S" (GLib formats in the process's time zone, as JS does). */
function localDate(sec: number): string {
  const d = new Date(sec * 1000);
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/** C's "%02d" of an int (the value cast to 32 bits). */
function int02(v: bigint): string {
  const n = BigInt.asIntN(32, v);
  return n < 0n ? '-' + (-n).toString().padStart(1, '0') : n.toString().padStart(2, '0');
}

/** The snapshot list header line of bdrv_snapshot_dump (no newline). */
export function snapshotHeaderLine(): string {
  return padBytes('ID', 10, true) + padBytes('TAG', 17, true) + padBytes('VM SIZE', 8, false) +
    padBytes('DATE', 20, false) + padBytes('VM CLOCK', 13, false) + padBytes('ICOUNT', 11, false);
}

/** One snapshot line of bdrv_snapshot_dump (no newline). */
export function snapshotLine(sn: SnapshotInfo): string {
  const nsec = BigInt.asUintN(64, sn['vm-clock-sec'] * 1_000_000_000n + BigInt(sn['vm-clock-nsec']));
  const secs = nsec / 1_000_000_000n;
  const ms = (nsec / 1_000_000n) % 1000n;
  const clock = `${int02(secs / 3600n)}:${int02((secs / 60n) % 60n)}:${int02(secs % 60n)}.${BigInt.asIntN(32, ms).toString().padStart(3, '0')}`;
  const icount = sn.icount !== undefined ? sn.icount.toString() : '';
  return (
    padBytes(sn.id, 9, true) + ' ' + padBytes(sn.name, 16, true) + ' ' +
    padBytes(sizeToStr(BigInt.asUintN(64, sn['vm-state-size'])), 8, false) +
    padBytes(localDate(sn['date-sec']), 20, false) + padBytes(clock, 13, false) + padBytes(icount, 11, false)
  );
}

/** bdrv_image_info_dump: the human text for one image (ends with a newline). */
export function formatImageInfoHuman(info: ImageInfo): string {
  const disk = info['actual-size'] === undefined ? 'unavailable' : sizeToStr(info['actual-size']);
  let s =
    `image: ${info.filename}\n` +
    `file format: ${info.format}\n` +
    `virtual size: ${sizeToStr(info['virtual-size'])} (${info['virtual-size']} bytes)\n` +
    `disk size: ${disk}\n`;
  if (info.encrypted) s += 'encrypted: yes\n';
  if (info['cluster-size'] !== undefined) s += `cluster_size: ${info['cluster-size']}\n`;
  if (info['dirty-flag']) s += 'cleanly shut down: no\n';
  const backing = info['backing-filename'];
  if (backing !== undefined) {
    const full = info['full-backing-filename'];
    s += `backing file: ${backing}`;
    if (full === undefined) s += ' (cannot determine actual path)';
    else if (full !== backing) s += ` (actual path: ${full})`;
    s += '\n';
    if (info['backing-filename-format'] !== undefined) s += `backing file format: ${info['backing-filename-format']}\n`;
  }
  if (info.snapshots) {
    s += 'Snapshot list:\n' + snapshotHeaderLine() + '\n';
    for (const sn of info.snapshots) s += snapshotLine(sn) + '\n';
  }
  if (info['format-specific']) {
    s += 'Format specific information:\n' + dumpQObject(info['format-specific'].data as unknown as QValue, 1);
  }
  return s;
}

/** dump_human_image_info_list: images separated by a blank line. */
export function formatImageInfoListHuman(list: readonly ImageInfo[]): string {
  return list.map(formatImageInfoHuman).join('\n');
}

/** dump_json_image_info: one image as pretty JSON plus a newline. */
export function formatImageInfoJson(info: ImageInfo): string {
  return toQemuJson(info as unknown as QValue) + '\n';
}

/** dump_json_image_info_list: the chain as a pretty JSON array plus a newline. */
export function formatImageInfoListJson(list: readonly ImageInfo[]): string {
  return toQemuJson(list as unknown as QValue) + '\n';
}
