/**
 * The snapshot table as `check` reads and repairs it (qemu 7.2's block/qcow2-snapshot.c:
 * qcow2_check_read_snapshot_table, qcow2_do_read_snapshots in repair mode, and the table rewrite
 * qcow2_write_snapshots with the few cluster allocations it needs). Entries are decoded and
 * encoded by format/snapshot.ts's codec; what is check's own is qemu's repair-mode reading
 * (oversized extra data cut, overhanging entries dropped) and keeping every field's bytes.
 */
import { BDRV_SECTOR_SIZE, strerror, type BlockDevice } from '@tsimg/raw';
import {
  type CheckImage,
  type CheckSnapshot,
  readAt,
  u64,
  diskRefcount,
  lookupRefblock,
  readRefcount,
  setCachedRefcount,
  flushRefblocks,
  preWriteOverlapCheck,
} from './check-state.js';
import { hexDigits64 } from '../format/hex.js';
import { type CheckResult, CheckAbort, FIX_ERRORS } from './check-refcounts.js';
import {
  decodeSnapshotExtra,
  decodeSnapshotHeader,
  encodeSnapshot,
  joinSnapshotEntries,
  ICOUNT_NONE,
  MAX_SNAPSHOTS,
  QCOW_MAX_SNAPSHOT_EXTRA_DATA,
  QCOW_MAX_SNAPSHOTS_SIZE,
  SNAPSHOT_HEADER_SIZE,
  SNAPSHOT_KNOWN_EXTRA_SIZE,
  type Qcow2Snapshot,
} from '../format/snapshot.js';
import { decodeByteString } from '../format/byte-string.js';

/** qemu's -errno of a failure, as an errno name. */
export function errnoOf(err: unknown): string {
  if (err instanceof CheckAbort) return err.errno;
  const e = (err as { errno?: unknown; code?: unknown } | null) ?? {};
  if (typeof e.errno === 'string') return e.errno;
  if (typeof e.code === 'string' && e.code.startsWith('E')) return e.code;
  return 'EIO';
}

/** The text qemu prints for a check's errno ("Check failed: <this>"). */
export function checkErrnoText(errno: string): string {
  return strerror(errno);
}

const SNAPSHOT_HEADER = SNAPSHOT_HEADER_SIZE;
const MAX_EXTRA = QCOW_MAX_SNAPSHOT_EXTRA_DATA;
const MAX_SNAPSHOTS_SIZE = QCOW_MAX_SNAPSHOTS_SIZE;

const utf8 = new TextDecoder('utf-8', { fatal: false });

/** The bytes of a C string: up to the first NUL (qemu keeps names as C strings). */
function untilNul(b: Uint8Array): Uint8Array {
  const nul = b.indexOf(0);
  return nul < 0 ? b : b.subarray(0, nul);
}

/** Sequential reads over a table, one large read at a time. */
class SeqReader {
  #buf: Uint8Array = new Uint8Array(0);
  #start = 0;
  constructor(private readonly file: BlockDevice) {}
  async read(offset: number, length: number): Promise<Uint8Array> {
    if (offset < this.#start || offset + length > this.#start + this.#buf.length) {
      this.#start = offset;
      this.#buf = await readAt(this.file, offset, Math.max(length, 256 * 1024));
    }
    return this.#buf.subarray(offset - this.#start, offset - this.#start + length);
  }
}

