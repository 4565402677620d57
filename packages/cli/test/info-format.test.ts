import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  formatG,
  formatImageInfoHuman,
  formatImageInfoJson,
  sizeToStr,
  snapshotHeaderLine,
  snapshotLine,
} from '../src/info-output.js';
import { dumpQObject, jsonString, qdictOrder, tdbHash, toQemuJson } from '../src/qobject-output.js';
import { type ImageInfo } from '@tsimg/image';
import { decodeByteString } from '../../qcow2/src/format/byte-string.js';

describe('qemu QDict key order', () => {
  it('reproduces the orders qemu-img 7.2 prints', () => {
    // ImageInfo members in QAPI schema order → the order in `qemu-img info --output=json`
    expect(
      qdictOrder([
        'filename', 'format', 'dirty-flag', 'actual-size', 'virtual-size', 'cluster-size', 'encrypted',
        'backing-filename', 'full-backing-filename', 'backing-filename-format', 'snapshots', 'format-specific',
      ]),
    ).toEqual([
      'backing-filename-format', 'snapshots', 'virtual-size', 'filename', 'cluster-size', 'format', 'actual-size',
      'format-specific', 'full-backing-filename', 'encrypted', 'backing-filename', 'dirty-flag',
    ]);
    expect(qdictOrder(['id', 'name', 'vm-state-size', 'date-sec', 'date-nsec', 'vm-clock-sec', 'vm-clock-nsec', 'icount'])).toEqual([
      'icount', 'vm-clock-nsec', 'name', 'date-sec', 'date-nsec', 'vm-clock-sec', 'id', 'vm-state-size',
    ]);
    expect(qdictOrder(['name', 'granularity', 'flags'])).toEqual(['flags', 'name', 'granularity']);
    expect(qdictOrder(['active', 'iters', 'stripes', 'key-offset'])).toEqual(['active', 'iters', 'key-offset', 'stripes']);
  });

  it('is deterministic and a permutation', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.string({ maxLength: 12 })), (keys) => {
        const order = qdictOrder(keys);
        expect([...order].sort()).toEqual([...keys].sort());
        expect(qdictOrder(keys)).toEqual(order);
      }),
    );
  });

  it('hashes in unsigned 32-bit arithmetic', () => {
    expect(tdbHash('')).toBe(12345);
    for (const k of ['a', 'format-specific', 'x'.repeat(100)]) {
      expect(Number.isInteger(tdbHash(k)) && tdbHash(k) >= 0 && tdbHash(k) < 2 ** 32).toBe(true);
    }
  });
});

describe('size_to_str', () => {
  it.each([
    [0, '0 B'],
    [1, '1 B'],
    [999, '999 B'],
    [1000, '0.977 KiB'],
    [1024, '1 KiB'],
    [1152, '1.12 KiB'], // 1.125: ties round to even, as glibc does
    [1160, '1.13 KiB'],
    [1536, '1.5 KiB'],
    [200704, '196 KiB'],
    [2297856, '2.19 MiB'],
    [1073741824, '1 GiB'],
    [17592186044416, '16 TiB'],
    [2n ** 64n - 1n, '16 EiB'],
    [2n ** 63n, '8 EiB'],
  ])('%s → %s', (n, s) => expect(sizeToStr(n)).toBe(s));
});

describe('%g formatting', () => {
  it('matches C for fixed and exponent forms', () => {
    expect(formatG(0n, 1n)).toBe('0');
    expect(formatG(12345n, 1n)).toBe('1.23e+04');
    expect(formatG(999500n, 1000n)).toBe('1e+03');
    expect(formatG(1n, 100000n)).toBe('1e-05');
    expect(formatG(1n, 10000n)).toBe('0.0001');
    expect(formatG(5n, 2n)).toBe('2.5');
    expect(formatG(100n, 1n)).toBe('100');
    expect(formatG(1005n, 1000n)).toBe('1'); // 1.005 is exact here: tie → even (1.00 → "1")
    expect(formatG(1015n, 1000n)).toBe('1.02');
  });

  it('agrees with toPrecision away from ties', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 40 }), fc.integer({ min: 0, max: 30 }), (n, k) => {
        const num = BigInt(n);
        const den = 1n << BigInt(k);
        const x = n / 2 ** k;
        const scaled = x / 10 ** (Math.floor(Math.log10(x)) - 2);
        fc.pre(Math.abs(scaled - Math.floor(scaled) - 0.5) > 1e-6);
        const c = Number(x.toPrecision(3)); // same digits, JS spelling
        expect(Number(formatG(num, den))).toBe(c);
      }),
    );
  });
});

