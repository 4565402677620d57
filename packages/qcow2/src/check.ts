/**
 * `check` for qcow2: qemu 7.2's qcow2_co_check_locked — the snapshot table, the refcount check
 * with its repairs (check-refcounts.ts, check-rebuild.ts), the OFLAG_COPIED check — plus
 * `repairDirty`, the repair qemu runs when a dirty lazy-refcounts image is opened for writing.
 *
 * Every line qemu prints goes to the caller's `log`, in qemu's words, so the CLI can reproduce
 * qemu-img's stderr; the numbers come back as a {@link CheckResult}.
 */
import { IoError, strerror, type BlockDevice } from '@tsimg/raw';
import {
  type CheckImage,
  type CheckLog,
  type CheckSnapshot,
  openForCheck,
  readAt,
  hex64,
  u64,
  diskRefcount,
  lookupRefblock,
  readRefcount,
  setCachedRefcount,
  flushRefblocks,
  preWriteOverlapCheck,
  writeIncompatibleFeatures,
  OL_ACTIVE_L1,
  OL_ACTIVE_L2,
} from './check-state.js';
import {
  type CheckResult,
  type RefcountPass,
  CheckAbort,
  Imrt,
  FIX_ERRORS,
  FIX_LEAKS,
  emptyResult,
  calculateRefcounts,
  compareRefcounts,
} from './check-refcounts.js';
import { rebuildRefcountStructure } from './check-rebuild.js';
import { INCOMPAT_CORRUPT, INCOMPAT_DIRTY } from './types.js';

export { FIX_ERRORS, FIX_LEAKS, emptyResult, type CheckResult } from './check-refcounts.js';
export { openForCheck, type CheckImage, type CheckLog } from './check-state.js';

/** What a check run ends with: the counts, and qemu's -errno when the check could not complete. */
export interface CheckOutcome {
  result: CheckResult;
  /** errno name ('EIO', 'EFBIG', ...) when qcow2_co_check returned an error. */
  errno?: string;
}