/** qemu's error with an optional hint line (error_append_hint). */
class SnapshotReadError extends Error {
  constructor(
    message: string,
    readonly errno: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

/** qcow2_do_read_snapshots in its check flavour (`repair` drops what qemu drops). */
async function readSnapshots(
  img: CheckImage,
  repair: boolean,
  counts: { reduced: number; extraDropped: number },
): Promise<void> {
  img.snapshots = [];
  if (!img.nbSnapshots) {
    img.snapshotsSize = 0;
    return;
  }
  const reader = new SeqReader(img.file);
  let offset = img.snapshotsOffset;
  let tableLength = 0;
  const out: CheckSnapshot[] = [];
  for (let i = 0; i < img.nbSnapshots; i++) {
    const pre = offset;
    tableLength = Math.ceil(tableLength / 8) * 8;
    offset = Math.ceil(offset / 8) * 8;
    const h = await reader.read(offset, SNAPSHOT_HEADER);
    const v = new DataView(h.buffer, h.byteOffset, h.length);
    offset += SNAPSHOT_HEADER;
    const { l1TableOffset, l1Size, idSize, nameSize, extraDataSize } = decodeSnapshotHeader(v, 0);
    // the exact 64-bit value for messages (the number is inexact beyond 2^53)
    const l1TableOffsetHex = hexDigits64(v.getUint32(0), v.getUint32(4));
    let extra = extraDataSize;
    let truncate = false;
    if (extra > MAX_EXTRA) {
      if (!repair) {
        throw new SnapshotReadError(
          `Too much extra metadata in snapshot table entry ${i}`,
          'EFBIG',
          'You can force-remove this extra metadata with qemu-img check -r all',
        );
      }
      img.log(`Discarding too much extra metadata in snapshot table entry ${i} (${extra} > ${MAX_EXTRA})`);
      counts.extraDropped++;
      truncate = true;
    }
    const fixed = h.slice();
    const knownExtra = (await reader.read(offset, Math.min(24, extra))).slice();
    offset += Math.min(24, extra);
    let unknownExtra = new Uint8Array(0);
    if (extra > 24) {
      const extraEnd = offset + extra - 24;
      if (truncate) extra = MAX_EXTRA;
      unknownExtra = (await reader.read(offset, extra - 24)).slice();
      offset = extraEnd;
    }
    const idBytes = untilNul((await reader.read(offset, idSize)).slice());
    offset += idSize;
    const nameBytes = untilNul((await reader.read(offset, nameSize)).slice());
    offset += nameSize;
    const id = utf8.decode(idBytes);
    const name = utf8.decode(nameBytes);
    tableLength += SNAPSHOT_HEADER + extra + idSize + nameSize;
    if (tableLength > MAX_SNAPSHOTS_SIZE || offset - img.snapshotsOffset > 0x7fffffff) {
      if (!repair) {
        throw new SnapshotReadError(
          'Snapshot table is too big',
          'EFBIG',
          `You can force-remove all ${img.nbSnapshots - i} overhanging snapshots with qemu-img check -r all`,
        );
      }
      img.log(`Discarding ${img.nbSnapshots - i} overhanging snapshots (snapshot table is too big)`);
      counts.reduced += img.nbSnapshots - i;
      img.nbSnapshots = i;
      offset = pre;
      break;
    }
    out.push({
      id,
      name,
      l1TableOffset,
      l1TableOffsetHex,
      l1Size,
      extraDataSize: extra,
      raw: { fixed, knownExtra, unknownExtra, id: idBytes, name: nameBytes },
    });
  }
  img.snapshots = out;
  img.snapshotsSize = offset - img.snapshotsOffset;
}

/** qcow2_check_read_snapshot_table. */
export async function checkReadSnapshotTable(img: CheckImage, res: CheckResult, fix: number): Promise<void> {
  let ptr: Uint8Array;
  try {
    ptr = await readAt(img.file, 60, 12);
  } catch (err) {
    res.checkErrors++;
    img.log(`ERROR failed to read the snapshot table pointer from the image header: ${(err as Error).message}`);
    throw new CheckAbort('EIO');
  }
  const pv = new DataView(ptr.buffer);
  img.nbSnapshots = pv.getUint32(0);
  const offHi = pv.getUint32(4);
  img.snapshotsOffset = u64(offHi, pv.getUint32(8));
  const counts = { reduced: 0, extraDropped: 0 };
  if (img.nbSnapshots > MAX_SNAPSHOTS && fix & FIX_ERRORS) {
    img.log(`Discarding ${img.nbSnapshots - MAX_SNAPSHOTS} overhanging snapshots`);
    counts.reduced += img.nbSnapshots - MAX_SNAPSHOTS;
    img.nbSnapshots = MAX_SNAPSHOTS;
  }
  let invalid: { msg: string; errno: string } | undefined;
  if (img.nbSnapshots > MAX_SNAPSHOTS) invalid = { msg: 'snapshot table too large', errno: 'EFBIG' };
  else if (
    // qcow2_validate_table, on the exact 64-bit value (a double would round it, and with it
    // its alignment)
    (1n << 63n) - 1n - BigInt(img.nbSnapshots * SNAPSHOT_HEADER) < pv.getBigUint64(4) ||
    pv.getUint32(8) % img.clusterSize !== 0
  ) {
    invalid = { msg: 'snapshot table offset invalid', errno: 'EINVAL' };
  }
  if (invalid) {
    res.checkErrors++;
    img.log(`ERROR ${invalid.msg}`, 'report');
    if (img.nbSnapshots > MAX_SNAPSHOTS) {
      img.log(`You can force-remove all ${img.nbSnapshots - MAX_SNAPSHOTS} overhanging snapshots with qemu-img check -r all`);
    }
    img.snapshotsOffset = 0;
    img.nbSnapshots = 0;
    img.snapshots = [];
    throw new CheckAbort(invalid.errno);
  }
  try {
    await readSnapshots(img, (fix & FIX_ERRORS) !== 0, counts);
  } catch (err) {
    res.checkErrors++;
    if (err instanceof SnapshotReadError) {
      img.log(`ERROR failed to read the snapshot table: ${err.message}`, 'report');
      if (err.hint) img.log(err.hint);
    } else {
      img.log(`ERROR failed to read the snapshot table: Failed to read snapshot table: ${(err as Error).message}`, 'report');
    }
    img.snapshotsOffset = 0;
    img.nbSnapshots = 0;
    img.snapshots = [];
    throw new CheckAbort(err instanceof SnapshotReadError ? err.errno : 'EIO');
  }
  res.corruptions += counts.reduced + counts.extraDropped;
  if (counts.reduced) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, img.nbSnapshots);
    try {
      await img.file.write(60, b);
      await img.file.flush();
    } catch (err) {
      res.checkErrors++;
      img.log(`ERROR failed to update the snapshot count in the image header: ${(err as Error).message}`);
      throw new CheckAbort('EIO');
    }
    img.header.nbSnapshots = img.nbSnapshots;
    res.corruptionsFixed += counts.reduced;
    res.corruptions -= counts.reduced;
  }
  if (img.header.version >= 3) {
    img.snapshots.forEach((sn, i) => {
      if (sn.extraDataSize < 16) {
        res.corruptions++;
        img.log(`${fix & FIX_ERRORS ? 'Repairing' : 'ERROR'} snapshot table entry ${i} is incomplete`);
      }
    });
  }
}

