/**
 * qemu's one-line JSON of QObjects (qobject_to_json), byte for byte as qemu 7.2 writes it: the
 * key order of its QDict and to_json_str's escaping. The image layer names nodes with it
 * (bdrv_refresh_filename's `json:{...}` filenames); the CLI's printers build on it.
 *
 * Key order: qemu serializes through a QDict, a 512-bucket hash table that iterates bucket by
 * bucket, newest entry first within a bucket. So its key order is the order of
 * `tdb_hash(key) % 512`, ties broken by reverse insertion (= QAPI schema) order: callers build
 * their objects in schema order and {@link qdictOrder} does the rest.
 */
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

/** True for a QDict (not a list or a scalar). */
export function isQDict(v: QValue): v is { readonly [key: string]: QValue | undefined } {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A QDict's present members in qemu's iteration order. */
export function qdictEntries(d: { readonly [key: string]: QValue | undefined }): Array<[string, QValue]> {
  const present = Object.keys(d).filter((k) => d[k] !== undefined);
  return qdictOrder(present).map((k) => [k, d[k]!]);
}

/** qnum_to_string for integers; booleans as true/false; strings verbatim. */
export function qscalarText(v: string | number | bigint | boolean): string {
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

/** qobject_to_json: one line, ", " between members, ": " between key and value, QDict key order. */
export function toQemuJsonLine(v: QValue): string {
  if (Array.isArray(v)) return '[' + v.map(toQemuJsonLine).join(', ') + ']';
  if (isQDict(v)) return '{' + qdictEntries(v).map(([k, e]) => `${jsonString(k)}: ${toQemuJsonLine(e)}`).join(', ') + '}';
  if (typeof v === 'string') return jsonString(v);
  return qscalarText(v as number | bigint | boolean);
}

