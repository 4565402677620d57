/**
 * Internal snapshots of an open image, as qemu 7.2's block/qcow2-snapshot.c makes them:
 * create (qcow2_snapshot_create), apply (qcow2_snapshot_goto) and delete
 * (qcow2_snapshot_delete), in qemu's order of writes and syncs, so that the image ends up byte
 * for byte as qemu-img leaves it (apart from the date fields it takes from the clock).
 */
import { LimitError, NotFoundError, TsimgError, UnsupportedError, errorWithCode, strerror } from '@tsimg/raw';
import { cBuffer } from '../format/byte-string.js';
import { decodeL1Entry } from '../format/l2-entry.js';
import { OL_ACTIVE_L1 } from '../format/overlap.js';
import { MAX_SNAPSHOTS, SNAPSHOT_KNOWN_EXTRA_SIZE, snapshotDiskSize, type Qcow2Snapshot } from '../format/snapshot.js';
import { QCOW_MAX_L1_SIZE } from '../format/types.js';
import { overlapCheck } from './corruption.js';
import { headerSwitch } from './header-write.js';
import { growL1 } from './l1-table.js';
import { validateTable } from './open-checks.js';
import { resize } from './resize.js';
import { readL1, updateSnapshotRefcount } from './snapshot-refcount.js';
import { findSnapshotByIdAndName, findSnapshotByIdOrName, newSnapshotId, writeSnapshots } from './snapshot-table.js';
import { virtualSize, type EngineState } from './state.js';

/** What a new snapshot records besides its contents (qemu's QEMUSnapshotInfo). */
export interface SnapshotCreateOptions {
  /** The name (tag); kept as qemu's 256-byte buffer keeps it: up to a NUL, at most 255 bytes. */
  name: string;
  /** Wall-clock time of the snapshot in seconds since the epoch; default: now. */
  dateSec?: number;
  /** Nanoseconds of that time; default: now (microsecond precision, as qemu-img's gettimeofday). */
  dateNsec?: number;
  /** The guest clock; default 0, as qemu-img records it. */
  vmClockNsec?: bigint;
  /** The record/replay instruction count; default 0, as qemu-img records it. */
  icount?: bigint;
}

/** A snapshot error that qemu reports on a line of its own before the command's message. */
function withReport(err: TsimgError, report: string): TsimgError {
  return Object.assign(err, { report });
}

/** qcow2_snapshot_create. Returns the new entry. */
export async function createSnapshot(s: EngineState, opts: SnapshotCreateOptions): Promise<Qcow2Snapshot> {
  if (s.snapshots.length >= MAX_SNAPSHOTS) throw new LimitError('Too many snapshots', { errno: 'EFBIG' });
  if (s.dataFile !== undefined) throw new UnsupportedError('Operation not supported', { errno: 'ENOTSUP' });
  // qemu-img takes the time from gettimeofday: microseconds.
  const nowUs = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  const sn: Qcow2Snapshot = {
    l1TableOffset: 0,
    l1Size: s.l1Size,
    id: newSnapshotId(s.snapshots),
    name: cBuffer(opts.name, 256),
    dateSec: opts.dateSec ?? Math.floor(nowUs / 1_000_000),
    dateNsec: opts.dateNsec ?? (nowUs % 1_000_000) * 1000,
    vmClockNsec: opts.vmClockNsec ?? 0n,
    vmStateSize32: 0,
    extraDataSize: SNAPSHOT_KNOWN_EXTRA_SIZE,
    vmStateSizeLarge: 0n,
    diskSize: BigInt(virtualSize(s)),
    icount: opts.icount ?? 0n,
    unknownExtraData: new Uint8Array(0),
  };
  const alloc = s.allocator!;
  const l1Bytes = s.l1Size * 8;
  sn.l1TableOffset = await alloc.allocClusters(l1Bytes);
  await overlapCheck(s, sn.l1TableOffset, l1Bytes);
  await s.file.write(sn.l1TableOffset, s.l1Bytes.slice(0, l1Bytes));
  // Every cluster gets its extra reference, on disk, before the table names the new L1 copy.
  await updateSnapshotRefcount(s, s.l1Offset, s.l1Size, 1);
  await writeSnapshots(s, [...s.snapshots, sn]);
  if (sn.l1Size > 0) s.protectedMetadata.inactiveL1 = [...s.protectedMetadata.inactiveL1, { offset: sn.l1TableOffset, length: l1Bytes }];
  return s.snapshots[s.snapshots.length - 1]!;
}

/** qcow2_validate_table for a snapshot's L1 table. */
function validateSnapshotL1(s: EngineState, sn: Qcow2Snapshot): void {
  validateTable(BigInt(sn.l1TableOffset), sn.l1Size, 8, QCOW_MAX_L1_SIZE, s.clusterSize, 'Snapshot L1 table');
}

/** bdrv_snapshot_goto's wording of a driver error: "Failed to load snapshot: <strerror>". */
function loadFailure(err: unknown): never {
  if (!(err instanceof TsimgError)) throw err;
  const reason = err.errno !== undefined ? strerror(err.errno) : err.message;
  const out = errorWithCode(err.code, `Failed to load snapshot: ${reason}`, { cause: err, errno: err.errno });
  throw (err as { report?: string }).report !== undefined ? withReport(out, (err as { report?: string }).report!) : out;
}

/**
 * qcow2_snapshot_goto: the active layer becomes a copy of the snapshot `idOrName` (an ID
 * first, then a name). Errors read as bdrv_snapshot_goto words them.
 */