/**
 * qcow2_alloc_clusters for the snapshot-table rewrite: the first run of clusters that are free
 * on disk (qemu's free_cluster_index starts at 0 after open), their refcounts set to 1. Only
 * clusters covered by existing refcount blocks can be allocated here (true for any table a
 * check rewrites unless the image is terabytes large); otherwise ENOSPC.
 *
 * Why not the engine's Allocator: during a check the image is opened without one (a check
 * must open images the engine refuses, see check-state.ts), its refcounts live in check's own
 * refcount-block cache, freed clusters are discarded at once rather than queued, and a
 * refcount block that would have to be created is an error here, not an allocation. What is
 * shared is the first-fit rule itself (alloc_clusters_noref), six lines.
 */
async function allocClusters(img: CheckImage, size: number, overlapCheck: boolean): Promise<number> {
  const cs = img.clusterSize;
  const n = Math.ceil(size / cs);
  let next = 0;
  for (let i = 0; i < n; i++) {
    const rc = await diskRefcount(img, next++);
    if (rc === undefined) throw new CheckAbort('EIO');
    if (rc !== 0) i = -1;
  }
  const first = next - n;
  // qemu checks the new table against the metadata only after allocating; checking first
  // gives the same outcome without counting clusters that will not be used.
  if (overlapCheck && !(await preWriteOverlapCheck(img, 0, first * cs, size))) throw new CheckAbort('EIO');
  await addRefcount(img, first, n, 1);
  return first * cs;
}

