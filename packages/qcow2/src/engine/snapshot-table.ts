/**
 * The snapshot table of a writable image: finding entries the ways qemu does (by ID, by name,
 * by both), the next free ID, and qcow2_write_snapshots — a whole new table written to new
 * clusters, the header switched to it, the old table freed.
 */
import { LimitError } from '@tsimg/raw';
import { cutAtNul } from '../format/byte-string.js';
import {
  encodeSnapshot,
  ICOUNT_NONE,
  QCOW_MAX_SNAPSHOTS_SIZE,
  SNAPSHOT_KNOWN_EXTRA_SIZE,
  snapshotDiskSize,
  snapshotTableSize,
  snapshotVmStateSize,
  type Qcow2Snapshot,
} from '../format/snapshot.js';
import { overlapCheck } from './corruption.js';
import { headerSwitch } from './header-write.js';
import { flushAll, virtualSize, type EngineState } from './state.js';

/** Header offset of nb_snapshots; snapshots_offset follows it. */
const NB_SNAPSHOTS_OFFSET = 60;

/**
 * find_snapshot_by_id_and_name: the index of the first entry whose ID (when given) and name
 * (when given) both match, or -1 (also when neither is given).
 */
export function findSnapshotByIdAndName(list: readonly Qcow2Snapshot[], id: string | undefined, name: string | undefined): number {
  if (id === undefined && name === undefined) return -1;
  return list.findIndex((sn) => (id === undefined || sn.id === id) && (name === undefined || sn.name === name));
}

/** find_snapshot_by_id_or_name: an entry with that ID first, else one with that name; or -1. */
export function findSnapshotByIdOrName(list: readonly Qcow2Snapshot[], idOrName: string): number {
  const byId = findSnapshotByIdAndName(list, idOrName, undefined);
  return byId >= 0 ? byId : findSnapshotByIdAndName(list, undefined, idOrName);
}

const ULONG_MAX = 2n ** 64n - 1n;

/** C's strtoul(s, NULL, 10) on a 64-bit host: whitespace, a sign, digits; saturating. */
function strtoul(s: string): bigint {
  const m = /^[\t\n\v\f\r ]*([+-]?)(\d+)/.exec(s);
  if (m === null) return 0n;
  const n = BigInt(m[2]!);
  if (n > ULONG_MAX) return ULONG_MAX;
  return m[1] === '-' ? (ULONG_MAX + 1n - n) & ULONG_MAX : n;
}

/** find_new_snapshot_id: one more than the largest ID read as a number (wrapping as C does). */
export function newSnapshotId(list: readonly Qcow2Snapshot[]): string {
  let max = 0n;
  for (const sn of list) {
    const id = strtoul(sn.id);
    if (id > max) max = id;
  }
  return ((max + 1n) & ULONG_MAX).toString();
}

/**
 * An entry as qcow2_write_snapshots writes it back: IDs and names as C strings, at least the
 * 24 bytes of extra data qemu knows (the VM state size, the disk size — the image's size for an
 * entry that predates the field — and the icount, "none" when absent), unknown extra data kept.
 */
function rewritten(sn: Qcow2Snapshot, diskSize: number): Qcow2Snapshot {
  const vmState = snapshotVmStateSize(sn);
  return {
    ...sn,
    id: cutAtNul(sn.id),
    name: cutAtNul(sn.name),
    vmStateSize32: vmState <= 0xffff_ffffn ? Number(vmState) : 0,
    extraDataSize: Math.max(SNAPSHOT_KNOWN_EXTRA_SIZE, sn.extraDataSize),
    vmStateSizeLarge: vmState,
    diskSize: snapshotDiskSize(sn, diskSize),
    icount: sn.icount ?? ICOUNT_NONE,
  };
}

/**
 * qcow2_write_snapshots: writes `list` as a new table into freshly allocated clusters (synced
 * with its refcounts), switches the header's nb_snapshots / snapshots_offset to it (synced),
 * then frees the old table (discarded from the file). On success `s.snapshots` is `list`.
 * Bytes of the new clusters that no entry covers (the alignment padding) keep what the file
 * holds there, as qemu writes entry by entry.
 */
export async function writeSnapshots(s: EngineState, list: readonly Qcow2Snapshot[]): Promise<void> {
  const alloc = s.allocator!;
  const size = virtualSize(s);
  const entries = list.map((sn) => rewritten(sn, size));
  const tableSize = snapshotTableSize(entries);
  if (tableSize > QCOW_MAX_SNAPSHOTS_SIZE) throw new LimitError('Snapshot table is too big', { errno: 'EFBIG' });
  const offset = await alloc.allocClusters(tableSize);
  let headerTried = false;
  try {
    await flushAll(s);
    // The header does not name these clusters yet, so they must indeed be free.
    await overlapCheck(s, offset, tableSize);
    if (tableSize > 0) {
      const bytes = new Uint8Array(tableSize);
      const inFile = Math.max(0, Math.min(tableSize, s.file.size() - offset));
      if (inFile > 0) await s.file.read(offset, bytes.subarray(0, inFile));
      let at = 0;
      for (const sn of entries) {
        at = Math.ceil(at / 8) * 8;
        const e = encodeSnapshot(sn);
        bytes.set(e, at);
        at += e.length;
      }
      await s.file.write(offset, bytes);
    }
    // The new table and its refcounts must be stable before the header names it.
    await flushAll(s);
    const hdr = new Uint8Array(12);
    const v = new DataView(hdr.buffer);
    v.setUint32(0, entries.length);
    v.setBigUint64(4, BigInt(offset));
    headerTried = true;
    await headerSwitch(s, () => s.file.write(NB_SNAPSHOTS_OFFSET, hdr));
  } catch (err) {
    // As qemu the new table goes back — but only while the header cannot name it: after a
    // failed header write it may, and a leak is the safe side.
    if (!headerTried && !s.broken) await alloc.freeClusters(offset, tableSize, true).catch(() => undefined);
    throw err;
  }
  const oldOffset = s.header.snapshotsOffset;
  const oldSize = s.snapshotsSize;
  s.header.nbSnapshots = entries.length;
  s.header.snapshotsOffset = offset;
  s.snapshots = entries;
  s.snapshotsSize = tableSize;
  s.protectedMetadata.snapshotTable = tableSize > 0 ? { offset, length: tableSize } : undefined;
  await alloc.freeClusters(oldOffset, oldSize, true);
}