describe('JSON', () => {
  it('escapes like qemu', () => {
    expect(jsonString('a"b\\c/d')).toBe('"a\\"b\\\\c/d"');
    expect(jsonString('\b\f\n\r\t\x01\x7f')).toBe('"\\b\\f\\n\\r\\t\\u0001\\u007F"');
    expect(jsonString('é€')).toBe('"\\u00E9\\u20AC"');
    expect(jsonString('😀')).toBe('"\\uD83D\\uDE00"');
  });

  it('replaces what qemu\'s mod_utf8_codepoint rejects with \\uFFFD', () => {
    expect(jsonString(decodeByteString(Uint8Array.from([0x61, 0xbd, 0x62])))).toBe('"a\\uFFFDb"');
    expect(jsonString(decodeByteString(Uint8Array.from([0xe2, 0x82])))).toBe('"\\uFFFD"'); // truncated sequence
    expect(jsonString(decodeByteString(Uint8Array.from([0xc0, 0x80])))).toBe('"\\u0000"'); // qemu's modified UTF-8 NUL
    expect(jsonString('\uFFFE\uFDD0')).toBe('"\\uFFFD\\uFFFD"'); // noncharacters
  });

  it('pretty-prints empty containers on two lines', () => {
    expect(toQemuJson({ flags: [] })).toBe('{\n    "flags": [\n    ]\n}');
    expect(toQemuJson({})).toBe('{\n}');
    expect(toQemuJson([1n, true, 'x'])).toBe('[\n    1,\n    true,\n    "x"\n]');
  });
});

describe('human text', () => {
  it('dumps format-specific data like dump_qobject', () => {
    expect(dumpQObject({ 'lazy-refcounts': false, bitmaps: [{ name: 'a', granularity: 65536, flags: [] }] }, 1)).toBe(
      '    lazy refcounts: false\n    bitmaps:\n        [0]:\n            flags:\n            name: a\n            granularity: 65536\n',
    );
  });

  it('prints the snapshot table with qemu\'s column widths', () => {
    process.env.TZ = 'UTC';
    expect(snapshotHeaderLine()).toBe('ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT');
    expect(
      snapshotLine({
        id: '1', name: 'snap1', 'vm-state-size': 0n, 'date-sec': 1795713977, 'date-nsec': 0,
        'vm-clock-sec': 3723n, 'vm-clock-nsec': 456_000_000, icount: 0n,
      }),
    ).toBe('1         snap1                 0 B 2026-11-26 17:26:17 01:02:03.456          0');
    expect(
      snapshotLine({
        id: '2', name: 'snap-with-a-very-long-name-indeed', 'vm-state-size': 5_000_000_000n, 'date-sec': 0,
        'date-nsec': 0, 'vm-clock-sec': 0n, 'vm-clock-nsec': 0,
      }),
    ).toBe('2         snap-with-a-very-long-name-indeed 4.66 GiB 1970-01-01 00:00:00 00:00:00.000           ');
  });

  it('prints an image', () => {
    const info: ImageInfo = {
      filename: 'top.qcow2', format: 'qcow2', 'dirty-flag': true, 'actual-size': 200704, 'virtual-size': 1048576,
      'cluster-size': 65536, encrypted: true, 'backing-filename': 'b.raw', 'full-backing-filename': 'dir/b.raw',
      'backing-filename-format': 'raw',
      'format-specific': { type: 'qcow2', data: { compat: '0.10', 'refcount-bits': 16, 'compression-type': 'zlib' } },
    };
    expect(formatImageInfoHuman(info)).toBe(
      'image: top.qcow2\nfile format: qcow2\nvirtual size: 1 MiB (1048576 bytes)\ndisk size: 196 KiB\n' +
        'encrypted: yes\ncluster_size: 65536\ncleanly shut down: no\n' +
        'backing file: b.raw (actual path: dir/b.raw)\nbacking file format: raw\n' +
        'Format specific information:\n    compat: 0.10\n    compression type: zlib\n    refcount bits: 16\n',
    );
    const { 'full-backing-filename': _full, 'actual-size': _actual, ...rest } = info;
    expect(formatImageInfoHuman(rest)).toContain('disk size: unavailable\n');
    expect(formatImageInfoHuman(rest)).toContain('backing file: b.raw (cannot determine actual path)\n');
    expect(formatImageInfoJson(info).endsWith('}\n')).toBe(true);
  });
});
