/**
 * Copy-on-write planning for allocating writes: which bytes around a write must be copied from
 * the current guest view into a newly allocated (or partially allocated) cluster, following
 * qemu's calculate_l2_meta, including the subcluster rules of extended L2 entries.
 */
import { FormatError } from '@tsimg/raw';
import { decodeL2Entry, subclusterKind, type L2Entry, type SubclusterKind } from '../format/l2-entry.js';
import type { Geometry } from './mapping.js';

/**
 * One contiguous allocation (qemu's QCowL2Meta): `nbClusters` clusters mapped from guest
 * `guestStart` (cluster-aligned) to host `hostStart`. Offsets of the COW regions are relative
 * to `guestStart`; the guest data itself lies between `cowStartTo` and `cowEndFrom`.
 */
export interface L2Meta {
  guestStart: number;
  hostStart: number;
  nbClusters: number;
  cowStartFrom: number;
  cowStartTo: number;
  cowEndFrom: number;
  cowEndTo: number;
  /** The clusters were already ours (in-place write): do not free the old entries. */
  keepOld: boolean;
  /**
   * A preallocation, not a write (qemu's QCowL2Meta.prealloc): linking leaves the subcluster
   * bitmaps of extended L2 entries as they were, so the new clusters read as before.
   */
  prealloc?: boolean;
}

/** Subcluster kind as qemu distinguishes it for COW: *_alloc when a host cluster is attached. */
type ScType = 'normal' | 'zero-plain' | 'zero-alloc' | 'unalloc-plain' | 'unalloc-alloc' | 'compressed' | 'invalid';

function scType(entry: L2Entry, sc: number): ScType {
  const k: SubclusterKind = subclusterKind(entry, sc);
  const attached =
    entry.kind === 'data' || (entry.kind === 'zero' && entry.hostOffset !== 0) || (entry.kind === 'extended' && entry.hostOffset !== undefined);
  switch (k) {
    case 'data':
      return 'normal';
    case 'zero':
      return attached ? 'zero-alloc' : 'zero-plain';
    case 'unallocated':
      return attached ? 'unalloc-alloc' : 'unalloc-plain';
    default:
      return k;
  }
}

function allocBitmap(entry: L2Entry): number {
  return entry.kind === 'extended' ? entry.alloc >>> 0 : 0;
}

function ctz32(x: number): number {
  if (x === 0) return 32;
  return 31 - Math.clz32(x & -x);
}

/**
 * qemu's calculate_l2_meta: the COW regions for writing `bytes` at guest `guestOffset` into
 * host clusters starting at `hostStart`, given the L2 table `view` with the first cluster at
 * `l2Index`. Returns undefined when no COW and no L2 update is needed (an in-place write over
 * fully allocated subclusters).
 */
export function calculateL2Meta(
  geo: Geometry,
  view: DataView,
  l2Index: number,
  hostStart: number,
  guestOffset: number,
  bytes: number,
  keepOld: boolean,
): L2Meta | undefined {
  const cs = geo.clusterSize;
  const scs = geo.subclusterSize;
  const cowStartTo = guestOffset % cs;
  const cowEndFrom = cowStartTo + bytes;
  const nbClusters = Math.ceil(cowEndFrom / cs);
  let skipCow = keepOld;
  const entryAt = (i: number): L2Entry => decodeL2Entry(view, (l2Index + i) * geo.entrySize, geo);
  for (let i = 0; i < nbClusters; i++) {
    const entry = entryAt(i);
    let type: ScType;
    if (skipCow) {
      const from = Math.max(cowStartTo, i * cs) - i * cs;
      const to = Math.min(cowEndFrom, (i + 1) * cs) - i * cs;
      const firstSc = Math.floor(from / scs);
      const lastSc = Math.floor((to - 1) / scs);
      type = scType(entry, firstSc);
      let cnt = 1;
      while (firstSc + cnt < geo.subclusters && scType(entry, firstSc + cnt) === type) cnt++;
      if (type !== 'normal' || firstSc + cnt <= lastSc) skipCow = false;
    } else {
      type = scType(entry, 0);
    }
    if (type === 'invalid') throw new FormatError('Invalid cluster entry found', { errno: 'EIO' });
  }
  if (skipCow) return undefined;

  const first = entryAt(0);
  let sc = Math.floor(cowStartTo / scs);
  let type = scType(first, sc);
  let cowStartFrom: number;
  if (!keepOld) {
    switch (type) {
      case 'compressed':
        cowStartFrom = 0;
        break;
      case 'normal':
      case 'zero-alloc':
      case 'unalloc-alloc':
        cowStartFrom = geo.extendedL2 ? Math.min(sc, ctz32(allocBitmap(first))) * scs : 0;
        break;
      default:
        cowStartFrom = sc * scs;
    }
  } else {
    cowStartFrom = type === 'normal' ? cowStartTo : sc * scs;
  }

  const lastEntry = entryAt(nbClusters - 1);
  const lastOffsetInCluster = (cowEndFrom - 1) % cs;
  sc = Math.floor(lastOffsetInCluster / scs);
  type = scType(lastEntry, sc);
  let cowEndTo: number;
  if (!keepOld) {
    switch (type) {
      case 'compressed':
        cowEndTo = Math.ceil(cowEndFrom / cs) * cs;
        break;
      case 'normal':
      case 'zero-alloc':
      case 'unalloc-alloc':
        cowEndTo = Math.ceil(cowEndFrom / cs) * cs;
        if (geo.extendedL2) {
          const clz = Math.clz32(allocBitmap(lastEntry));
          cowEndTo -= Math.min(geo.subclusters - sc - 1, clz) * scs;
        }
        break;
      default:
        cowEndTo = Math.ceil(cowEndFrom / scs) * scs;
    }
  } else {
    cowEndTo = type === 'normal' ? cowEndFrom : Math.ceil(cowEndFrom / scs) * scs;
  }
  return {
    guestStart: guestOffset - cowStartTo,
    hostStart,
    nbClusters,
    cowStartFrom,
    cowStartTo,
    cowEndFrom,
    cowEndTo,
    keepOld,
  };
}

/**
 * The new subcluster bitmap of cluster `i` of a meta (qcow2_alloc_cluster_link_l2): subclusters
 * covered by what was written (COW regions included) become allocated and non-zero; the others
 * keep their old state.
 */
export function linkedBitmap(
  geo: Geometry,
  meta: L2Meta,
  i: number,
  old: { alloc: number; zero: number },
): { alloc: number; zero: number } {
  const cs = geo.clusterSize;
  const from = Math.max(meta.cowStartFrom, i * cs) - i * cs;
  const to = Math.min(meta.cowEndTo, (i + 1) * cs) - i * cs;
  const firstSc = Math.floor(from / geo.subclusterSize);
  const lastSc = Math.floor((to - 1) / geo.subclusterSize);
  const range = lastSc - firstSc + 1 >= 32 ? 0xffff_ffff : ((2 ** (lastSc - firstSc + 1) - 1) * 2 ** firstSc) >>> 0;
  return { alloc: (old.alloc | range) >>> 0, zero: (old.zero & ~range) >>> 0 };
}
