/**
 * The internal snapshot table: a pure codec for its entries and `loadSnapshots`, which reads
 * the table the way qemu's qcow2_read_snapshots does, with qemu's limits and messages.
 *
 * Entry layout (docs/interop/qcow2.txt, "Snapshot table"), each entry 8-byte aligned:
 *
 *     0 -  7  l1_table_offset        24 - 31  vm_clock_nsec
 *     8 - 11  l1_size                32 - 35  vm_state_size (32 bit)
 *    12 - 13  id_str_size            36 - 39  extra_data_size
 *    14 - 15  name_size              40 - ..  extra data, then id_str, then name (no NULs)
 *    16 - 19  date_sec
 *    20 - 23  date_nsec
 *
 * Extra data: 0-7 vm_state_size_large, 8-15 disk_size, 16-23 icount; each present only when
 * extra_data_size covers it. Bytes beyond 24 are unknown extensions, kept verbatim.
 *
 * The 64-bit counters (vm clock, VM state size, disk size, icount) stay `bigint`: they are
 * arbitrary u64 on disk and qemu prints them as such.
 */
import { FormatError, IoError, strerror, TsimgError, type BlockDevice } from '@tsimg/raw';
import { decodeByteString, encodeByteString } from './byte-string.js';

/** Size of the fixed part of an entry. */
export const SNAPSHOT_HEADER_SIZE = 40;
/** Size of the extra data qemu 7.2 knows (vm_state_size_large, disk_size, icount). */
export const SNAPSHOT_KNOWN_EXTRA_SIZE = 24;
/** Most extra data per entry qemu accepts (QCOW_MAX_SNAPSHOT_EXTRA_DATA). */
export const QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024;
/** Most snapshots qemu accepts (QCOW_MAX_SNAPSHOTS). */
export const MAX_SNAPSHOTS = 65536;
/** Largest snapshot table qemu accepts, in bytes (QCOW_MAX_SNAPSHOTS_SIZE). */
export const QCOW_MAX_SNAPSHOTS_SIZE = 1024 * MAX_SNAPSHOTS;
/** The icount value meaning "not recorded". */
export const ICOUNT_NONE = 0xffff_ffff_ffff_ffffn;

/** One snapshot table entry, every on-disk field kept. */
export interface Qcow2Snapshot {
  /** Exact up to 2^53; a larger (corrupt) on-disk value is kept approximately. */
  l1TableOffset: number;
  /** Number of entries of the snapshot's L1 table. */
  l1Size: number;
  /** Unique ID (usually a decimal number), as stored (bytes as by decodeByteString). */
  id: string;
  /** The name, as stored (bytes as by decodeByteString). */
  name: string;
  dateSec: number;
  dateNsec: number;
  /** Guest clock at snapshot time, in nanoseconds. */
  vmClockNsec: bigint;
  /** The 32-bit vm_state_size of the fixed part (0 when the real size does not fit). */
  vmStateSize32: number;
  /** extra_data_size as on disk (the optional fields below exist when it covers them). */
  extraDataSize: number;
  vmStateSizeLarge?: bigint;
  /** Virtual disk size when the snapshot was taken. */
  diskSize?: bigint;
  /** Instruction count for record/replay; {@link ICOUNT_NONE} means none. */
  icount?: bigint;
  /** Extra data beyond the known 24 bytes, kept so a rewrite preserves it. */
  unknownExtraData: Uint8Array;
}


/** The VM state size the entry describes: the 64-bit field when present, else the 32-bit one. */
export function snapshotVmStateSize(sn: Qcow2Snapshot): bigint {
  return sn.vmStateSizeLarge ?? BigInt(sn.vmStateSize32);
}

/** The disk size recorded in the entry, or `virtualSize` when the entry predates the field. */
export function snapshotDiskSize(sn: Qcow2Snapshot, virtualSize: number): bigint {
  return sn.diskSize ?? BigInt(virtualSize);
}

/** The entry's icount, or undefined when none is recorded (absent, or all ones). */
export function snapshotIcount(sn: Qcow2Snapshot): bigint | undefined {
  return sn.icount === undefined || sn.icount === ICOUNT_NONE ? undefined : sn.icount;
}

