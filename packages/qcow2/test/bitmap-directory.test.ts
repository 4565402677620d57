import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { join } from 'node:path';
import { FileDevice, MemoryDevice } from '@tsimg/raw';
import { findExtension, loadBitmapDirectory, loadHeader } from '@tsimg/qcow2';
import { BME_FLAG_AUTO, BME_FLAG_IN_USE, bitmapDirEntrySize, bitmapDirEntryValid, bitmapFlagNames, bitmapTableSizeFor, decodeBitmapDirEntry, decodeBitmapTableEntry, encodeBitmapDirectory, encodeBitmapTableEntry, loadBitmapTable, type BitmapDirectoryEntry, type BitmapTableEntry } from '../src/format/bitmap-directory.js';
import { describeQemu, must, qemuIo, tempDir } from '../../../test-images/qemu.js';

const arbEntry: fc.Arbitrary<BitmapDirectoryEntry> = fc.record({
  bitmapTableOffset: fc.maxSafeNat(),
  bitmapTableSize: fc.nat({ max: 0xffffffff }),
  flags: fc.nat({ max: 0xffffffff }),
  type: fc.nat({ max: 255 }),
  granularityBits: fc.nat({ max: 255 }),
  name: fc.string({ unit: 'grapheme', maxLength: 30 }),
  extraData: fc.uint8Array({ maxLength: 20 }),
});

function entry(over: Partial<BitmapDirectoryEntry> = {}): BitmapDirectoryEntry {
  return {
    bitmapTableOffset: 0x30000,
    bitmapTableSize: 1,
    flags: BME_FLAG_AUTO,
    type: 1,
    granularityBits: 16,
    name: 'bm',
    extraData: new Uint8Array(0),
    ...over,
  };
}

describe('bitmap directory codec', () => {
  it('round-trips a directory of entries, each padded to 8 bytes', () => {
    fc.assert(
      fc.property(fc.array(arbEntry, { maxLength: 6 }), (list) => {
        const bytes = encodeBitmapDirectory(list);
        const view = new DataView(bytes.buffer);
        const out: BitmapDirectoryEntry[] = [];
        let off = 0;
        while (off < bytes.length) {
          const { entry: e, next } = decodeBitmapDirEntry(view, off);
          expect(next - off).toBe(bitmapDirEntrySize(new TextEncoder().encode(e.name).length, e.extraData.length));
          out.push(e);
          off = next;
        }
        expect(out).toEqual(list);
      }),
    );
  });

  it('lays out the fields at the spec offsets', () => {
    const b = encodeBitmapDirectory([entry({ bitmapTableOffset: 0x1230000, bitmapTableSize: 7, flags: 3, granularityBits: 17, name: 'abc' })]);
    const v = new DataView(b.buffer);
    expect(b.length).toBe(32);
    expect(v.getBigUint64(0)).toBe(0x1230000n);
    expect(v.getUint32(8)).toBe(7);
    expect(v.getUint32(12)).toBe(3);
    expect(v.getUint8(16)).toBe(1);
    expect(v.getUint8(17)).toBe(17);
    expect(v.getUint16(18)).toBe(3);
    expect(v.getUint32(20)).toBe(0);
    expect(new TextDecoder().decode(b.subarray(24, 27))).toBe('abc');
  });

  it('reports a broken directory', () => {
    const b = encodeBitmapDirectory([entry({ name: 'x'.repeat(20) })]);
    expect(() => decodeBitmapDirEntry(new DataView(b.buffer, 0, 30), 0)).toThrow('Broken bitmap directory');
  });

  it('applies check_dir_entry', () => {
    const mib = 1 << 20;
    expect(bitmapDirEntryValid(entry(), 65536, 64 * mib)).toBe(true);
    expect(bitmapDirEntryValid(entry({ bitmapTableSize: 0 }), 65536, mib)).toBe(false);
    expect(bitmapDirEntryValid(entry({ bitmapTableOffset: 0 }), 65536, mib)).toBe(false);
    expect(bitmapDirEntryValid(entry({ bitmapTableOffset: 512 }), 65536, mib)).toBe(false);
    expect(bitmapDirEntryValid(entry({ granularityBits: 8 }), 65536, mib)).toBe(false);
    expect(bitmapDirEntryValid(entry({ granularityBits: 32 }), 65536, mib)).toBe(false);
    expect(bitmapDirEntryValid(entry({ flags: 4 }), 65536, mib)).toBe(false);
    expect(bitmapDirEntryValid(entry({ type: 2 }), 65536, mib)).toBe(false);
    expect(bitmapDirEntryValid(entry({ name: 'n'.repeat(1024) }), 65536, mib)).toBe(false);
    // one 64 KiB cluster of bits at 64 KiB granularity covers 32 GiB; a clean bitmap must cover the disk
    expect(bitmapDirEntryValid(entry(), 65536, 32 * 1024 * mib)).toBe(true);
    expect(bitmapDirEntryValid(entry(), 65536, 32 * 1024 * mib + 512)).toBe(false);
    expect(bitmapDirEntryValid(entry({ flags: BME_FLAG_IN_USE }), 65536, 32 * 1024 * mib + 512)).toBe(true);
    expect(bitmapDirEntryValid(entry({ bitmapTableSize: 8193 }), 65536, mib)).toBe(false); // > 512 MiB of bitmap
  });

  it('names flags in qemu\'s order', () => {
    expect(bitmapFlagNames(0)).toEqual([]);
    expect(bitmapFlagNames(BME_FLAG_AUTO)).toEqual(['auto']);
    expect(bitmapFlagNames(BME_FLAG_AUTO | BME_FLAG_IN_USE)).toEqual(['in-use', 'auto']);
  });
});

