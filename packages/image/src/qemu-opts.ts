/**
 * qemu's QemuOpts (util/qemu-option.c): sizes (`qemu_strtosz`), `-o key=value,...` lists (`qemu_opts_do_parse`, with `,,` escaping, bare flags and `no`
 * prefixes), the `help`/`?` probe, the "Formatting ..." rendering (`qemu_opts_print`) and the
 * option help table (`qemu_opts_print_help`) — each with qemu 7.2's exact texts.
 *
 * Values are `bigint` because qemu parses sizes and numbers as 64-bit unsigned and prints
 * them as signed (`size=-9223372036854775808` is a real qemu-img line).
 */
import { UsageError } from '@tsimg/raw';

const U64 = 1n << 64n;
const SPACE = /^[ \t\n\v\f\r]*/;
/** glibc's strtod reports ERANGE (qemu: failure) below the smallest normal double. */
const DBL_MIN = 2.2250738585072014e-308;

const SUFFIX: Readonly<Record<string, bigint>> = {
  B: 1n,
  K: 1n << 10n,
  M: 1n << 20n,
  G: 1n << 30n,
  T: 1n << 40n,
  P: 1n << 50n,
  E: 1n << 60n,
};

function suffixMul(c: string | undefined): bigint | undefined {
  return c === undefined ? undefined : SUFFIX[c.toUpperCase()];
}

/**
 * qemu_strtou64(text, &end, base) for base 10 or 16: the value and where parsing stopped, or
 * 'invalid' when nothing converts; 'range' when the digits overflow 64 bits.
 */
function strtou64(text: string, base: 10 | 16): { value: bigint; end: number; range: boolean } | 'invalid' {
  let pos = SPACE.exec(text)![0].length;
  let neg = false;
  if (text[pos] === '+' || text[pos] === '-') {
    neg = text[pos] === '-';
    pos++;
  }
  if (base === 16 && text[pos] === '0' && (text[pos + 1] === 'x' || text[pos + 1] === 'X') && /[0-9a-fA-F]/.test(text[pos + 2] ?? '')) {
    pos += 2;
  }
  const digits = (base === 10 ? /^[0-9]+/ : /^[0-9a-fA-F]+/).exec(text.slice(pos));
  if (!digits) return 'invalid';
  let value = BigInt(base === 10 ? digits[0] : `0x${digits[0]}`);
  const range = value >= U64;
  if (range) value = U64 - 1n;
  else if (neg) value = (U64 - value) % U64;
  return { value, end: pos + digits[0].length, range };
}

/** Result of {@link strtosz}: a value, or why there is none. */
export type StrtoszResult = bigint | 'invalid' | 'range';

/**
 * qemu_strtosz (util/cutils.c, 7.2): decimal with an optional fraction and a binary suffix
 * (B, K, M, G, T, P, E, any case), or hex (`0x10`; a suffix on hex works but warns). The
 * whole string must be consumed. `warn` receives qemu's deprecation warning text.
 */
export function strtosz(text: string, warn?: (message: string) => void): StrtoszResult {
  const first = strtou64(text, 10);
  if (first === 'invalid') return 'invalid';
  let { value: val, end: pos } = first;
  let ret: 'range' | undefined = first.range ? 'range' : undefined;
  let valf = 0n;
  let hex = false;
  if (ret === undefined && text.slice(0, pos).includes('-')) return 'invalid';
  if (ret === undefined && val === 0n && (text[pos] === 'x' || text[pos] === 'X')) {
    const h = strtou64(text, 16);
    if (h === 'invalid') return 'invalid';
    val = h.value;
    pos = h.end;
    if (h.range) ret = 'range';
    else if (text[pos] === '.') return 'invalid';
    hex = true;
  } else if (ret === undefined && text[pos] === '.') {
    // strtod on ".digits[exponent]"; an exponent makes the whole input invalid.
    const m = /^\.([0-9]*)([eE][+-]?[0-9]+)?/.exec(text.slice(pos))!;
    if (m[1] === '') {
      pos++; // strtod failed: qemu skips the '.' and goes on
    } else {
      if (m[2] !== undefined) return 'invalid';
      const fraction = Number(`0.${m[1]}`);
      if (fraction !== 0 && fraction < DBL_MIN) {
        pos++;
      } else {
        pos += m[0].length;
        // (uint64_t)(fraction * 2^64): x86-64 turns an out-of-range 2^64 into 0
        const scaled = fraction * 2 ** 64;
        valf = scaled >= 2 ** 64 ? 0n : BigInt(Math.trunc(scaled));
      }
    }
  }
  if (ret === 'range') return pos === text.length ? 'range' : 'invalid';
  let mul = suffixMul(text[pos]);
  if (mul !== undefined) {
    pos++;
    if (hex && mul !== 1n) warn?.(`warning: Using a multiplier suffix on hex numbers is deprecated: ${text}`);
  } else {
    mul = 1n;
  }
  if (pos !== text.length) return 'invalid';
  if (mul === 1n) return valf !== 0n ? 'invalid' : val;
  const frac = valf * mul;
  const result = val * mul + (frac >> 64n) + (((frac & (U64 - 1n)) >> 63n) & 1n);
  return result >= U64 ? 'range' : result;
}

