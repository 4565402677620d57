/**
 * INTERIM: qemu's size parsing (qemu_strtosz / cvtnum) and `-o` option lists, used by map,
 * measure and dd until the shared packages/cli/src/options.ts lands; then these call sites switch
 * to it and this file is deleted.
 */
import { CliExit } from './exit.js';

const UNITS: Record<string, bigint> = {
  b: 1n, B: 1n, k: 1n << 10n, K: 1n << 10n, m: 1n << 20n, M: 1n << 20n, g: 1n << 30n, G: 1n << 30n,
  t: 1n << 40n, T: 1n << 40n, p: 1n << 50n, P: 1n << 50n, e: 1n << 60n, E: 1n << 60n,
};

/** qemu_strtosz: `'invalid'`, `'range'`, or the value. `warn` gets qemu's hex-suffix warning. */
export function strtosz(text: string, warn?: (msg: string) => void): bigint | 'invalid' | 'range' {
  const m = /^[ \t\n\v\f\r]*([+-]?)([0-9]*)/.exec(text)!;
  let pos = m[0].length;
  if (m[2] === '') return 'invalid';
  if (m[1] === '-') return 'invalid';
  let val = BigInt(m[2]!);
  let valf = 0n;
  let isHex = false;
  if (val === 0n && (text[pos] === 'x' || text[pos] === 'X')) {
    const h = /^[0-9a-fA-F]+/.exec(text.slice(pos + 1));
    if (!h) return 'invalid';
    val = BigInt(`0x${h[0]}`);
    pos += 1 + h[0].length;
    if (text[pos] === '.') return 'invalid';
    isHex = true;
  } else if (text[pos] === '.') {
    const fm = /^\.[0-9]*([eE][+-]?[0-9]+)?/.exec(text.slice(pos))!;
    if (fm[1] !== undefined) return 'invalid';
    const fraction = Number(`0${fm[0]}`);
    valf = BigInt(Math.trunc(fraction * 2 ** 64));
    pos += fm[0].length;
  }
  if (val >= 1n << 64n) return 'range';
  let mul = 1n;
  const unit = UNITS[text[pos] ?? ''];
  if (unit !== undefined) {
    mul = unit;
    pos++;
    if (isHex && mul !== 1n) warn?.(`warning: Using a multiplier suffix on hex numbers is deprecated: ${text}`);
  }
  if (pos !== text.length) return 'invalid';
  if (mul === 1n) {
    if (valf !== 0n) return 'invalid';
    return val;
  }
  const fracPart = valf * mul;
  let result = val * mul + (fracPart >> 64n);
  result += (fracPart & ((1n << 64n) - 1n)) >> 63n;
  if (result >= 1n << 64n) return 'range';
  return result;
}

/** qemu-img's cvtnum_full: parses or throws CliExit(1) with qemu's two messages. */
export function cvtnum(name: string, text: string, min = 0n, max = (1n << 63n) - 1n, warn?: (m: string) => void): bigint {
  const r = strtosz(text, warn);
  if (r === 'invalid') {
    throw new CliExit(
      1,
      `Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for\n` +
        'tsimg: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.',
    );
  }
  if (r === 'range' || r > max || r < min) {
    throw new CliExit(1, `Invalid ${name} specified. Must be between ${min} and ${max}.`);
  }
  return r;
}

/** Types of create options, for `-o` validation. */
export type OptType = 'size' | 'number' | 'bool' | 'string';

/** qemu's is_valid_option_list. */
export function isValidOptionList(list: string): boolean {
  if (list === '' || list.startsWith(',')) return false;
  // A trailing comma that is not an escaped ",," is an empty option.
  const trailing = /,+$/.exec(list)?.[0].length ?? 0;
  return trailing % 2 === 0;
}

/** Splits `a=1,b,c=x,,y` into pairs (',,' is a literal comma; a bare key means "on"). */
export function splitOptionList(list: string): [string, string][] {
  const out: [string, string][] = [];
  let i = 0;
  while (i < list.length) {
    let item = '';
    while (i < list.length) {
      if (list[i] === ',') {
        if (list[i + 1] === ',') {
          item += ',';
          i += 2;
          continue;
        }
        i++;
        break;
      }
      item += list[i++];
    }
    const eq = item.indexOf('=');
    if (eq < 0) out.push([item, 'on']);
    else out.push([item.slice(0, eq), item.slice(eq + 1)]);
  }
  return out;
}

/** Parsed, typed option values (last one wins, as in qemu). */
export type OptValues = Map<string, string | bigint | boolean>;

/**
 * qemu_opts_do_parse against a table of option types: unknown names, bad numbers, sizes and
 * booleans throw CliExit(1) with qemu's messages followed by "Invalid options for file format".
 */
export function parseOptionList(list: string, types: Record<string, OptType>, format: string): OptValues {
  const values: OptValues = new Map();
  const fail = (msg: string): never => {
    throw new CliExit(1, `${msg}\ntsimg: Invalid options for file format '${format}'`);
  };
  for (const [rawKey, value] of splitOptionList(list)) {
    let key = rawKey;
    let val = value;
    if (!(key in types) && key.startsWith('no') && value === 'on' && types[key.slice(2)] === 'bool') {
      key = key.slice(2);
      val = 'off';
    }
    const type = types[key];
    if (type === undefined) fail(`Invalid parameter '${key}'`);
    switch (type) {
      case 'bool':
        if (['on', 'yes', 'true', 'y'].includes(val)) values.set(key, true);
        else if (['off', 'no', 'false', 'n'].includes(val)) values.set(key, false);
        else fail(`Parameter '${key}' expects 'on' or 'off'`);
        break;
      case 'number': {
        const m = /^\s*\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(val);
        if (!m) fail(`Parameter '${key}' expects a number`);
        const digits = m![1]!;
        values.set(key, digits.length > 1 && digits[0] === '0' && !/[xX]/.test(digits) ? BigInt(`0o${digits.slice(1)}`) : BigInt(digits));
        break;
      }
      case 'size': {
        const r = strtosz(val);
        if (typeof r !== 'bigint') {
          fail(
            `Parameter '${key}' expects a non-negative number below 2^64\n` +
              'Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n' +
              'and exabytes, respectively.',
          );
        }
        values.set(key, r as bigint);
        break;
      }
      default:
        values.set(key, val);
    }
  }
  return values;
}
