/**
 * qemu-img info's two output forms, byte for byte as qemu 7.2 prints them: the human text
 * (block/qapi.c bdrv_image_info_dump, bdrv_snapshot_dump, dump_qobject) and the pretty JSON
 * (qobject_to_json_pretty), plus qemu's `size_to_str`.
 *
 * Key order: qemu serializes through a QDict, a 512-bucket hash table that iterates bucket by
 * bucket, newest entry first within a bucket. So its key order is the order of
 * `tdb_hash(key) % 512`, ties broken by reverse insertion (= QAPI schema) order. The
 * ImageInfo objects from @tsimg/qcow2 are built in schema order; {@link qdictOrder} does the rest.
 */
import { type ImageInfo, type SnapshotInfo } from '@tsimg/image';
import { encodeByteString } from '@tsimg/qcow2';

/** A value qemu's QObject layer can hold (as far as info needs). */
export type QValue = string | number | bigint | boolean | readonly QValue[] | { readonly [key: string]: QValue | undefined };

const QDICT_BUCKET_MAX = 512;
const utf8 = new TextEncoder();

/** qemu's tdb_hash (qobject/qdict.c) over the key's bytes, in unsigned 32-bit arithmetic. */
export function tdbHash(name: string): number {
  const b = utf8.encode(name);
  let value = Math.imul(0x238f13af, b.length) >>> 0;
  for (let i = 0; i < b.length; i++) value = (value + ((b[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

/** The order qemu's QDict iterates keys inserted in the order given. */
export function qdictOrder(keys: readonly string[]): string[] {
  return keys
    .map((k, i) => ({ k, i, b: tdbHash(k) % QDICT_BUCKET_MAX }))
    .sort((x, y) => x.b - y.b || y.i - x.i)
    .map((e) => e.k);
}

function isDict(v: QValue): v is { readonly [key: string]: QValue | undefined } {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function dictEntries(d: { readonly [key: string]: QValue | undefined }): Array<[string, QValue]> {
  const present = Object.keys(d).filter((k) => d[k] !== undefined);
  return qdictOrder(present).map((k) => [k, d[k]!]);
}

/** qnum_to_string for integers; booleans as true/false; strings verbatim. */
function scalarText(v: string | number | bigint | boolean): string {
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number' && !Number.isInteger(v)) throw new Error(`non-integer ${v} in info output`);
  return String(v);
}

/**
 * qemu's mod_utf8_codepoint (util/unicode.c): the code point at `i` and where the next starts;
 * -1 for invalid input (bad or missing continuation bytes, overlong forms except C0 80,
 * surrogates, noncharacters, beyond U+10FFFF).
 */
function modUtf8Codepoint(b: Uint8Array, i: number): { cp: number; end: number } {
  const minCp = [0x80, 0x800, 0x10000, 0x200000, 0x4000000];
  let p = i;
  let byte = b[p++]!;
  if (byte < 0x80) return { cp: byte, end: p };
  if (byte >= 0xfe || (byte & 0x40) === 0) return { cp: -1, end: p };
  let len = 0;
  let mask = 0x80;
  for (; byte & mask; mask >>= 1) len++;
  let cp = byte & (mask - 1);
  for (let k = 1; k < len; k++) {
    byte = p < b.length ? b[p]! : 0;
    if ((byte & 0xc0) !== 0x80) return { cp: -1, end: p };
    p++;
    cp = (cp << 6) | (byte & 0x3f);
  }
  if (cp > 0x10ffff) cp = -1;
  else if ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) === 0xfffe) cp = -1;
  else if (cp >= 0xd800 && cp <= 0xdfff) cp = -1;
  else if (len >= 2 && cp < minCp[len - 2]! && !(len === 2 && cp === 0)) cp = -1;
  return { cp, end: p };
}

/**
 * qemu's JSON string escaping (qobject/qjson.c to_json_str) over the string's bytes: controls,
 * DEL and non-ASCII as \uXXXX (surrogate pairs beyond the BMP), invalid UTF-8 as \uFFFD.
 */
export function jsonString(s: string): string {
  const b = encodeByteString(s);
  let out = '"';
  for (let i = 0; i < b.length && b[i] !== 0; ) {
    const r = modUtf8Codepoint(b, i);
    i = r.end;
    let cp = r.cp;
    switch (cp) {
      case 0x22: out += '\\"'; continue;
      case 0x5c: out += '\\\\'; continue;
      case 0x08: out += '\\b'; continue;
      case 0x0c: out += '\\f'; continue;
      case 0x0a: out += '\\n'; continue;
      case 0x0d: out += '\\r'; continue;
      case 0x09: out += '\\t'; continue;
    }
    if (cp < 0) cp = 0xfffd;
    if (cp > 0xffff) {
      const c = cp - 0x10000;
      out += `\\u${hex4(0xd800 + (c >> 10))}\\u${hex4(0xdc00 + (c & 0x3ff))}`;
    } else if (cp < 0x20 || cp >= 0x7f) {
      out += `\\u${hex4(cp)}`;
    } else {
      out += String.fromCharCode(cp);
    }
  }
  return out + '"';
}

function hex4(n: number): string {
  return n.toString(16).toUpperCase().padStart(4, '0');
}

/** qobject_to_json_pretty: 4-space indentation, ": " between key and value, QDict key order. */
export function toQemuJson(v: QValue, indent = 0): string {
  const nl = (level: number): string => '\n' + ' '.repeat(level * 4);
  if (Array.isArray(v)) {
    let s = '[';
    v.forEach((e, i) => {
      s += (i > 0 ? ',' : '') + nl(indent + 1) + toQemuJson(e, indent + 1);
    });
    return s + nl(indent) + ']';
  }
  if (isDict(v)) {
    let s = '{';
    dictEntries(v).forEach(([k, e], i) => {
      s += (i > 0 ? ',' : '') + nl(indent + 1) + jsonString(k) + ': ' + toQemuJson(e, indent + 1);
    });
    return s + nl(indent) + '}';
  }
  if (typeof v === 'string') return jsonString(v);
  return scalarText(v as number | bigint | boolean);
}

/** dump_qobject: the "Format specific information" tree (keys with '-' shown as ' '). */
export function dumpQObject(v: QValue, indent: number): string {
  if (Array.isArray(v)) {
    let s = '';
    v.forEach((e: QValue, i: number) => {
      const composite = typeof e === 'object';
      s += `${' '.repeat(indent * 4)}[${i}]:${composite ? '\n' : ' '}${dumpQObject(e, indent + 1)}${composite ? '' : '\n'}`;
    });
    return s;
  }
  if (isDict(v)) {
    let s = '';
    for (const [k, e] of dictEntries(v)) {
      const composite = typeof e === 'object';
      s += `${' '.repeat(indent * 4)}${k.replaceAll('-', ' ')}:${composite ? '\n' : ' '}${dumpQObject(e, indent + 1)}${composite ? '' : '\n'}`;
    }
    return s;
  }
  return scalarText(v as string | number | bigint | boolean);
}

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
