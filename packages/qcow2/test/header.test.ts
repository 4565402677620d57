import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Qcow2Header } from '@tsimg/qcow2';
import { decodeHeader, encodeHeader, decodeExtensions, encodeExtensions, extensionsStart, QEMU_FEATURE_NAMES, type HeaderExtension } from '../src/format/header.js';
import { describeQemu, qemuImg, tempDir } from '../../../test-images/qemu.js';

const arbHeader: fc.Arbitrary<Qcow2Header> = fc
  .record({
    version: fc.constantFrom(2 as const, 3 as const),
    backingFileOffset: fc.nat(),
    backingFileSize: fc.nat({ max: 1023 }),
    clusterBits: fc.integer({ min: 9, max: 21 }),
    size: fc.maxSafeNat(),
    cryptMethod: fc.nat({ max: 2 }),
    l1Size: fc.nat({ max: 0xffffffff }),
    l1TableOffset: fc.maxSafeNat(),
    refcountTableOffset: fc.maxSafeNat(),
    refcountTableClusters: fc.nat({ max: 0xffffffff }),
    nbSnapshots: fc.nat({ max: 0xffffffff }),
    snapshotsOffset: fc.maxSafeNat(),
    incompatibleFeatures: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
    compatibleFeatures: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
    autoclearFeatures: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
    refcountOrder: fc.nat({ max: 6 }),
    headerLength: fc.constantFrom(104, 112),
    compressionType: fc.nat({ max: 1 }),
  })
  .map((h) =>
    h.version === 2
      ? { ...h, incompatibleFeatures: 0n, compatibleFeatures: 0n, autoclearFeatures: 0n, refcountOrder: 4, headerLength: 72, compressionType: 0 }
      : h.headerLength === 104
        ? { ...h, compressionType: 0 }
        : h,
  );

const arbExt: fc.Arbitrary<HeaderExtension> = fc.oneof(
  fc.record({ kind: fc.constant('backing-format' as const), name: fc.stringMatching(/^[a-z0-9]{1,16}$/) }),
  fc.record({ kind: fc.constant('data-file' as const), name: fc.stringMatching(/^[a-z0-9./]{1,60}$/) }),
  fc.record({
    kind: fc.constant('feature-names' as const),
    features: fc.array(fc.record({ type: fc.nat({ max: 2 }), bit: fc.nat({ max: 63 }), name: fc.stringMatching(/^[a-z ]{1,46}$/) })),
  }),
  fc.record({ kind: fc.constant('bitmaps' as const), nbBitmaps: fc.nat({ max: 65535 }), bitmapDirectorySize: fc.nat(), bitmapDirectoryOffset: fc.nat() }),
  fc.record({ kind: fc.constant('crypto-header' as const), offset: fc.nat(), length: fc.nat() }),
  fc.record({ kind: fc.constant('unknown' as const), type: fc.integer({ min: 1, max: 0x7fffffff }), data: fc.uint8Array({ maxLength: 40 }) }),
);

describe('header codec', () => {
  it('round-trips every field', () => {
    fc.assert(
      fc.property(arbHeader, (h) => {
        const buf = new Uint8Array(h.headerLength);
        encodeHeader(h, new DataView(buf.buffer));
        expect(decodeHeader(new DataView(buf.buffer))).toEqual(h);
      }),
    );
  });

  it('round-trips extension lists', () => {
    fc.assert(
      fc.property(fc.array(arbExt, { maxLength: 6 }), (exts) => {
        const bytes = encodeExtensions(exts);
        expect(bytes.length % 8).toBe(0);
        expect(decodeExtensions(new DataView(bytes.buffer), 0, bytes.length)).toEqual(exts);
      }),
    );
  });

  it('refuses a bad magic', () => {
    expect(() => decodeHeader(new DataView(new ArrayBuffer(112)))).toThrow(/not in qcow2 format/);
  });
});

describeQemu('header vs qemu-img create', () => {
  it('decodes and re-encodes a qemu-made header byte for byte', () => {
    const t = tempDir();
    try {
      const f = join(t.dir, 'a.qcow2');
      const r = qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd,lazy_refcounts=on', '-b', 'base.raw', '-F', 'raw', '-u', f, '1G']);
      expect(r.status).toBe(0);
      const bytes = new Uint8Array(readFileSync(f));
      const view = new DataView(bytes.buffer);
      const h = decodeHeader(view);
      expect(h.version).toBe(3);
      expect(h.size).toBe(1 << 30);
      expect(h.compressionType).toBe(1);
      const exts = decodeExtensions(view, extensionsStart(h), h.backingFileOffset);
      expect(exts.find((e) => e.kind === 'feature-names')).toEqual({ kind: 'feature-names', features: QEMU_FEATURE_NAMES });
      const again = new Uint8Array(h.headerLength);
      encodeHeader(h, new DataView(again.buffer));
      expect(again).toEqual(bytes.subarray(0, h.headerLength));
      const extBytes = encodeExtensions(exts);
      expect(extBytes).toEqual(bytes.subarray(h.headerLength, h.headerLength + extBytes.length));
    } finally {
      t.cleanup();
    }
  });
});
