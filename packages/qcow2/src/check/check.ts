/**
 * `check` for qcow2: qemu 7.2's qcow2_co_check_locked — the snapshot table, the refcount check
 * with its repairs (check-refcounts.ts, check-rebuild.ts), the OFLAG_COPIED check — plus
 * `repairDirty`, the repair qemu runs when a dirty lazy-refcounts image is opened for writing.
 *
 * Every line qemu prints goes to the caller's `log`, in qemu's words, so the CLI can reproduce
 * qemu-img's stderr; the numbers come back as a {@link CheckResult}.
 */
import { IoError, type BlockDevice } from '@tsimg/raw';
import {
  type CheckImage,
  type CheckLog,
  openForCheck,
  readAt,
  u64,
  diskRefcount,
  preWriteOverlapCheck,
  writeIncompatibleFeatures,
} from './check-state.js';
import { hexDigits64 } from '../format/hex.js';
import { OL_ACTIVE_L1, OL_ACTIVE_L2 } from '../format/overlap.js';
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
import { checkReadSnapshotTable, writeSnapshots, errnoOf, checkErrnoText } from './check-snapshots.js';
import { INCOMPAT_CORRUPT, INCOMPAT_DIRTY } from '../format/types.js';

export { FIX_ERRORS, FIX_LEAKS, emptyResult, type CheckResult } from './check-refcounts.js';
export { openForCheck, type CheckImage, type CheckLog } from './check-state.js';
export { checkErrnoText } from './check-snapshots.js';

/** What a check run ends with: the counts, and qemu's -errno when the check could not complete. */
export interface CheckOutcome {
  result: CheckResult;
  /** errno name ('EIO', 'EFBIG', ...) when qcow2_co_check returned an error. */
  errno?: string;
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
      img.log(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hexDigits64(hi, lo)} refcount=${rc}`);
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
        img.log(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${hexDigits64(ehi, elo)} refcount=${refcount}`);
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