/** Bytes an entry takes on disk, without the padding that aligns the next one. */
export function snapshotEntrySize(sn: Qcow2Snapshot): number {
  return SNAPSHOT_HEADER_SIZE + sn.extraDataSize + encodeByteString(sn.id).length + encodeByteString(sn.name).length;
}

/** qemu's snapshots_size: the bytes a table takes, entries one after another, each 8-byte aligned. */
export function snapshotTableSize(snapshots: readonly Qcow2Snapshot[]): number {
  let size = 0;
  for (const sn of snapshots) size = Math.ceil(size / 8) * 8 + snapshotEntrySize(sn);
  return size;
}

/** The fixed 40-byte part of an entry, with the sizes of what follows it. */
export interface SnapshotHeader {
  /** Exact up to 2^53; a larger (corrupt) on-disk value is kept approximately. */
  l1TableOffset: number;
  l1Size: number;
  idSize: number;
  nameSize: number;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  vmStateSize32: number;
  extraDataSize: number;
}

/** Decodes the fixed part of the entry at `offset` (the caller made sure 40 bytes are there). */
export function decodeSnapshotHeader(view: DataView, offset: number): SnapshotHeader {
  return {
    // qemu lists a snapshot whatever its L1 offset says (it is checked only when used), so a
    // value beyond 2^53 is kept, approximately: any such offset is far past the end of a file.
    l1TableOffset: Number(view.getBigUint64(offset)),
    l1Size: view.getUint32(offset + 8),
    idSize: view.getUint16(offset + 12),
    nameSize: view.getUint16(offset + 14),
    dateSec: view.getUint32(offset + 16),
    dateNsec: view.getUint32(offset + 20),
    vmClockNsec: view.getBigUint64(offset + 24),
    vmStateSize32: view.getUint32(offset + 32),
    extraDataSize: view.getUint32(offset + 36),
  };
}

/** Decodes the known extra data at `offset`: the fields `length` bytes cover (up to 24). */
export function decodeSnapshotExtra(
  view: DataView,
  offset: number,
  length: number,
): Pick<Qcow2Snapshot, 'vmStateSizeLarge' | 'diskSize' | 'icount'> {
  const out: Pick<Qcow2Snapshot, 'vmStateSizeLarge' | 'diskSize' | 'icount'> = {};
  if (length >= 8) out.vmStateSizeLarge = view.getBigUint64(offset);
  if (length >= 16) out.diskSize = view.getBigUint64(offset + 8);
  if (length >= 24) out.icount = view.getBigUint64(offset + 16);
  return out;
}

/**
 * Decodes the entry at `offset` of `view`. Returns the entry and the offset just past it
 * (before alignment). Throws a FormatError when the entry does not fit in `view`.
 */
export function decodeSnapshot(view: DataView, offset: number): { snapshot: Qcow2Snapshot; end: number } {
  if (offset + SNAPSHOT_HEADER_SIZE > view.byteLength) throw new FormatError('Snapshot table entry is truncated');
  const h = decodeSnapshotHeader(view, offset);
  const { idSize, nameSize, extraDataSize } = h;
  const sn: Qcow2Snapshot = {
    l1TableOffset: h.l1TableOffset,
    l1Size: h.l1Size,
    id: '',
    name: '',
    dateSec: h.dateSec,
    dateNsec: h.dateNsec,
    vmClockNsec: h.vmClockNsec,
    vmStateSize32: h.vmStateSize32,
    extraDataSize,
    unknownExtraData: new Uint8Array(0),
  };
  let p = offset + SNAPSHOT_HEADER_SIZE;
  const end = p + extraDataSize + idSize + nameSize;
  if (end > view.byteLength) throw new FormatError('Snapshot table entry is truncated');
  Object.assign(sn, decodeSnapshotExtra(view, p, extraDataSize));
  if (extraDataSize > SNAPSHOT_KNOWN_EXTRA_SIZE) {
    sn.unknownExtraData = new Uint8Array(view.buffer, view.byteOffset + p + SNAPSHOT_KNOWN_EXTRA_SIZE, extraDataSize - SNAPSHOT_KNOWN_EXTRA_SIZE).slice();
  }
  p += extraDataSize;
  sn.id = decodeByteString(new Uint8Array(view.buffer, view.byteOffset + p, idSize));
  p += idSize;
  sn.name = decodeByteString(new Uint8Array(view.buffer, view.byteOffset + p, nameSize));
  return { snapshot: sn, end };
}

