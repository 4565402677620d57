/**
 * The refcount part of `check`, ported from qemu 7.2's block/qcow2-refcount.c so reports match
 * line for line: the in-memory refcount table (IMRT) built from every reference the metadata
 * makes (calculate_refcounts, check_refcounts_l1/l2, check_refblocks), its comparison with the
 * on-disk refcounts (compare_refcounts) and the repairs qemu makes on the way (fixing refcounts,
 * zeroing misaligned preallocated L2 entries, growing the file for refcount blocks past its end).
 */
import { bytesEqual, isZero, strerror } from '@tsimg/raw';
import { setRefcount, getRefcount } from '../format/refcount.js';
import {
  type CheckImage,
  u64,
  readAt,
  reftableOffsetAt,
  reftableReserved,
  lookupRefblock,
  readRefcount,
  refcountText,
  setCachedRefcount,
  flushRefblocks,
  preWriteOverlapCheck,
} from './check-state.js';
import { hex, hexDigits, hexDigits64 } from '../format/hex.js';
import { OL_ACTIVE_L2, OL_INACTIVE_L2 } from '../format/overlap.js';
import { loadBitmapDirectory } from '../format/bitmap-directory.js';

/** Repair modes (qemu's BdrvCheckMode bits). */
export const FIX_LEAKS = 1;
export const FIX_ERRORS = 2;

/** qemu's BdrvCheckResult. */
export interface CheckResult {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

/** A zeroed result. */
export function emptyResult(): CheckResult {
  return {
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    imageEndOffset: 0,
    totalClusters: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
  };
}

/** A failure that ends the check, carrying qemu's -errno as a name ('EIO', 'EINVAL', ...). */
export class CheckAbort extends Error {
  readonly errno: string;
  constructor(errno: string) {
    super(errno);
    this.name = 'CheckAbort';
    this.errno = errno;
  }
}

/**
 * The in-memory refcount table: one big refcount block of the image's refcount width covering
 * `size` clusters, its buffer a whole number of clusters so slices can be written as refcount
 * blocks (qemu's realloc_refcount_array).
 */
export class Imrt {
  buf: Uint8Array;
  size: number;
  constructor(
    readonly order: number,
    readonly clusterSize: number,
    size: number,
  ) {
    this.buf = new Uint8Array(this.byteSize(size));
    this.size = size;
  }

  byteSize(entries: number): number {
    const bytes = Math.ceil((entries * 2 ** this.order) / 8);
    return Math.ceil(bytes / this.clusterSize) * this.clusterSize;
  }

  resize(entries: number): void {
    const bytes = this.byteSize(entries);
    if (bytes !== this.buf.length) {
      if (bytes > 2 ** 31) throw new CheckAbort('ENOMEM');
      const n = new Uint8Array(bytes);
      n.set(this.buf.subarray(0, Math.min(bytes, this.buf.length)));
      this.buf = n;
    }
    this.size = entries;
  }

  get(i: number): number {
    return getRefcount(this.buf, i, this.order);
  }

  set(i: number, v: number): void {
    setRefcount(this.buf, i, this.order, v);
  }