describe('bitmap table entries', () => {
  it('decodes the three kinds and refuses reserved bits', () => {
    expect(decodeBitmapTableEntry(0n, 65536)).toEqual({ kind: 'zeroes' });
    expect(decodeBitmapTableEntry(1n, 65536)).toEqual({ kind: 'ones' });
    expect(decodeBitmapTableEntry(0x50000n, 65536)).toEqual({ kind: 'data', offset: 0x50000 });
    expect(decodeBitmapTableEntry(0x50001n, 65536).kind).toBe('invalid'); // all-ones flag with an offset
    expect(decodeBitmapTableEntry(0x50200n, 65536).kind).toBe('invalid'); // not cluster aligned
    expect(decodeBitmapTableEntry(2n, 65536).kind).toBe('invalid');
    expect(decodeBitmapTableEntry(1n << 56n, 65536).kind).toBe('invalid');
  });

  it('round-trips', () => {
    const arb: fc.Arbitrary<BitmapTableEntry> = fc.oneof(
      fc.constant({ kind: 'zeroes' as const }),
      fc.constant({ kind: 'ones' as const }),
      fc.integer({ min: 1, max: 2 ** 30 }).map((c) => ({ kind: 'data' as const, offset: c * 65536 })),
    );
    fc.assert(
      fc.property(arb, (e) => {
        expect(decodeBitmapTableEntry(encodeBitmapTableEntry(e), 65536)).toEqual(e);
      }),
    );
  });

  it('sizes a table like load_bitmap_data', () => {
    // 64 MiB at 64 KiB granularity: 1024 bits = 128 bytes → one cluster
    expect(bitmapTableSizeFor(64 << 20, 16, 65536)).toBe(1);
    // 1 TiB at 512 B: 2^31 bits = 256 MiB → 4096 clusters of 64 KiB
    expect(bitmapTableSizeFor(2 ** 40, 9, 65536)).toBe(4096);
    expect(bitmapTableSizeFor(512, 9, 512)).toBe(1);
    expect(bitmapTableSizeFor(0, 16, 65536)).toBe(0);
  });

  it('reports invalid entries and a size mismatch with qemu\'s messages', async () => {
    const dev = new MemoryDevice({ size: 0x40000 });
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, 0x10200n);
    await dev.write(0x30000, b);
    await expect(loadBitmapTable(dev, entry({ name: 'bad' }), 65536, 1 << 20)).rejects.toThrow(
      "Could not read bitmap_table table from image for bitmap 'bad': Invalid argument",
    );
    await expect(loadBitmapTable(dev, entry({ bitmapTableOffset: 0x20000, bitmapTableSize: 2, name: 'sz' }), 65536, 1 << 20)).rejects.toThrow(
      "Could not read bitmap 'sz' from image: Invalid argument",
    );
  });
});