/**
 * qemu_strtou64(text, NULL, 0): C integer syntax (decimal, 0x hex, 0 octal), leading blanks and a
 * sign allowed (a minus wraps modulo 2^64, as strtoull does). 'range' past 64 bits.
 */
export function strtou64Auto(text: string): bigint | 'invalid' | 'range' {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)/.exec(text);
  if (!m) return 'invalid';
  const d = m[2]!;
  const v = /^0[xX]/.test(d) ? BigInt(d) : d.length > 1 && d[0] === '0' ? BigInt(`0o${d.slice(1)}`) : BigInt(d);
  // strtoull parses "0x" alone as 0 followed by "x": then the rest is garbage anyway.
  if (m[0].length !== text.length) return 'invalid';
  if (v >= U64) return 'range';
  return m[1] === '-' ? (U64 - v) % U64 : v;
}

/** qemu's is_valid_option_list: not empty, no leading ',', no unescaped trailing ','. */
export function isValidOptionList(list: string): boolean {
  if (list === '' || list.startsWith(',')) return false;
  const trailing = /,+$/.exec(list)?.[0].length ?? 0;
  return trailing % 2 === 0;
}

/** get_opt_value: reads up to an unescaped ',' (a ',,' is one literal comma). */
function getOptValue(s: string, pos: number): { value: string; end: number } {
  let value = '';
  let i = pos;
  for (;;) {
    const comma = s.indexOf(',', i);
    if (comma < 0) return { value: value + s.slice(i), end: s.length };
    value += s.slice(i, comma);
    if (s[comma + 1] !== ',') return { value, end: comma };
    value += ',';
    i = comma + 2;
  }
}

/** qemu's has_help_option: is any comma-separated element exactly `help` or `?`. */
export function hasHelpOption(list: string): boolean {
  let pos = 0;
  while (pos < list.length) {
    const { value, end } = getOptValue(list, pos);
    if (value === 'help' || value === '?') return true;
    pos = end < list.length ? end + 1 : end;
  }
  return false;
}

/**
 * Splits an option list into name/value pairs as get_opt_name_value does: `a=1`, a bare `a`
 * means `a=on` and `noa` means `a=off`. The name stops at '=' or ','; values unescape ',,'.
 */
export function splitOptionList(list: string): [string, string][] {
  const out: [string, string][] = [];
  let pos = 0;
  while (pos < list.length) {
    const m = /^[^=,]*/.exec(list.slice(pos))![0];
    let name: string;
    let value: string;
    if (list[pos + m.length] !== '=') {
      // a flag: the name ends at the first ','  (get_opt_name with len up to '=' or ',')
      name = m;
      pos += m.length;
      if (name.startsWith('no')) {
        name = name.slice(2);
        value = 'off';
      } else {
        value = 'on';
      }
    } else {
      name = m;
      const v = getOptValue(list, pos + m.length + 1);
      value = v.value;
      pos = v.end;
    }
    out.push([name, value]);
    if (list[pos] === ',') pos++;
  }
  return out;
}

/** The value types of QemuOpts. */
export type OptType = 'string' | 'bool' | 'number' | 'size';

/** One option a format or protocol accepts (QemuOptDesc). */
export interface OptDesc {
  name: string;
  type: OptType;
  help?: string;
  /** def_value_str: printed on the "Formatting" line when the option is not set. */
  defaultValue?: string;
}

/** One set option: the text as given and its parsed value. */
export interface OptEntry {
  name: string;
  /** The string form (for booleans, printed as given: `lazy_refcounts=yes`). */
  str: string;
  /** Parsed value for bool, number and size options. */
  value?: bigint | boolean;
}

/** qemu_opts_append: concatenates option lists, the first description of a name winning. */
export function mergeOptDescs(...lists: readonly (readonly OptDesc[])[]): OptDesc[] {
  const out: OptDesc[] = [];
  for (const list of lists) for (const d of list) if (!out.some((o) => o.name === d.name)) out.push(d);
  return out;
}

/** parse_option_bool. */
function parseBool(name: string, value: string): boolean {
  if (value === 'on' || value === 'yes' || value === 'true' || value === 'y') return true;
  if (value === 'off' || value === 'no' || value === 'false' || value === 'n') return false;
  throw new UsageError(`Parameter '${name}' expects 'on' or 'off'`);
}