  clear(): void {
    this.buf.fill(0);
  }
}

/** Everything one calculate/compare pass works on. */
export interface RefcountPass {
  img: CheckImage;
  res: CheckResult;
  imrt: Imrt;
  rebuild: boolean;
}

const CHECK_FRAG_INFO = 2;

/** qcow2_inc_refcounts_imrt. `hexOffset` overrides the offset's text (for values beyond 2^53). */
export function incRefcounts(p: RefcountPass, offset: number, size: number, hexOffset?: string): void {
  const { img, res, imrt } = p;
  if (size <= 0) return;
  const cs = img.clusterSize;
  const fileLen = img.file.size();
  if (offset + size - fileLen >= cs) {
    img.log(
      `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${
        hexOffset ?? hexDigits(offset)
      } size ${hex(size)}`,
    );
    res.corruptions++;
    return;
  }
  const start = Math.floor(offset / cs);
  const last = Math.floor((offset + size - 1) / cs);
  for (let k = start; k <= last; k++) {
    if (k >= imrt.size) {
      try {
        imrt.resize(k + 1);
      } catch (err) {
        res.checkErrors++;
        throw err;
      }
    }
    const r = imrt.get(k);
    if (r === img.refcountMax) {
      img.log(`ERROR: overflow cluster offset=${hex(k * cs)}`);
      img.log(
        'Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing',
      );
      res.corruptions++;
      continue;
    }
    imrt.set(k, r + 1);
  }
}

/**
 * fix_l2_entry_by_zero: makes entry `index` of the L2 table at `l2Offset` a plain zero cluster
 * (extended L2: all present subclusters zero) on disk. Returns whether it was written and
 * whether it was refused because it would overwrite other metadata.
 */
async function fixL2EntryByZero(
  p: RefcountPass,
  l2Offset: number,
  table: Uint8Array,
  index: number,
  active: boolean,
): Promise<{ ok: boolean; overlap: boolean }> {
  const { img, res } = p;
  const eb = img.l2EntryBytes;
  const v = new DataView(table.buffer, table.byteOffset);
  const o = index * eb;
  if (img.extendedL2) {
    const alloc = v.getUint32(o + 12);
    v.setUint32(o + 8, (v.getUint32(o + 8) | alloc) >>> 0);
    v.setUint32(o + 12, 0);
    v.setUint32(o, 0);
    v.setUint32(o + 4, 0);
  } else {
    v.setUint32(o, 0);
    v.setUint32(o + 4, 1);
  }
  const entryOffset = l2Offset + o;
  if (!(await preWriteOverlapCheck(img, active ? OL_ACTIVE_L2 : OL_INACTIVE_L2, entryOffset, eb))) {
    img.log('ERROR: Overlap check failed');
    res.checkErrors++;
    return { ok: false, overlap: true };
  }
  try {
    await img.file.write(entryOffset, table.slice(o, o + eb));
    await img.file.flush();
  } catch (err) {
    img.log(`ERROR: Failed to overwrite L2 table entry: ${(err as Error).message}`);
    res.checkErrors++;
    return { ok: false, overlap: false };
  }
  res.corruptions--;
  res.corruptionsFixed++;
  return { ok: true, overlap: false };
}

/** check_refcounts_l2: counts every cluster the L2 table references and checks its entries. */
async function checkRefcountsL2(p: RefcountPass, l2Offset: number, flags: number, fix: number, active: boolean): Promise<void> {
  const { img, res } = p;
  const eb = img.l2EntryBytes;
  const cs = img.clusterSize;
  // A table entirely past the end of the file reads as zeroes: nothing to count or check.
  if (l2Offset >= img.file.size()) return;
  let table: Uint8Array;
  try {
    table = await readAt(img.file, l2Offset, img.l2Size * eb);
  } catch {
    img.log('ERROR: I/O error in check_refcounts_l2');
    res.checkErrors++;
    throw new CheckAbort('EIO');
  }
  const v = new DataView(table.buffer);
  const csizeShift = 62 - (img.clusterBits - 8); // 49..61
  const hiShift = csizeShift - 32;
  const csizeMask = 2 ** (img.clusterBits - 8) - 1;
  let nextContiguous = 0;
  for (let i = 0; i < img.l2Size; i++) {
    const o = i * eb;
    let hi = v.getUint32(o);
    const lo = v.getUint32(o + 4);
    if (hi === 0 && lo === 0 && (!img.extendedL2 || (v.getUint32(o + 8) === 0 && v.getUint32(o + 12) === 0))) continue;
    const bmZero = img.extendedL2 ? v.getUint32(o + 8) : 0;
    const bmAlloc = img.extendedL2 ? v.getUint32(o + 12) : 0;
    const compressed = (hi & 0x4000_0000) !== 0;
    const offHi = hi & 0x00ff_ffff;
    const offLo = (lo & 0xffff_fe00) >>> 0;
    const hasOffset = offHi !== 0 || offLo !== 0;
    let type: 'compressed' | 'zero-alloc' | 'zero-plain' | 'normal' | 'unallocated';
    if (compressed) type = 'compressed';
    else if ((lo & 1) !== 0 && !img.extendedL2) type = hasOffset ? 'zero-alloc' : 'zero-plain';
    else if (!hasOffset) type = img.dataFile && (hi & 0x8000_0000) !== 0 ? 'normal' : 'unallocated';
    else type = 'normal';

    if (!compressed && ((hi & 0x3f00_0000) !== 0 || (lo & 0x1fe) !== 0)) {
      img.log(`ERROR found l2 entry with reserved bits set: ${hexDigits64(hi, lo)}`);
      res.corruptions++;
    }

    switch (type) {
      case 'compressed': {
        const offMaskHi = 2 ** hiShift - 1;
        if ((hi & 0x8000_0000) !== 0) {
          img.log(
            `ERROR: coffset=0x${hexDigits64(hi & offMaskHi, lo)}: copied flag must never be set for compressed clusters`,
          );
          hi = (hi & 0x7fff_ffff) >>> 0;
          res.corruptions++;
        }
        if (img.dataFile) {
          img.log(`ERROR compressed cluster ${i} with data file, entry=0x${hexDigits64(hi, lo)}`);
          res.corruptions++;
          break;
        }
        if (bmZero !== 0 || bmAlloc !== 0) {
          img.log(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hexDigits64(hi, lo)}`);
          res.corruptions++;
          break;
        }
        const cHi = hi & offMaskHi;
        const coffset = u64(cHi, lo);
        const sectors = (Math.floor(hi / 2 ** hiShift) & csizeMask) + 1;
        const csize = sectors * 512 - (lo & 511);
        incRefcounts(p, coffset, csize, coffset > Number.MAX_SAFE_INTEGER ? hexDigits64(cHi, lo) : undefined);
        if (flags & CHECK_FRAG_INFO) {
          res.allocatedClusters++;
          res.compressedClusters++;
          res.fragmentedClusters++;
        }
        break;
      }
      case 'zero-alloc':
      case 'normal': {
        const offset = u64(offHi, offLo);
        if ((bmZero & bmAlloc) !== 0) {
          res.corruptions++;
          img.log(`ERROR offset=${hexDigits(offset)}: Allocated cluster has corrupted subcluster allocation bitmap`);
        }
        if (offset % cs !== 0) {
          res.corruptions++;
          const containsData = img.extendedL2 ? bmAlloc !== 0 : (lo & 1) === 0;
          if (!containsData) {
            img.log(
              `${fix & FIX_ERRORS ? 'Repairing' : 'ERROR'} offset=${hexDigits(offset)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`,
            );
            if (fix & FIX_ERRORS) {
              const r = await fixL2EntryByZero(p, l2Offset, table, i, active);
              if (r.overlap) throw new CheckAbort('EIO');
              if (r.ok) continue;
            }
          } else {
            img.log(`ERROR offset=${hexDigits(offset)}: Data cluster is not properly aligned; L2 entry corrupted.`);
          }
        }
        if (flags & CHECK_FRAG_INFO) {
          res.allocatedClusters++;
          if (nextContiguous && offset !== nextContiguous) res.fragmentedClusters++;
          nextContiguous = offset + cs;
        }
        if (!img.dataFile) incRefcounts(p, offset, cs);
        break;
      }
      case 'zero-plain':
        break;
      case 'unallocated':
        if (bmAlloc !== 0) {
          res.corruptions++;
          img.log('ERROR: Unallocated cluster has non-zero subcluster allocation map');
        }
        break;
    }
  }
}

/** check_refcounts_l1: counts the L1 table, its L2 tables and everything they reference. */
export async function checkRefcountsL1(
  p: RefcountPass,
  l1Offset: number,
  l1Size: number,
  flags: number,
  fix: number,
  active: boolean,
  l1OffsetHex?: string,
): Promise<void> {
  const { img, res } = p;
  if (!l1Size) return;
  incRefcounts(p, l1Offset, l1Size * 8, l1OffsetHex);
  let l1: Uint8Array;
  try {
    l1 = await readAt(img.file, l1Offset, l1Size * 8);
  } catch {
    img.log('ERROR: I/O error in check_refcounts_l1');
    res.checkErrors++;
    throw new CheckAbort('EIO');
  }
  const v = new DataView(l1.buffer);
  for (let i = 0; i < l1Size; i++) {
    const hi = v.getUint32(i * 8);
    const lo = v.getUint32(i * 8 + 4);
    if (hi === 0 && lo === 0) continue;
    if ((hi & 0x7f00_0000) !== 0 || (lo & 0x1ff) !== 0) {
      img.log(`ERROR found L1 entry with reserved bits set: ${hexDigits64(hi, lo)}`);
      res.corruptions++;
    }
    const l2Offset = u64(hi & 0x00ff_ffff, (lo & 0xffff_fe00) >>> 0);
    incRefcounts(p, l2Offset, img.clusterSize);
    if (l2Offset % img.clusterSize !== 0) {
      img.log(`ERROR l2_offset=${hexDigits(l2Offset)}: Table is not cluster aligned; L1 entry corrupted`);
      res.corruptions++;
    }
    await checkRefcountsL2(p, l2Offset, flags, fix, active);
  }
}

/** check_refblocks: checks every refcount table entry and counts the refcount blocks. */
async function checkRefblocks(p: RefcountPass, fix: number): Promise<void> {
  const { img, res } = p;
  const cs = img.clusterSize;
  for (let i = 0; i < img.reftableSize; i++) {
    const { offset, hi, lo } = reftableOffsetAt(img, i);
    if (reftableReserved(img, i)) {
      img.log(`ERROR refcount table entry ${i} has reserved bits set`);
      res.corruptions++;
      p.rebuild = true;
      continue;
    }
    if (lo % cs !== 0) {
      img.log(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
      res.corruptions++;
      p.rebuild = true;
      continue;
    }
    const cluster = Math.floor(offset / cs);
    if (cluster >= p.imrt.size) {
      res.corruptions++;
      img.log(`${fix & FIX_ERRORS ? 'Repairing' : 'ERROR'} refcount block ${i} is outside image`);
      if (fix & FIX_ERRORS) {
        let errText: string;
        if (hi >= 0x8000_0000) {
          errText = 'Invalid argument';
        } else if (offset + cs > Number.MAX_SAFE_INTEGER) {
          // beyond any file system's largest file: the truncate fails as qemu's does
          img.log('Could not resize file: File too large', 'report');
          errText = 'File too large';
        } else {
          try {
            await img.file.resize(offset + cs);
            const newClusters = Math.ceil(img.file.size() / cs);
            try {
              p.imrt.resize(Math.max(newClusters, p.imrt.size));
            } catch (err) {
              res.checkErrors++;
              throw err;
            }
            if (cluster >= p.imrt.size) {
              errText = 'Invalid argument';
            } else {
              res.corruptions--;
              res.corruptionsFixed++;
              incRefcounts(p, offset, cs);
              continue;
            }
          } catch (err) {
            if (err instanceof CheckAbort) throw err;
            const errno = (err as { errno?: string }).errno ?? 'EIO';
            img.log(`Could not resize file: ${strerror(errno)}`, 'report');
            errText = strerror(errno);
          }
        }
        p.rebuild = true;
        img.log(`ERROR could not resize image: ${errText}`);
      }
      continue;
    }
    if (offset !== 0) {
      incRefcounts(p, offset, cs);
      const r = p.imrt.get(cluster);
      if (r !== 1) {
        img.log(`ERROR refcount block ${i} refcount=${r}`);
        res.corruptions++;
        p.rebuild = true;
      }
    }
  }
}

/** qcow2_check_bitmaps_refcounts: the bitmap directory, bitmap tables and bitmap data clusters. */
async function checkBitmapsRefcounts(p: RefcountPass): Promise<void> {
  const { img, res } = p;
  const bm = img.bitmaps;
  if (!bm) return;
  incRefcounts(p, bm.dirOffset, bm.dirSize);
  let dir;
  try {
    dir = await loadBitmapDirectory(
      img.file,
      { nbBitmaps: bm.nbBitmaps, bitmapDirectoryOffset: bm.dirOffset, bitmapDirectorySize: bm.dirSize },
      img.clusterSize,
      img.virtualSize,
    );
  } catch {
    res.corruptions++;
    throw new CheckAbort('EINVAL');
  }
  for (const e of dir) {
    incRefcounts(p, e.bitmapTableOffset, e.bitmapTableSize * 8);
    const table = await readAt(img.file, e.bitmapTableOffset, e.bitmapTableSize * 8);
    const v = new DataView(table.buffer);
    for (let i = 0; i < e.bitmapTableSize; i++) {
      const hi = v.getUint32(i * 8);
      const lo = v.getUint32(i * 8 + 4);
      const offHi = hi & 0x00ff_ffff;
      const offLo = (lo & 0xffff_fe00) >>> 0;
      const offset = u64(offHi, offLo);
      // check_table_entry: reserved bits, or an offset that is set together with "all ones", or unaligned
      const invalid =
        (hi & 0xff00_0000) !== 0 || (lo & 0x1fe) !== 0 || (offset !== 0 && ((lo & 1) !== 0 || offset % img.clusterSize !== 0));
      if (invalid) {
        res.corruptions++;
        continue;
      }
      if (offset === 0) continue;
      incRefcounts(p, offset, img.clusterSize);
    }
  }
}

/** calculate_refcounts: builds the IMRT from every piece of metadata and data the image uses. */
export async function calculateRefcounts(p: RefcountPass, fix: number): Promise<void> {
  const { img, res } = p;
  incRefcounts(p, 0, img.clusterSize);
  await checkRefcountsL1(p, img.l1TableOffset, img.l1Size, CHECK_FRAG_INFO, fix, true);
  if (img.dataFile && img.nbSnapshots) {
    img.log(`ERROR ${img.nbSnapshots} snapshots in image with data file`);
    res.corruptions++;
  }
  for (const sn of img.snapshots) {
    // clusters are at most 2 MiB, so the low 32 bits decide the alignment exactly
    if (parseInt(sn.l1TableOffsetHex.slice(-8), 16) % img.clusterSize !== 0) {
      img.log(
        `ERROR snapshot ${sn.id} (${sn.name}) l1_offset=0x${sn.l1TableOffsetHex}: L1 table is not cluster aligned; snapshot table entry corrupted`,
      );
      res.corruptions++;
      continue;
    }
    if (sn.l1Size > 0x400000) {
      img.log(
        `ERROR snapshot ${sn.id} (${sn.name}) l1_size=${hex(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`,
      );
      res.corruptions++;
      continue;
    }
    await checkRefcountsL1(p, sn.l1TableOffset, sn.l1Size, 0, fix, false, sn.l1TableOffsetHex);
  }
  incRefcounts(p, img.snapshotsOffset, img.snapshotsSize);
  incRefcounts(p, img.reftableOffset, img.reftableSize * 8);
  if (img.crypto && img.crypto.length) incRefcounts(p, img.crypto.offset, img.crypto.length);
  await checkBitmapsRefcounts(p);
  await checkRefblocks(p, fix);
}

/** Index of the last non-zero refcount in a block, or -1. */
function lastNonZeroEntry(block: Uint8Array, order: number): number {
  let p = block.length - 1;
  while (p >= 0 && block[p] === 0) p--;
  if (p < 0) return -1;
  const bits = 2 ** order;
  const lastEntry = Math.floor((p * 8 + 7) / bits);
  for (let i = lastEntry; i >= Math.floor((p * 8) / bits); i--) if (getRefcount(block, i, order) !== 0) return i;
  return Math.floor((p * 8) / bits);
}

/**
 * compare_refcounts: compares the IMRT with the on-disk refcounts, fixing what `fix` allows.
 * Returns the highest cluster in use on either side.
 */
export async function compareRefcounts(p: RefcountPass, fix: number): Promise<number> {
  const { img, res, imrt } = p;
  const perBlock = 2 ** img.refcountBlockBits;
  const order = img.refcountOrder;
  let highest = 0;
  const freed: number[] = [];
  for (let base = 0; base < imrt.size; base += perBlock) {
    const lookup = await lookupRefblock(img, base / perBlock);
    const end = Math.min(imrt.size, base + perBlock);
    if (lookup.kind === 'error') {
      for (let i = base; i < end; i++) {
        img.log(`Can't get refcount for cluster ${i}: Input/output error`);
        res.checkErrors++;
      }
      continue;
    }
    const block = lookup.kind === 'block' ? lookup.block : undefined;
    // Fast paths (IMRT slices and refcount blocks share one layout): a range neither side
    // uses, or a refcount block equal to the IMRT's slice, has nothing to report.
    const bi = base / perBlock;
    const slice = imrt.buf.subarray(bi * img.clusterSize, (bi + 1) * img.clusterSize);
    if (!block && isZero(slice)) continue;
    if (block && bytesEqual(block, slice)) {
      const last = lastNonZeroEntry(slice, order);
      if (last >= 0) highest = base + last;
      continue;
    }
    for (let i = base; i < end; i++) {
      const r1 = block ? readRefcount(block, i - base, order) : 0;
      const r2 = imrt.get(i);
      if (r1 > 0 || r2 > 0) highest = i;
      if (r1 === r2) continue;
      let fixKind: 'leaks' | 'corruptions' | undefined;
      if (r1 === 0) p.rebuild = true;
      else if (r1 > r2 && fix & FIX_LEAKS) fixKind = 'leaks';
      else if (r1 < r2 && fix & FIX_ERRORS) fixKind = 'corruptions';
      const r1Text = block ? refcountText(block, i - base, order) : '0';
      img.log(`${fixKind ? 'Repairing' : r1 < r2 ? 'ERROR' : 'Leaked'} cluster ${i} refcount=${r1Text} reference=${r2}`);
      if (fixKind && block && lookup.kind === 'block') {
        // update_refcount by the difference: the block exists (r1 > 0); r2 never exceeds refcount_max.
        setCachedRefcount(img, lookup.offset, block, i - base, r2);
        if (r2 === 0) freed.push(i);
        if (fixKind === 'leaks') res.leaksFixed++;
        else res.corruptionsFixed++;
        continue;
      }
      if (r1 < r2) res.corruptions++;
      else res.leaks++;
    }
  }
  if (fix) {
    await flushRefblocks(img);
    // qemu discards clusters whose refcount drops to 0 (QCOW2_DISCARD_ALWAYS): they read as zeroes.
    for (const c of freed) await img.file.discard(c * img.clusterSize, img.clusterSize).catch(() => undefined);
  }
  return highest;
}