/** update_refcount over `count` clusters from `first` by `delta` (+1 / -1) in existing refcount blocks. */
async function addRefcount(img: CheckImage, first: number, count: number, delta: number): Promise<void> {
  const perBlock = 2 ** img.refcountBlockBits;
  for (let c = first; c < first + count; c++) {
    const r = await lookupRefblock(img, Math.floor(c / perBlock));
    if (r.kind === 'error') throw new CheckAbort('EIO');
    if (r.kind === 'none') throw new CheckAbort(delta < 0 ? 'EINVAL' : 'ENOSPC');
    const index = c % perBlock;
    const v = readRefcount(r.block, index, img.refcountOrder) + delta;
    if (v < 0 || v > img.refcountMax) throw new CheckAbort('EINVAL');
    setCachedRefcount(img, r.offset, r.block, index, v);
    if (v === 0) {
      // QCOW2_DISCARD_SNAPSHOT passes through by default: freed clusters read as zeroes
      await flushRefblocks(img);
      await img.file.discard(c * img.clusterSize, img.clusterSize).catch(() => undefined);
    }
  }
}

/**
 * The entry qcow2_write_snapshots writes for `sn`: its fields as read, the three known extra
 * fields always present (defaults where the entry had none), and the l1_table_offset bytes
 * copied exactly (the decoded number is inexact beyond 2^53).
 */
function rewrittenEntry(sn: CheckSnapshot, virtualSize: number): Uint8Array {
  const f = decodeSnapshotHeader(new DataView(sn.raw.fixed.buffer, sn.raw.fixed.byteOffset, SNAPSHOT_HEADER), 0);
  const known = decodeSnapshotExtra(
    new DataView(sn.raw.knownExtra.buffer, sn.raw.knownExtra.byteOffset, sn.raw.knownExtra.length),
    0,
    sn.raw.knownExtra.length,
  );
  // vm_state_size: the 64-bit field when present, else the 32-bit one
  const vmState = known.vmStateSizeLarge ?? BigInt(f.vmStateSize32);
  const entry: Qcow2Snapshot = {
    l1TableOffset: 0,
    l1Size: f.l1Size,
    id: decodeByteString(sn.raw.id),
    name: decodeByteString(sn.raw.name),
    dateSec: f.dateSec,
    dateNsec: f.dateNsec,
    vmClockNsec: f.vmClockNsec,
    vmStateSize32: vmState <= 0xffff_ffffn ? Number(vmState) : 0,
    extraDataSize: Math.max(SNAPSHOT_KNOWN_EXTRA_SIZE, sn.extraDataSize),
    vmStateSizeLarge: vmState,
    diskSize: known.diskSize ?? BigInt(Math.floor(virtualSize / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE),
    icount: known.icount ?? ICOUNT_NONE,
    unknownExtraData: sn.raw.unknownExtra,
  };
  const bytes = encodeSnapshot(entry);
  bytes.set(sn.raw.fixed.subarray(0, 8), 0);
  return bytes;
}

/** qcow2_write_snapshots: writes the snapshot list to new clusters, switches the header, frees the old table. */
export async function writeSnapshots(img: CheckImage): Promise<void> {
  let size = 0;
  for (const sn of img.snapshots) {
    size = Math.ceil(size / 8) * 8 + SNAPSHOT_HEADER + Math.max(24, sn.extraDataSize) + sn.raw.id.length + sn.raw.name.length;
    if (size > MAX_SNAPSHOTS_SIZE) throw new CheckAbort('EFBIG');
  }
  const offset = await allocClusters(img, size, true);
  await flushRefblocks(img);
  await img.file.flush();
  const table = joinSnapshotEntries(img.snapshots.map((sn) => rewrittenEntry(sn, img.virtualSize)));
  await img.file.write(offset, table);
  await img.file.flush();
  const hdr = new Uint8Array(12);
  const hv = new DataView(hdr.buffer);
  hv.setUint32(0, img.nbSnapshots);
  hv.setBigUint64(4, BigInt(offset));
  await img.file.write(60, hdr);
  await img.file.flush();
  img.header.nbSnapshots = img.nbSnapshots;
  img.header.snapshotsOffset = offset;
  // qcow2_free_clusters: a failure only leaks the old table
  const cs = img.clusterSize;
  if (img.snapshotsSize > 0) {
    const first = Math.floor(img.snapshotsOffset / cs);
    const last = Math.floor((img.snapshotsOffset + img.snapshotsSize - 1) / cs);
    try {
      await addRefcount(img, first, last - first + 1, -1);
    } catch (err) {
      img.log(`qcow2_free_clusters failed: ${checkErrnoText(errnoOf(err))}`);
    }
    await flushRefblocks(img);
  }
  img.snapshotsOffset = offset;
  img.snapshotsSize = size;
}