/** Parses one value by its type, with qemu_opt_parse's messages. */
export function parseOptValue(desc: OptDesc, str: string): bigint | boolean | undefined {
  switch (desc.type) {
    case 'string':
      return undefined;
    case 'bool':
      return parseBool(desc.name, str);
    case 'number': {
      const r = strtou64Auto(str);
      if (r === 'range') throw new UsageError(`Value '${str}' is too large for parameter '${desc.name}'`);
      if (r === 'invalid') throw new UsageError(`Parameter '${desc.name}' expects a number`);
      return r;
    }
    case 'size': {
      const r = strtosz(str);
      if (r === 'range') throw new UsageError(`Value '${str}' is out of range for parameter '${desc.name}'`);
      if (r === 'invalid') {
        throw new UsageError(
          `Parameter '${desc.name}' expects a non-negative number below 2^64\n` +
            'Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n' +
            'and exabytes, respectively.',
        );
      }
      return r;
    }
  }
}

/**
 * A set of options against a list of descriptions (QemuOpts). Setting an option twice keeps
 * both; lookups see the last, as qemu does.
 */
export class QemuOpts {
  readonly descs: readonly OptDesc[];
  readonly entries: OptEntry[] = [];

  constructor(descs: readonly OptDesc[]) {
    this.descs = descs;
  }

  /** The description of `name`, if the list has one. */
  desc(name: string): OptDesc | undefined {
    return this.descs.find((d) => d.name === name);
  }

  /** qemu_opts_do_parse: adds every `name=value` of `list`; throws on the first bad one. */
  parse(list: string): void {
    for (const [name, value] of splitOptionList(list)) {
      if (name === 'id') continue;
      this.set(name, value);
    }
  }

  /** qemu_opt_set: validates and adds one option (UsageError "Invalid parameter 'x'"). */
  set(name: string, str: string): void {
    const desc = this.desc(name);
    if (!desc) throw new UsageError(`Invalid parameter '${name}'`);
    this.entries.push({ name, str, value: parseOptValue(desc, str) });
  }

  /** qemu_opt_set_number. */
  setNumber(name: string, value: bigint): void {
    this.entries.push({ name, str: BigInt.asIntN(64, value).toString(), value });
  }

  /** The last entry for `name`. */
  get(name: string): OptEntry | undefined {
    for (let i = this.entries.length - 1; i >= 0; i--) if (this.entries[i]!.name === name) return this.entries[i];
    return undefined;
  }

  /** The string of the last entry for `name` (qemu_opt_get, which ignores defaults here). */
  getString(name: string): string | undefined {
    return this.get(name)?.str;
  }

  /** qemu_opt_get_size / _number: the set value, else the description's default, else `fallback`. */
  getNumber(name: string, fallback: bigint): bigint {
    const e = this.get(name);
    if (e && typeof e.value === 'bigint') return e.value;
    const def = this.desc(name)?.defaultValue;
    if (def !== undefined) {
      const r = strtosz(def);
      if (typeof r === 'bigint') return r;
    }
    return fallback;
  }

  /** qemu_opt_get_bool: set value, else default, else `fallback`. */
  getBool(name: string, fallback: boolean): boolean {
    const e = this.get(name);
    if (e && typeof e.value === 'boolean') return e.value;
    const def = this.desc(name)?.defaultValue;
    return def !== undefined ? parseBool(name, def) : fallback;
  }

  /**
   * qemu_opts_print(opts, " "): every option in description order that is set or has a default;
   * strings with commas doubled, sizes and numbers as signed 64-bit, booleans as written.
   */
  print(): string {
    const parts: string[] = [];
    for (const d of this.descs) {
      const e = this.get(d.name);
      const value = e ? e.str : d.defaultValue;
      if (value === undefined) continue;
      if (d.type === 'string') parts.push(`${d.name}=${value.replaceAll(',', ',,')}`);
      else if ((d.type === 'size' || d.type === 'number') && e) {
        parts.push(`${d.name}=${BigInt.asIntN(64, e.value as bigint)}`);
      } else parts.push(`${d.name}=${value}`);
    }
    return parts.join(' ');
  }
}

const TYPE_NAMES: Readonly<Record<OptType, string>> = {
  string: 'str',
  bool: 'bool (on/off)',
  number: 'num',
  size: 'size',
};

/** qemu_opts_print_help(list, false): one line per option, sorted, help text at column 25. */
export function optionHelpLines(descs: readonly OptDesc[]): string {
  const lines = descs.map((d) => {
    let s = `  ${d.name}=<${TYPE_NAMES[d.type]}>`;
    if (d.help !== undefined) {
      if (s.length < 24) s = s.padEnd(24);
      s += ` - ${d.help}`;
    }
    return s;
  });
  // g_ptr_array_sort with strcmp: byte order
  lines.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return lines.map((l) => `${l}\n`).join('');
}
