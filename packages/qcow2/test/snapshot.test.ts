import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { join } from 'node:path';
import { FileDevice, MemoryDevice, type BlockDevice } from '@tsimg/raw';
import { encodeByteString, loadHeader, loadSnapshots, type Qcow2Snapshot } from '@tsimg/qcow2';
import { cutAtNul, decodeByteString } from '../src/format/byte-string.js';
import { decodeSnapshot, decodeSnapshotTable, encodeSnapshot, encodeSnapshotTable, ICOUNT_NONE, QCOW_MAX_SNAPSHOTS_SIZE, snapshotDiskSize, snapshotEntrySize, snapshotIcount, snapshotVmStateSize, SnapshotTableError, validateSnapshotTable } from '../src/format/snapshot.js';
import { describeQemu, must, tempDir } from '../../../test-images/qemu.js';

const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });

/** Entries whose optional fields agree with their extra_data_size, as on disk. */
const arbSnapshot: fc.Arbitrary<Qcow2Snapshot> = fc
  .record({
    l1TableOffset: fc.maxSafeNat(),
    l1Size: fc.nat({ max: 0xffffffff }),
    id: fc.string({ maxLength: 20 }),
    name: fc.string({ unit: 'grapheme', maxLength: 40 }),
    dateSec: fc.nat({ max: 0xffffffff }),
    dateNsec: fc.nat({ max: 0xffffffff }),
    vmClockNsec: u64,
    vmStateSize32: fc.nat({ max: 0xffffffff }),
    extraDataSize: fc.oneof(fc.constantFrom(0, 8, 16, 24), fc.integer({ min: 0, max: 100 })),
    large: u64,
    disk: u64,
    icount: u64,
    unknown: fc.uint8Array({ maxLength: 76 }),
  })
  .map((r) => {
    const sn: Qcow2Snapshot = {
      l1TableOffset: r.l1TableOffset,
      l1Size: r.l1Size,
      id: r.id,
      name: r.name,
      dateSec: r.dateSec,
      dateNsec: r.dateNsec,
      vmClockNsec: r.vmClockNsec,
      vmStateSize32: r.vmStateSize32,
      extraDataSize: r.extraDataSize,
      unknownExtraData: new Uint8Array(0),
    };
    if (r.extraDataSize >= 8) sn.vmStateSizeLarge = r.large;
    if (r.extraDataSize >= 16) sn.diskSize = r.disk;
    if (r.extraDataSize >= 24) sn.icount = r.icount;
    if (r.extraDataSize > 24) sn.unknownExtraData = r.unknown.slice(0, r.extraDataSize - 24);
    if (r.extraDataSize > 24 && sn.unknownExtraData.length < r.extraDataSize - 24) {
      sn.extraDataSize = 24 + sn.unknownExtraData.length;
    }
    return sn;
  });

