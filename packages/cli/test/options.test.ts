/**
 * Unit tests of the shared option parsing (options.ts). Expected values were taken from
 * qemu-img 7.2 (`qemu-img create -f raw x SIZE`, `-o` lists); the size table is also
 * cross-checked live in create.test.ts.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  accumulateOptions,
  cvtnum,
  hasHelpOption,
  isValidOptionList,
  mergeOptDescs,
  optionHelpLines,
  parseOptValue,
  QemuOpts,
  splitOptionList,
  strtosz,
  strtou64Auto,
  type OptDesc,
} from '../src/options.js';
import { CliExit } from '../src/exit.js';

const K = 1024n;

describe('strtosz (qemu_strtosz)', () => {
  const table: [string, bigint | 'invalid' | 'range'][] = [
    ['0', 0n],
    ['1', 1n],
    ['1b', 1n],
    ['1B', 1n],
    ['1k', K],
    ['1K', K],
    ['1m', K ** 2n],
    ['1M', K ** 2n],
    ['1g', K ** 3n],
    ['1T', K ** 4n],
    ['1p', K ** 5n],
    ['1E', K ** 6n],
    ['1.5G', 1610612736n],
    ['1.5k', 1536n],
    ['1.', 1n],
    ['1.0', 1n],
    ['1.00', 1n],
    ['1.k', 1024n],
    ['1.5e', 1729382256910270464n], // "e" is the exa suffix, not an exponent
    [' 1G', K ** 3n],
    ['+1G', K ** 3n],
    ['0x10', 16n],
    ['0x1k', 1024n],
    ['1.999999999999999999999k', 1024n], // the fraction rounds to 1.0: qemu's cast gives 0
    ['1.5', 'invalid'],
    ['1..5', 'invalid'],
    ['1e3', 'invalid'],
    ['1.5e3', 'invalid'],
    ['.5k', 'invalid'],
    ['1kb', 'invalid'],
    ['1.5b', 'invalid'],
    ['-1', 'invalid'],
    ['- 1', 'invalid'],
    ['', 'invalid'],
    ['abc', 'invalid'],
    ['1x', 'invalid'],
    ['0x', 'invalid'],
    ['0xg', 'invalid'],
    ['0x1.5', 'invalid'],
    ['16E', 'range'],
    ['18446744073709551615', 18446744073709551615n],
    ['18446744073709551616', 'range'],
    ['99999999999999999999', 'range'],
    ['99999999999999999999k', 'invalid'], // qemu: an unconsumed suffix beats ERANGE
  ];
  it.each(table)('%j → %s', (text, expected) => {
    expect(strtosz(text)).toBe(expected);
  });

  it('warns about a suffix on a hex number', () => {
    const warnings: string[] = [];
    expect(strtosz('0x1k', (w) => warnings.push(w))).toBe(1024n);
    expect(warnings).toEqual(['warning: Using a multiplier suffix on hex numbers is deprecated: 0x1k']);
  });

  it('agrees with exact arithmetic for decimal fractions with a suffix', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1_000_000 }), fc.integer({ min: 1, max: 9 }), fc.constantFrom('k', 'M', 'G'), (i, d, s) => {
        const mul = { k: K, M: K ** 2n, G: K ** 3n }[s]!;
        const got = strtosz(`${i}.${d}${s}`);
        // d/10 is not exact in binary; qemu's 64-bit fixed point rounds to the nearest byte
        const exact = BigInt(i) * mul + (BigInt(d) * mul + 5n) / 10n;
        expect(typeof got).toBe('bigint');
        expect(Math.abs(Number((got as bigint) - exact))).toBeLessThanOrEqual(1);
      }),
    );
  });
});

describe('cvtnum', () => {
  it('returns sizes in range', () => {
    expect(cvtnum('image size', '1G')).toBe(K ** 3n);
    expect(cvtnum('image size', '9223372036854775807')).toBe(9223372036854775807n);
  });
  it.each([
    ['abc', 'Invalid image size specified. You may use k, M, G, T, P or E suffixes for\ntsimg: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.'],
    ['8E', 'Invalid image size specified. Must be between 0 and 9223372036854775807.'],
    ['99999999999999999999', 'Invalid image size specified. Must be between 0 and 9223372036854775807.'],
  ])('%j fails with qemu-img text', (text, message) => {
    let err: unknown;
    try {
      cvtnum('image size', text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CliExit);
    expect((err as CliExit).status).toBe(1);
    expect((err as CliExit).message).toBe(message);
  });
});

describe('strtou64Auto (qemu_strtou64 base 0)', () => {
  it.each([
    ['16', 16n],
    ['0x10', 16n],
    ['010', 8n],
    ['0', 0n],
    ['-1', 18446744073709551615n],
    ['abc', 'invalid'],
    ['1k', 'invalid'],
    ['99999999999999999999', 'range'],
  ] as const)('%j → %s', (text, expected) => {
    expect(strtou64Auto(text)).toBe(expected);
  });
});

describe('-o option lists', () => {
  it.each([
    ['a=1', true],
    ['a=1,b=2', true],
    ['a=1,,', true],
    ['', false],
    [',a', false],
    ['a,', false],
    ['a=1,,,', false],
  ])('isValidOptionList(%j) = %s', (list, ok) => {
    expect(isValidOptionList(list)).toBe(ok);
  });

  it('accumulates repeated -o and refuses bad lists with qemu-img text', () => {
    expect(accumulateOptions(accumulateOptions(undefined, 'a=1'), 'b=2')).toBe('a=1,b=2');
    expect(() => accumulateOptions(undefined, 'a,')).toThrow('Invalid option list: a,');
  });

  it.each([
    ['help', true],
    ['?', true],
    ['size=1M,help', true],
    ['size=help', false],
    ['helpme', false],
    ['a=x,,help', false], // the ',,' makes "help" part of a's value
  ])('hasHelpOption(%j) = %s', (list, help) => {
    expect(hasHelpOption(list)).toBe(help);
  });

  it('splits names, values, flags and escaped commas', () => {
    expect(splitOptionList('a=1,b,noc,d=x,,y,e=')).toEqual([
      ['a', '1'],
      ['b', 'on'],
      ['c', 'off'],
      ['d', 'x,y'],
      ['e', ''],
    ]);
    expect(splitOptionList('size=1M,,x')).toEqual([['size', '1M,x']]);
  });
});

const DESCS: OptDesc[] = [
  { name: 'flag', type: 'bool', help: 'A flag', defaultValue: 'off' },
  { name: 'cluster_size', type: 'size', help: 'Cluster size', defaultValue: '65536' },
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'name', type: 'string', help: 'A name' },
  { name: 'bits', type: 'number', help: 'Bits', defaultValue: '16' },
];

describe('QemuOpts', () => {
  it('prints set options and defaults in description order, as qemu_opts_print', () => {
    const opts = new QemuOpts(DESCS);
    opts.parse('name=a,,b,flag=yes,size=1k');
    expect(opts.print()).toBe('flag=yes cluster_size=65536 size=1024 name=a,,b bits=16');
  });

  it('prints sizes and numbers as signed 64-bit', () => {
    const opts = new QemuOpts(DESCS);
    opts.parse('size=9E,bits=-1');
    expect(opts.print()).toBe('flag=off cluster_size=65536 size=-8070450532247928832 bits=-1');
  });

  it('keeps the last of repeated options', () => {
    const opts = new QemuOpts(DESCS);
    opts.parse('size=1k,size=2k');
    expect(opts.getNumber('size', 0n)).toBe(2048n);
    expect(opts.getNumber('cluster_size', 0n)).toBe(65536n);
    expect(opts.getBool('flag', true)).toBe(false);
  });

  it.each([
    ['nope=1', "Invalid parameter 'nope'"],
    ['nope', "Invalid parameter 'pe'"], // a bare "no..." is a negated flag, as in qemu
    ['nocow', "Invalid parameter 'cow'"],
    ['flag=maybe', "Parameter 'flag' expects 'on' or 'off'"],
    ['bits=abc', "Parameter 'bits' expects a number"],
    ['bits=99999999999999999999', "Value '99999999999999999999' is too large for parameter 'bits'"],
    ['size=16E', "Value '16E' is out of range for parameter 'size'"],
    [
      'size=abc',
      "Parameter 'size' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.",
    ],
  ])('parse(%j) fails with %j', (list, message) => {
    expect(() => new QemuOpts(DESCS).parse(list)).toThrow(message);
  });

  it('parses values by type', () => {
    expect(parseOptValue(DESCS[0]!, 'true')).toBe(true);
    expect(parseOptValue(DESCS[0]!, 'n')).toBe(false);
    expect(parseOptValue(DESCS[4]!, '0x10')).toBe(16n);
    expect(parseOptValue(DESCS[3]!, 'x')).toBeUndefined();
  });

  it('merges description lists with the first description of a name winning', () => {
    const merged = mergeOptDescs(DESCS, [{ name: 'size', type: 'string' }, { name: 'extra', type: 'bool' }]);
    expect(merged.map((d) => d.name)).toEqual(['flag', 'cluster_size', 'size', 'name', 'bits', 'extra']);
    expect(merged.find((d) => d.name === 'size')!.type).toBe('size');
  });

  it('renders help lines sorted, with the help text at column 25', () => {
    expect(optionHelpLines(DESCS)).toBe(
      '  bits=<num>             - Bits\n' +
        '  cluster_size=<size>    - Cluster size\n' +
        '  flag=<bool (on/off)>   - A flag\n' +
        '  name=<str>             - A name\n' +
        '  size=<size>            - Virtual disk size\n',
    );
  });
});