describe('loadBitmapDirectory', () => {
  const loc = (size: number, n = 1) => ({ nbBitmaps: n, bitmapDirectorySize: size, bitmapDirectoryOffset: 0x10000 });
  async function devWith(dir: Uint8Array): Promise<MemoryDevice> {
    const dev = new MemoryDevice({ size: 0x20000 });
    await dev.write(0x10000, dir);
    return dev;
  }

  it('checks counts, extra data and constraints', async () => {
    const two = encodeBitmapDirectory([entry({ name: 'a' }), entry({ name: 'b' })]);
    const dev = await devWith(two);
    expect((await loadBitmapDirectory(dev, loc(two.length, 2), 65536, 1 << 20)).map((e) => e.name)).toEqual(['a', 'b']);
    await expect(loadBitmapDirectory(dev, loc(two.length, 1), 65536, 1 << 20)).rejects.toThrow(
      'More bitmaps found than specified in header extension',
    );
    await expect(loadBitmapDirectory(dev, loc(two.length, 3), 65536, 1 << 20)).rejects.toThrow(
      'Less bitmaps found than specified in header extension',
    );
    await expect(loadBitmapDirectory(dev, loc(two.length - 8, 2), 65536, 1 << 20)).rejects.toThrow('Broken bitmap directory');
    await expect(loadBitmapDirectory(dev, loc(0), 65536, 1 << 20)).rejects.toThrow('Requested bitmap directory size is zero');
    const extra = encodeBitmapDirectory([entry({ extraData: new Uint8Array(8) })]);
    await expect(loadBitmapDirectory(await devWith(extra), loc(extra.length), 65536, 1 << 20)).rejects.toThrow(
      'Bitmap extra data is not supported',
    );
    const bad = encodeBitmapDirectory([entry({ name: 'odd', granularityBits: 40 })]);
    await expect(loadBitmapDirectory(await devWith(bad), loc(bad.length), 65536, 1 << 20)).rejects.toThrow(
      "Bitmap 'odd' doesn't satisfy the constraints",
    );
  });
});

describeQemu('bitmaps written by qemu-img and qemu-io', () => {
  let dir = '';
  let cleanup = (): void => {};
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-bitmap-'));
    const img = join(dir, 'b.qcow2');
    must('qemu-img', ['create', '-f', 'qcow2', img, '100M']);
    must('qemu-img', ['bitmap', '--add', img, 'first']);
    must('qemu-img', ['bitmap', '--add', '-g', '512', img, 'fine']);
    must('qemu-img', ['bitmap', '--add', '--disable', '-g', '2M', img, 'off']);
    qemuIo(['-c', 'write 0 1M', img]); // dirties the enabled bitmaps, which are then stored
  });
  afterAll(() => cleanup());

  it('loads the directory and every table', async () => {
    const dev = await FileDevice.open(join(dir, 'b.qcow2'), { readOnly: true });
    try {
      const { header, extensions } = await loadHeader(dev);
      const ext = findExtension(extensions, 'bitmaps')!;
      expect(ext.nbBitmaps).toBe(3);
      const list = await loadBitmapDirectory(dev, ext, 65536, header.size);
      expect(list.map((e) => [e.name, e.granularityBits, e.flags])).toEqual([
        ['first', 16, BME_FLAG_AUTO],
        ['fine', 9, BME_FLAG_AUTO],
        ['off', 21, 0],
      ]);
      const tables = await Promise.all(list.map((e) => loadBitmapTable(dev, e, 65536, header.size)));
      expect(tables.map((t) => t.length)).toEqual([1, 1, 1]);
      // the first 1 MiB was written: 'first' and 'fine' hold data, the disabled bitmap stays empty
      expect(tables[0]![0]!.kind).toBe('data');
      expect(tables[1]![0]!.kind).toBe('data');
      expect(tables[2]![0]!.kind).toBe('zeroes');
      const re = encodeBitmapDirectory(list);
      const onDisk = new Uint8Array(ext.bitmapDirectorySize);
      await dev.read(ext.bitmapDirectoryOffset, onDisk);
      expect(re).toEqual(onDisk);
    } finally {
      await dev.close();
    }
  });
});