describe('snapshot entry codec', () => {
  it('round-trips every field of an entry', () => {
    fc.assert(
      fc.property(arbSnapshot, (sn) => {
        const bytes = encodeSnapshot(sn);
        expect(bytes.length).toBe(snapshotEntrySize(sn));
        const { snapshot, end } = decodeSnapshot(new DataView(bytes.buffer), 0);
        expect(end).toBe(bytes.length);
        expect(snapshot).toEqual(sn);
      }),
    );
  });

  it('round-trips a table with entries aligned to 8 bytes', () => {
    fc.assert(
      fc.property(fc.array(arbSnapshot, { maxLength: 8 }), (list) => {
        const table = encodeSnapshotTable(list);
        expect(decodeSnapshotTable(new DataView(table.buffer), list.length)).toEqual(list);
      }),
    );
  });

  it('lays out the fields at the spec offsets', () => {
    const sn: Qcow2Snapshot = {
      l1TableOffset: 0x50000,
      l1Size: 2,
      id: '7',
      name: 'ab',
      dateSec: 0x01020304,
      dateNsec: 0x05060708,
      vmClockNsec: 0x1112131415161718n,
      vmStateSize32: 0x21222324,
      extraDataSize: 24,
      vmStateSizeLarge: 0x3132333435363738n,
      diskSize: 0x4142434445464748n,
      icount: 0x5152535455565758n,
      unknownExtraData: new Uint8Array(0),
    };
    const b = encodeSnapshot(sn);
    const v = new DataView(b.buffer);
    expect(v.getBigUint64(0)).toBe(0x50000n);
    expect(v.getUint32(8)).toBe(2);
    expect(v.getUint16(12)).toBe(1);
    expect(v.getUint16(14)).toBe(2);
    expect(v.getUint32(16)).toBe(0x01020304);
    expect(v.getUint32(20)).toBe(0x05060708);
    expect(v.getBigUint64(24)).toBe(0x1112131415161718n);
    expect(v.getUint32(32)).toBe(0x21222324);
    expect(v.getUint32(36)).toBe(24);
    expect(v.getBigUint64(40)).toBe(0x3132333435363738n);
    expect(v.getBigUint64(48)).toBe(0x4142434445464748n);
    expect(v.getBigUint64(56)).toBe(0x5152535455565758n);
    expect(Array.from(b.subarray(64))).toEqual([0x37, 0x61, 0x62]);
  });

  it('derives VM state size, disk size and icount like qemu', () => {
    const base: Qcow2Snapshot = {
      l1TableOffset: 0, l1Size: 0, id: '1', name: '', dateSec: 0, dateNsec: 0, vmClockNsec: 0n,
      vmStateSize32: 1234, extraDataSize: 0, unknownExtraData: new Uint8Array(0),
    };
    expect(snapshotVmStateSize(base)).toBe(1234n);
    expect(snapshotDiskSize(base, 4096)).toBe(4096n);
    expect(snapshotIcount(base)).toBeUndefined();
    const full = { ...base, extraDataSize: 24, vmStateSizeLarge: 1n << 40n, diskSize: 99n, icount: 5n };
    expect(snapshotVmStateSize(full)).toBe(1n << 40n);
    expect(snapshotDiskSize(full, 4096)).toBe(99n);
    expect(snapshotIcount(full)).toBe(5n);
    expect(snapshotIcount({ ...full, icount: ICOUNT_NONE })).toBeUndefined();
  });

  it('refuses an entry that does not fit, and extra data that does not cover its fields', () => {
    expect(() => decodeSnapshot(new DataView(new ArrayBuffer(39)), 0)).toThrow('truncated');
    const b = new Uint8Array(48);
    new DataView(b.buffer).setUint32(36, 24); // extra data runs past the buffer
    expect(() => decodeSnapshot(new DataView(b.buffer), 0)).toThrow('truncated');
    const sn: Qcow2Snapshot = {
      l1TableOffset: 0, l1Size: 0, id: '1', name: '', dateSec: 0, dateNsec: 0, vmClockNsec: 0n,
      vmStateSize32: 0, extraDataSize: 8, diskSize: 1n, unknownExtraData: new Uint8Array(0),
    };
    expect(() => encodeSnapshot(sn)).toThrow('does not cover');
  });
});

/** A device of `size` bytes holding `entry` (padded to 8 bytes) over and over from offset 0. */
function repeatingTable(entry: Uint8Array, size: number): BlockDevice {
  const stride = (entry.length + 7) & ~7;
  const pattern = new Uint8Array(stride);
  pattern.set(entry);
  const dev = new MemoryDevice({ size: 0 });
  return Object.assign(Object.create(dev) as BlockDevice, {
    size: () => size,
    read: async (offset: number, into: Uint8Array) => {
      for (let i = 0; i < into.length; ) {
        const at = (offset + i) % stride;
        const n = Math.min(stride - at, into.length - i);
        into.set(pattern.subarray(at, at + n), i);
        i += n;
      }
    },
  });
}

/** A 40-byte entry header with the given extra data and ID sizes (the bytes after it are zero). */
function entryOf(extraDataSize: number, idSize = 0): Uint8Array {
  const e = new Uint8Array(40 + extraDataSize + idSize);
  const v = new DataView(e.buffer);
  v.setUint32(36, extraDataSize);
  v.setUint16(12, idSize);
  return e;
}

describe('loadSnapshots limits', () => {
  it('refuses more than 1024 bytes of extra data, with qemu\'s hint', async () => {
    const err = await loadSnapshots(repeatingTable(entryOf(1025), 1 << 20), 0, 3).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SnapshotTableError);
    expect((err as SnapshotTableError).message).toBe('Too much extra metadata in snapshot table entry 0');
    expect((err as SnapshotTableError).hint).toBe('You can force-remove this extra metadata with qemu-img check -r all');
  });

  it('accepts exactly 1024 bytes of extra data', async () => {
    const list = await loadSnapshots(repeatingTable(entryOf(1024), 1 << 20), 0, 2);
    expect(list).toHaveLength(2);
    expect(list[1]!.unknownExtraData.length).toBe(1000);
  });

  it('refuses a table larger than 64 MiB, naming the overhanging snapshots', async () => {
    // each entry: 40 + 1024 + 65535 bytes, padded to 66600; the 64 MiB limit falls in entry 1007
    const per = (40 + 1024 + 0xffff + 7) & ~7;
    const count = 65536;
    const err = await loadSnapshots(repeatingTable(entryOf(1024, 0xffff), 2 ** 40), 0, count).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SnapshotTableError);
    expect((err as SnapshotTableError).message).toBe('Snapshot table is too big');
    const failing = Math.floor(QCOW_MAX_SNAPSHOTS_SIZE / per); // 0-based index of the entry crossing the limit
    expect((err as SnapshotTableError).hint).toBe(
      `You can force-remove all ${count - failing} overhanging snapshots with qemu-img check -r all`,
    );
  });

  it('validates the table pointer like qcow2_validate_table', () => {
    expect(() => validateSnapshotTable(65536 * 3, 65536, 65536)).not.toThrow();
    expect(() => validateSnapshotTable(0, 65537, 65536)).toThrow('Snapshot table too large');
    expect(() => validateSnapshotTable(512, 1, 65536)).toThrow('Snapshot table offset invalid');
  });
});