const MAX_SNAPSHOTS = 65536;
const SNAPSHOT_HEADER = 40;
const MAX_EXTRA = 1024;
const MAX_SNAPSHOTS_SIZE = 1024 * MAX_SNAPSHOTS;

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
    const l1TableOffset = u64(v.getUint32(0), v.getUint32(4));
    const l1TableOffsetHex = hex64(v.getUint32(0), v.getUint32(4));
    const l1Size = v.getUint32(8);
    const idSize = v.getUint16(12);
    const nameSize = v.getUint16(14);
    let extra = v.getUint32(36);
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
async function checkReadSnapshotTable(img: CheckImage, res: CheckResult, fix: number): Promise<void> {
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
  else if (offHi >= 0x8000_0000 || 2 ** 63 - img.nbSnapshots * SNAPSHOT_HEADER < img.snapshotsOffset || img.snapshotsOffset % img.clusterSize !== 0) {
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

/** qcow2_write_snapshots: writes the snapshot list to new clusters, switches the header, frees the old table. */
async function writeSnapshots(img: CheckImage): Promise<void> {
  let size = 0;
  for (const sn of img.snapshots) {
    size = Math.ceil(size / 8) * 8 + SNAPSHOT_HEADER + Math.max(24, sn.extraDataSize) + sn.raw.id.length + sn.raw.name.length;
    if (size > MAX_SNAPSHOTS_SIZE) throw new CheckAbort('EFBIG');
  }
  const offset = await allocClusters(img, size, true);
  await flushRefblocks(img);
  await img.file.flush();
  const table = new Uint8Array(size);
  const tv = new DataView(table.buffer);
  let p = 0;
  for (const sn of img.snapshots) {
    p = Math.ceil(p / 8) * 8;
    const f = new DataView(sn.raw.fixed.buffer, sn.raw.fixed.byteOffset, SNAPSHOT_HEADER);
    const known = new Uint8Array(24);
    known.set(sn.raw.knownExtra);
    const kv = new DataView(known.buffer);
    const extra = sn.raw.knownExtra.length;
    // vm_state_size: the 64-bit field when present, else the 32-bit one
    const vmState = extra >= 8 ? kv.getBigUint64(0) : BigInt(f.getUint32(32));
    const diskSize = extra >= 16 ? kv.getBigUint64(8) : BigInt(Math.floor(img.virtualSize / 512) * 512);
    const icount = extra >= 24 ? kv.getBigUint64(16) : 0xffff_ffff_ffff_ffffn;
    table.set(sn.raw.fixed.subarray(0, 12), p); // l1_table_offset, l1_size
    tv.setUint16(p + 12, sn.raw.id.length);
    tv.setUint16(p + 14, sn.raw.name.length);
    table.set(sn.raw.fixed.subarray(16, 32), p + 16); // date_sec, date_nsec, vm_clock_nsec
    tv.setUint32(p + 32, vmState <= 0xffff_ffffn ? Number(vmState) : 0);
    tv.setUint32(p + 36, Math.max(24, sn.extraDataSize));
    p += SNAPSHOT_HEADER;
    tv.setBigUint64(p, vmState);
    tv.setBigUint64(p + 8, diskSize);
    tv.setBigUint64(p + 16, icount);
    p += 24;
    table.set(sn.raw.unknownExtra, p);
    p += sn.raw.unknownExtra.length;
    table.set(sn.raw.id, p);
    p += sn.raw.id.length;
    table.set(sn.raw.name, p);
    p += sn.raw.name.length;
  }
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

/** check_oflag_copied: the COPIED flag of L1 and L2 entries must say "refcount is 1". */
async function checkOflagCopied(img: CheckImage, res: CheckResult, fix: number): Promise<void> {
  const repair = fix & FIX_ERRORS ? true : fix & FIX_LEAKS ? !res.checkErrors && !res.corruptions && !res.leaks : false;
  const l1 = new DataView(img.l1Table.buffer, img.l1Table.byteOffset);
  const eb = img.l2EntryBytes;
  for (let i = 0; i < img.l1Size; i++) {
    const hi = l1.getUint32(i * 8);
    const lo = l1.getUint32(i * 8 + 4);
    const l2Offset = u64(hi & 0x00ff_ffff, (lo & 0xffff_fe00) >>> 0);
    if (!l2Offset) continue;
    const rc = await diskRefcount(img, Math.floor(l2Offset / img.clusterSize));
    if (rc === undefined) continue;
    const copied = (hi & 0x8000_0000) !== 0;
    if ((rc === 1) !== copied) {
      res.corruptions++;
      img.log(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex64(hi, lo)} refcount=${rc}`);
      if (repair) {
        l1.setUint32(i * 8, rc === 1 ? (hi | 0x8000_0000) >>> 0 : hi & 0x7fff_ffff);
        const ok = await preWriteOverlapCheck(img, OL_ACTIVE_L1, img.l1TableOffset + i * 8, 8);
        try {
          if (!ok) throw new IoError('Input/output error');
          await img.file.write(img.l1TableOffset + i * 8, img.l1Table.slice(i * 8, i * 8 + 8));
          await img.file.flush();
        } catch {
          res.checkErrors++;
          throw new CheckAbort('EIO');
        }
        res.corruptions--;
        res.corruptionsFixed++;
      }
    }
    // A table past the end of the file reads as zeroes: no entries to check.
    if (l2Offset >= img.file.size()) continue;
    let table: Uint8Array;
    try {
      table = await readAt(img.file, l2Offset, img.l2Size * eb);
    } catch (err) {
      img.log(`ERROR: Could not read L2 table: ${(err as Error).message}`);
      res.checkErrors++;
      throw new CheckAbort('EIO');
    }
    const v = new DataView(table.buffer);
    let dirty = 0;
    for (let j = 0; j < img.l2Size; j++) {
      const ehi = v.getUint32(j * eb);
      const elo = v.getUint32(j * eb + 4);
      if ((ehi & 0x4000_0000) !== 0) continue; // compressed
      const offHi = ehi & 0x00ff_ffff;
      const offLo = (elo & 0xffff_fe00) >>> 0;
      const hasOffset = offHi !== 0 || offLo !== 0;
      const zeroFlag = (elo & 1) !== 0 && !img.extendedL2;
      // NORMAL or ZERO_ALLOC (qcow2_get_cluster_type)
      const normal = zeroFlag ? hasOffset : hasOffset || (img.dataFile && (ehi & 0x8000_0000) !== 0);
      if (!normal) continue;
      let refcount: number;
      if (img.dataFile) {
        refcount = 1;
      } else {
        const r = await diskRefcount(img, Math.floor(u64(offHi, offLo) / img.clusterSize));
        if (r === undefined) continue;
        refcount = r;
      }
      if ((refcount === 1) !== ((ehi & 0x8000_0000) !== 0)) {
        res.corruptions++;
        img.log(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${hex64(ehi, elo)} refcount=${refcount}`);
        if (repair) {
          v.setUint32(j * eb, refcount === 1 ? (ehi | 0x8000_0000) >>> 0 : ehi & 0x7fff_ffff);
          dirty++;
        }
      }
    }
    if (dirty > 0) {
      if (!(await preWriteOverlapCheck(img, OL_ACTIVE_L2, l2Offset, img.clusterSize))) {
        img.log('ERROR: Could not write L2 table; metadata overlap check failed: Input/output error');
        res.checkErrors++;
        throw new CheckAbort('EIO');
      }
      try {
        await img.file.write(l2Offset, table);
        await img.file.flush();
      } catch (err) {
        img.log(`ERROR: Could not write L2 table: ${(err as Error).message}`);
        res.checkErrors++;
        throw new CheckAbort('EIO');
      }
      res.corruptions -= dirty;
      res.corruptionsFixed += dirty;
    }
  }
}

/** qcow2_check_refcounts. */
async function checkRefcounts(img: CheckImage, res: CheckResult, fix: number): Promise<void> {
  const cs = img.clusterSize;
  const nbClusters = Math.ceil(img.file.size() / cs);
  if (nbClusters > 0x7fffffff) {
    res.checkErrors++;
    throw new CheckAbort('EFBIG');
  }
  res.totalClusters = Math.ceil((Math.floor(img.virtualSize / 512) * 512) / cs);
  const p: RefcountPass = { img, res, imrt: new Imrt(img.refcountOrder, cs, nbClusters), rebuild: false };
  await calculateRefcounts(p, fix);
  const pre = { ...res };
  let highest = await compareRefcounts(p, 0);
  if (p.rebuild && fix & FIX_ERRORS) {
    const old = { ...res };
    let freshLeaks = 0;
    img.log('Rebuilding refcount structure');
    await rebuildRefcountStructure(p);
    res.corruptions = 0;
    res.leaks = 0;
    p.rebuild = false;
    p.imrt.clear();
    await calculateRefcounts(p, 0);
    if (fix & FIX_LEAKS) {
      const saved = { ...res };
      Object.assign(res, emptyResult());
      highest = await compareRefcounts(p, FIX_LEAKS);
      if (p.rebuild) img.log('ERROR rebuilt refcount structure is still broken');
      freshLeaks = res.leaks;
      Object.assign(res, saved);
    }
    if (res.corruptions < old.corruptions) res.corruptionsFixed += old.corruptions - res.corruptions;
    if (res.leaks < old.leaks) res.leaksFixed += old.leaks - res.leaks;
    res.leaks += freshLeaks;
  } else if (fix) {
    if (p.rebuild) {
      img.log('ERROR need to rebuild refcount structures');
      res.checkErrors++;
      throw new CheckAbort('EIO');
    }
    if (res.leaks || res.corruptions) {
      Object.assign(res, pre);
      highest = await compareRefcounts(p, fix);
    }
  }
  await checkOflagCopied(img, res, fix);
  res.imageEndOffset = (highest + 1) * cs;
}

function addResult(out: CheckResult, src: CheckResult, allocationInfo: boolean): void {
  out.corruptions += src.corruptions;
  out.leaks += src.leaks;
  out.checkErrors += src.checkErrors;
  out.corruptionsFixed += src.corruptionsFixed;
  out.leaksFixed += src.leaksFixed;
  if (allocationInfo) {
    out.imageEndOffset = src.imageEndOffset;
    out.totalClusters = src.totalClusters;
    out.allocatedClusters = src.allocatedClusters;
    out.fragmentedClusters = src.fragmentedClusters;
    out.compressedClusters = src.compressedClusters;
  }
}

/** Clears incompatible-feature bits in the header (qcow2_mark_clean / qcow2_mark_consistent). */
async function clearIncompatible(img: CheckImage, bits: bigint): Promise<void> {
  if ((img.header.incompatibleFeatures & bits) === 0n) return;
  img.header.incompatibleFeatures &= ~bits;
  await writeIncompatibleFeatures(img);
}

/**
 * Checks the image opened with {@link openForCheck} (qcow2_co_check_locked), repairing what
 * `fix` (FIX_LEAKS | FIX_ERRORS) allows. Never throws for what the image contains: failures
 * come back as `errno`, as qemu's negative return.
 */
export async function checkImage(img: CheckImage, fix = 0): Promise<CheckOutcome> {
  const result = emptyResult();
  const snap = emptyResult();
  try {
    await checkReadSnapshotTable(img, snap, fix);
  } catch (err) {
    addResult(result, snap, false);
    return { result, errno: errnoOf(err) };
  }
  const ref = emptyResult();
  let errno: string | undefined;
  try {
    await checkRefcounts(img, ref, fix);
  } catch (err) {
    errno = errnoOf(err);
  }
  addResult(result, ref, true);
  if (errno) {
    addResult(result, snap, false);
    return { result, errno };
  }
  if (snap.corruptions && fix & FIX_ERRORS) {
    // qcow2_check_fix_snapshot_table: the refcounts are sound now, so the table can be rewritten
    try {
      await writeSnapshots(img);
    } catch (err) {
      snap.checkErrors++;
      const e = errnoOf(err);
      img.log(`ERROR failed to update snapshot table: ${checkErrnoText(e)}`);
      addResult(result, snap, false);
      return { result, errno: e };
    }
    snap.corruptionsFixed += snap.corruptions;
    snap.corruptions = 0;
  }
  addResult(result, snap, false);
  if (fix && result.checkErrors === 0 && result.corruptions === 0) {
    try {
      await clearIncompatible(img, INCOMPAT_DIRTY);
      await clearIncompatible(img, INCOMPAT_CORRUPT);
    } catch (err) {
      return { result, errno: errnoOf(err) };
    }
  }
  return { result };
}

function errnoOf(err: unknown): string {
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

/**
 * What qemu does when closing an image opened for repair (qcow2_inactivate → qcow2_mark_clean):
 * the dirty bit is cleared once the metadata is written.
 */
export async function finishRepair(img: CheckImage): Promise<void> {
  await img.file.flush();
  await clearIncompatible(img, INCOMPAT_DIRTY);
}

/**
 * The repair qemu runs when an image with the dirty bit (lazy refcounts) is opened for writing
 * (qcow2_do_open → qcow2_co_check_locked with FIX_ERRORS | FIX_LEAKS): refcounts are rebuilt
 * from the L1/L2 tables and the dirty bit is cleared. Call it on the image file before loading
 * any refcount state. Lines qemu prints go to `log` (stderr). Throws an IoError
 * "Could not repair dirty image: <reason>" when the repair fails, as qemu's open does.
 */
export async function repairDirty(file: BlockDevice, log: CheckLog = () => {}): Promise<CheckResult> {
  const img = await openForCheck(file, log, true);
  const { result, errno } = await checkImage(img, FIX_LEAKS | FIX_ERRORS);
  if (errno || result.checkErrors) {
    const e = errno ?? 'EIO';
    throw new IoError(`Could not repair dirty image: ${checkErrnoText(e)}`, { errno: e });
  }
  return result;
}