/**
 * Encodes one entry (no trailing padding). Extra data holds the optional fields the entry has,
 * zero where a later field is present but an earlier one is not, then the unknown bytes;
 * `extraDataSize` must cover them. Throws when the ID or name is longer than 65535 bytes.
 */
export function encodeSnapshot(sn: Qcow2Snapshot): Uint8Array {
  const id = encodeByteString(sn.id);
  const name = encodeByteString(sn.name);
  if (id.length > 0xffff || name.length > 0xffff) throw new FormatError('Snapshot ID or name is too long');
  const known = sn.icount !== undefined ? 24 : sn.diskSize !== undefined ? 16 : sn.vmStateSizeLarge !== undefined ? 8 : 0;
  const minExtra = sn.unknownExtraData.length > 0 ? SNAPSHOT_KNOWN_EXTRA_SIZE + sn.unknownExtraData.length : known;
  if (sn.extraDataSize < minExtra) throw new FormatError('Snapshot extra_data_size does not cover its fields');
  const out = new Uint8Array(SNAPSHOT_HEADER_SIZE + sn.extraDataSize + id.length + name.length);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, BigInt(sn.l1TableOffset));
  v.setUint32(8, sn.l1Size);
  v.setUint16(12, id.length);
  v.setUint16(14, name.length);
  v.setUint32(16, sn.dateSec);
  v.setUint32(20, sn.dateNsec);
  v.setBigUint64(24, sn.vmClockNsec);
  v.setUint32(32, sn.vmStateSize32);
  v.setUint32(36, sn.extraDataSize);
  const x = SNAPSHOT_HEADER_SIZE;
  if (sn.vmStateSizeLarge !== undefined) v.setBigUint64(x, sn.vmStateSizeLarge);
  if (sn.diskSize !== undefined) v.setBigUint64(x + 8, sn.diskSize);
  if (sn.icount !== undefined) v.setBigUint64(x + 16, sn.icount);
  if (sn.unknownExtraData.length > 0) out.set(sn.unknownExtraData, x + SNAPSHOT_KNOWN_EXTRA_SIZE);
  out.set(id, x + sn.extraDataSize);
  out.set(name, x + sn.extraDataSize + id.length);
  return out;
}

/** Encodes a whole table: entries one after another, each starting 8-byte aligned. */
export function encodeSnapshotTable(snapshots: readonly Qcow2Snapshot[]): Uint8Array {
  return joinSnapshotEntries(snapshots.map(encodeSnapshot));
}