export async function gotoSnapshot(s: EngineState, idOrName: string): Promise<void> {
  try {
    await doGoto(s, idOrName);
  } catch (err) {
    loadFailure(err);
  }
}

async function doGoto(s: EngineState, idOrName: string): Promise<void> {
  if (s.dataFile !== undefined) throw new UnsupportedError('Operation not supported', { errno: 'ENOTSUP' });
  const index = findSnapshotByIdOrName(s.snapshots, idOrName);
  if (index < 0) throw new NotFoundError("Can't find the snapshot", { errno: 'ENOENT' });
  const sn = s.snapshots[index]!;
  try {
    validateSnapshotL1(s, sn);
  } catch (err) {
    // qemu prints the reason on its own line, then fails with the errno.
    throw err instanceof TsimgError ? withReport(err, err.message) : err;
  }
  const diskSize = snapshotDiskSize(sn, virtualSize(s));
  if (diskSize !== BigInt(virtualSize(s))) await resizeForSnapshot(s, diskSize);
  // The active table must be able to hold the snapshot's (padded with zeroes when larger).
  await growL1(s, sn.l1Size, true);
  const curBytes = s.l1Size * 8;
  const snL1 = await readL1(s, sn.l1TableOffset, sn.l1Size, s.l1Size);
  // Unlike qemu, the copy goes to disk without the COPIED flags the snapshot's table kept from
  // when it was taken: until the last walk below sets them from the refcounts, a crash would
  // leave COPIED on L2 tables the snapshot shares (and the next write would change the
  // snapshot). Without them a crash leaves only needless copy-on-write; the final table is
  // the same as qemu's (that walk rewrites every flag).
  for (let i = 0; i < sn.l1Size; i++) snL1[i * 8] = snL1[i * 8]! & 0x7f;
  // References for what the snapshot's table names first; the old active clusters lose theirs
  // only once the active table on disk no longer names them (a crash then only leaks).
  await updateSnapshotRefcount(s, sn.l1TableOffset, sn.l1Size, 1);
  await overlapCheck(s, s.l1Offset, curBytes, OL_ACTIVE_L1);
  // After a failed write nobody knows which table the disk holds: no more changes (see
  // headerSwitch). qemu-img exits there; a library caller might carry on writing.
  await headerSwitch(s, () => s.file.write(s.l1Offset, snL1));
  try {
    try {
      await updateSnapshotRefcount(s, s.l1Offset, s.l1Size, -1);
    } finally {
      // The table in memory follows the one on disk, whatever happened to the refcounts.
      s.l1Bytes.set(snL1);
      const active = s.protectedMetadata.activeL2;
      active.reset([]);
      for (let i = 0; i < s.l1Size; i++) active.add(decodeL1Entry(s.l1, i * 8).l2Offset);
    }
    // COPIED flags of the new active table (dropping the old one may have freed up clusters).
    await updateSnapshotRefcount(s, s.l1Offset, s.l1Size, 0);
  } catch (err) {
    // Until the last walk completes, the active table may say COPIED of clusters it shares
    // with the snapshot: a write would change the snapshot too. No more changes.
    s.frozen = true;
    throw err;
  }
}

/** blk_truncate to the snapshot's disk size; qemu reports its failure on a line of its own. */
async function resizeForSnapshot(s: EngineState, diskSize: bigint): Promise<void> {
  try {
    await resize(s, Number(diskSize));
  } catch (err) {
    throw err instanceof TsimgError ? withReport(err, err.message) : err;
  }
}

/** qemu's error_setg_errno: "<context>: <strerror>", the errno and kind kept. */
function contextError(err: unknown, context: string): never {
  if (!(err instanceof TsimgError)) throw err;
  const reason = err.errno !== undefined ? strerror(err.errno) : err.message;
  throw errorWithCode(err.code, `${context}: ${reason}`, { cause: err, errno: err.errno });
}

/**
 * qcow2_snapshot_delete: removes the first snapshot whose ID (when given) and name (when given)
 * match, then drops its references and frees its L1 table. Errors carry qemu's messages.
 */
export async function deleteSnapshot(s: EngineState, id: string | undefined, name: string | undefined): Promise<void> {
  if (s.dataFile !== undefined) throw new UnsupportedError('Operation not supported', { errno: 'ENOTSUP' });
  const index = findSnapshotByIdAndName(s.snapshots, id, name);
  if (index < 0) throw new NotFoundError("Can't find the snapshot", { errno: 'ENOENT' });
  const sn = s.snapshots[index]!;
  validateSnapshotL1(s, sn);
  try {
    await writeSnapshots(s, s.snapshots.filter((_, i) => i !== index));
  } catch (err) {
    contextError(err, 'Failed to remove snapshot from snapshot list');
  }
  // The snapshot is gone from the table: from here on a failure only leaks clusters.
  const meta = s.protectedMetadata;
  try {
    await updateSnapshotRefcount(s, sn.l1TableOffset, sn.l1Size, -1);
  } catch (err) {
    contextError(err, 'Failed to free the cluster and L1 table');
  }
  meta.inactiveL1 = meta.inactiveL1.filter((r) => r.offset !== sn.l1TableOffset);
  // qemu only prints a failure to free the L1 table; the deletion has happened.
  await s.allocator!.freeClusters(sn.l1TableOffset, sn.l1Size * 8, true).catch(() => undefined);
  try {
    await updateSnapshotRefcount(s, s.l1Offset, s.l1Size, 0);
  } catch (err) {
    contextError(err, 'Failed to update snapshot status in disk');
  }
}