describeQemu('snapshot tables written by qemu-img', () => {
  let dir = '';
  let cleanup = (): void => {};
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-snap-'));
    must('qemu-img', ['create', '-f', 'qcow2', join(dir, 's.qcow2'), '3M']);
    must('qemu-img', ['snapshot', '-c', 'one', join(dir, 's.qcow2')]);
    must('qemu-img', ['snapshot', '-c', 'twö', join(dir, 's.qcow2')]);
    must('qemu-img', ['snapshot', '-d', 'one', join(dir, 's.qcow2')]);
    must('qemu-img', ['snapshot', '-c', 'three', join(dir, 's.qcow2')]);
  });
  afterAll(() => cleanup());

  it('decodes every entry, and re-encodes the table byte for byte', async () => {
    const dev = await FileDevice.open(join(dir, 's.qcow2'), { readOnly: true });
    try {
      const { header } = await loadHeader(dev);
      const list = await loadSnapshots(dev, header.snapshotsOffset, header.nbSnapshots);
      expect(list.map((s) => [s.id, s.name])).toEqual([['2', 'twö'], ['3', 'three']]);
      for (const s of list) {
        expect(s.extraDataSize).toBe(24);
        expect(s.diskSize).toBe(3n * 1024n * 1024n);
        expect(s.icount).toBe(0n);
        expect(snapshotVmStateSize(s)).toBe(0n);
        expect(s.l1Size).toBe(1);
        expect(s.l1TableOffset % 65536).toBe(0);
        expect(Math.abs(s.dateSec - Date.now() / 1000)).toBeLessThan(600);
      }
      const table = encodeSnapshotTable(list);
      const onDisk = new Uint8Array(table.length);
      await dev.read(header.snapshotsOffset, onDisk);
      expect(table).toEqual(onDisk);
    } finally {
      await dev.close();
    }
  });
});

describe('names as byte strings', () => {
  it('round-trips any bytes, and decodes valid UTF-8 as usual', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), (b) => {
        expect(encodeByteString(decodeByteString(b))).toEqual(b);
      }),
    );
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme' }), (s) => {
        expect(decodeByteString(new TextEncoder().encode(s))).toBe(s);
      }),
    );
  });

  it('escapes invalid bytes one by one', () => {
    expect(decodeByteString(Uint8Array.from([0x61, 0xbd, 0xc3]))).toBe('a\udcbd\udcc3');
    expect(decodeByteString(Uint8Array.from([0xed, 0xa0, 0x80]))).toBe('\udced\udca0\udc80'); // encoded surrogate
    expect(decodeByteString(Uint8Array.from([0xc0, 0x80]))).toBe('\udcc0\udc80'); // overlong NUL
  });

  it('keeps a snapshot name with invalid UTF-8 byte for byte', () => {
    const name = decodeByteString(Uint8Array.from([0x73, 0xff, 0x6e]));
    const sn: Qcow2Snapshot = {
      l1TableOffset: 0, l1Size: 0, id: '1', name, dateSec: 0, dateNsec: 0, vmClockNsec: 0n,
      vmStateSize32: 0, extraDataSize: 0, unknownExtraData: new Uint8Array(0),
    };
    const bytes = encodeSnapshot(sn);
    expect(Array.from(bytes.subarray(41))).toEqual([0x73, 0xff, 0x6e]);
    expect(decodeSnapshot(new DataView(bytes.buffer), 0).snapshot.name).toBe(name);
  });

  it('cuts at NUL like a C string', () => {
    expect(cutAtNul('ab\0cd')).toBe('ab');
    expect(cutAtNul('abc')).toBe('abc');
  });
});