/** Lays encoded entries out as a table: one after another, each starting 8-byte aligned. */
export function joinSnapshotEntries(parts: readonly Uint8Array[]): Uint8Array {
  let size = 0;
  for (const p of parts) size = ((size + 7) & ~7) + p.length;
  const out = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    off = (off + 7) & ~7;
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Decodes `count` entries from a table buffer that starts at the table's first entry. */
export function decodeSnapshotTable(view: DataView, count: number): Qcow2Snapshot[] {
  const out: Qcow2Snapshot[] = [];
  let off = 0;
  for (let i = 0; i < count; i++) {
    off = (off + 7) & ~7;
    const { snapshot, end } = decodeSnapshot(view, off);
    out.push(snapshot);
    off = end;
  }
  return out;
}

/** A snapshot table qemu refuses to open; `hint` is qemu's second line (how to repair). */
export class SnapshotTableError extends FormatError {
  readonly hint: string;
  constructor(message: string, hint: string, errno: string) {
    super(message, { errno });
    this.name = 'SnapshotTableError';
    this.hint = hint;
  }
}

/**
 * Reads the `count` entries of the table at `offset` as qemu 7.2 does on open: entry by entry,
 * refusing an entry with more than 1024 bytes of extra data and a table whose entries add up
 * to more than 64 MiB, with qemu's messages and hints. Reads past the end of the file see
 * zeroes, as in qemu. The caller has checked `count` and `offset` (`validateSnapshotTable`).
 */
export async function loadSnapshots(dev: BlockDevice, offset: number, count: number): Promise<Qcow2Snapshot[]> {
  const out: Qcow2Snapshot[] = [];
  const reader = new WindowReader(dev);
  let pos = offset;
  let tableLength = 0;
  for (let i = 0; i < count; i++) {
    pos = pos + ((8 - (pos % 8)) % 8);
    tableLength = tableLength + ((8 - (tableLength % 8)) % 8);
    const fixed = await readOrFail(reader.bytes(pos, SNAPSHOT_HEADER_SIZE), 'Failed to read snapshot table');
    const { extraDataSize, idSize, nameSize } = decodeSnapshotHeader(new DataView(fixed.buffer, fixed.byteOffset, fixed.byteLength), 0);
    if (extraDataSize > QCOW_MAX_SNAPSHOT_EXTRA_DATA) {
      throw new SnapshotTableError(
        `Too much extra metadata in snapshot table entry ${i}`,
        'You can force-remove this extra metadata with qemu-img check -r all',
        'EFBIG',
      );
    }
    const size = SNAPSHOT_HEADER_SIZE + extraDataSize + idSize + nameSize;
    const entry = await readOrFail(reader.bytes(pos, size), 'Failed to read snapshot table');
    const { snapshot } = decodeSnapshot(new DataView(entry.buffer, entry.byteOffset, entry.byteLength), 0);
    pos += size;
    tableLength += size;
    if (tableLength > QCOW_MAX_SNAPSHOTS_SIZE || pos - offset > 0x7fffffff) {
      throw new SnapshotTableError(
        'Snapshot table is too big',
        `You can force-remove all ${count - i} overhanging snapshots with qemu-img check -r all`,
        'EFBIG',
      );
    }
    out.push(snapshot);
  }
  return out;
}

/** Awaits a read, turning a device failure into qemu's "<context>: <strerror>" message. */
export async function readOrFail<T>(read: Promise<T>, context: string): Promise<T> {
  try {
    return await read;
  } catch (err) {
    if (!(err instanceof TsimgError) || err.code !== 'io') throw err;
    throw new IoError(`${context}: ${err.errno !== undefined ? strerror(err.errno) : err.message}`, { cause: err, errno: err.errno });
  }
}

/** Serves small sequential reads from one large window, so a big table costs few device reads. */
class WindowReader {
  static readonly WINDOW = 1 << 20;
  #dev: BlockDevice;
  #start = 0;
  #buf = new Uint8Array(0);

  constructor(dev: BlockDevice) {
    this.#dev = dev;
  }

  /** The `length` bytes at `offset` (a view valid until the next call). */
  async bytes(offset: number, length: number): Promise<Uint8Array> {
    if (offset < this.#start || offset + length > this.#start + this.#buf.length) {
      this.#buf = new Uint8Array(Math.max(length, WindowReader.WINDOW));
      this.#start = offset;
      try {
        await this.#dev.read(offset, this.#buf);
      } catch {
        // The window may reach where the entry does not (e.g. past the largest readable
        // offset): read just the entry, so only a read qemu would make can fail.
        this.#buf = new Uint8Array(length);
        await this.#dev.read(offset, this.#buf);
      }
    }
    return this.#buf.subarray(offset - this.#start, offset - this.#start + length);
  }
}

/**
 * qemu's open-time check of the snapshot table pointer (qcow2_validate_table): at most 65536
 * entries, offset cluster-aligned and the minimal table end below 2^63.
 */
export function validateSnapshotTable(offset: number, count: number, clusterSize: number): void {
  if (count > MAX_SNAPSHOTS) throw new FormatError('Snapshot table too large', { errno: 'EFBIG' });
  if (offset % clusterSize !== 0) throw new FormatError('Snapshot table offset invalid', { errno: 'EINVAL' });
}
