/**
 * What an NBD server serves: an export (a name, an open image and how it may be used) and the
 * metadata contexts it offers (base:allocation, qemu:allocation-depth, qemu:dirty-bitmap:NAME),
 * matched against a client's queries the way qemu's nbd/server.c matches them.
 */
import type { ChainImage } from '../block-status.js';
import {
  NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_HAS_FLAGS, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_CACHE, NBD_FLAG_SEND_DF, NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES,
} from './protocol.js';

/** A dirty bitmap an export offers as `qemu:dirty-bitmap:NAME`. */
export interface NbdBitmap {
  readonly name: string;
  /** The run at `offset` (at most `length`, ≥ 1): dirty or clean. */
  status(offset: number, length: number): Promise<{ length: number; dirty: boolean }>;
  /** Told after the export wrote: the image may have marked bits since they were read. */
  dirtied?(): void;
}

/** One export of an NBD server. */
export interface NbdExport {
  /** The name clients ask for ('' is qemu-nbd's default). */
  readonly name: string;
  /** qemu-nbd's `-D`: sent as NBD_INFO_DESCRIPTION and in NBD_OPT_LIST. */
  readonly description?: string;
  /** The image (with its backing chain) whose guest bytes are served. */
  readonly image: ChainImage;
  readonly readOnly: boolean;
  /** NBD_FLAG_CAN_MULTI_CONN: qemu sets it when more than one client may connect. */
  readonly multiConn: boolean;
  /** Offer qemu:allocation-depth (qemu-nbd's -A). */
  readonly allocationDepth?: boolean;
  /** Bitmaps offered as qemu:dirty-bitmap:NAME (qemu-nbd's -B). */
  readonly bitmaps?: readonly NbdBitmap[];
  /** FAST_ZERO requests succeed only when the image can zero without writing zeroes. */
  readonly fastZero?: boolean;
  /**
   * qemu's discard=unmap (BDRV_O_UNMAP): TRIM drops data and WRITE_ZEROES may deallocate.
   * Without it (qemu-nbd's default, discard=ignore) TRIM succeeds doing nothing.
   */
  readonly unmap?: boolean;
  /** qemu's detect-zeroes: writes of zeroes become zero writes (unmapping with 'unmap'). */
  readonly detectZeroes?: 'off' | 'on' | 'unmap';
  /** qemu's cache.writeback=off: every write is flushed before it is acknowledged. */
  readonly writethrough?: boolean;
}

/** qemu's NBD_META_ID_* numbering: base:allocation 0, allocation depth 1, bitmaps from 2. */
export const META_ID_BASE_ALLOCATION = 0;
export const META_ID_ALLOCATION_DEPTH = 1;
export const META_ID_DIRTY_BITMAP = 2;

/** The contexts one query selection turned on. */
export interface MetaSelection {
  baseAllocation: boolean;
  allocationDepth: boolean;
  /** Indexes into the export's bitmaps. */
  bitmaps: number[];
}

/** The export's size on the wire: qemu aligns it down to 512 bytes. */
export function exportSize(exp: NbdExport): number {
  return Math.floor(exp.image.size() / 512) * 512;
}

/** The transmission flags qemu's nbd_export_create gives an export (DF with structured replies). */
export function transmissionFlags(exp: NbdExport, structured: boolean): number {
  let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;
  if (exp.multiConn) flags |= NBD_FLAG_CAN_MULTI_CONN;
  flags |= exp.readOnly ? NBD_FLAG_READ_ONLY : NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
  if (structured) flags |= NBD_FLAG_SEND_DF;
  return flags;
}

/**
 * nbd_negotiate_meta_queries' matching: `list` is NBD_OPT_LIST_META_CONTEXT (no queries: all;
 * "qemu:" and "qemu:dirty-bitmap:" list every context of theirs), else SET (exact names).
 */
export function selectMetaContexts(exp: NbdExport, queries: readonly string[], list: boolean): MetaSelection {
  const sel: MetaSelection = { baseAllocation: false, allocationDepth: false, bitmaps: [] };
  const bitmaps = exp.bitmaps ?? [];
  const allBitmaps = (): void => {
    sel.bitmaps = bitmaps.map((_, i) => i);
  };
  if (list && queries.length === 0) {
    sel.baseAllocation = true;
    sel.allocationDepth = exp.allocationDepth === true;
    allBitmaps();
    return sel;
  }
  for (const q of queries) {
    if (q.startsWith('base:')) {
      const rest = q.slice(5);
      if (rest === 'allocation' || (list && rest === '')) sel.baseAllocation = true;
    } else if (q.startsWith('qemu:')) {
      const rest = q.slice(5);
      if (rest === '') {
        if (list) {
          sel.allocationDepth = exp.allocationDepth === true;
          allBitmaps();
        }
      } else if (rest === 'allocation-depth') {
        sel.allocationDepth = exp.allocationDepth === true;
      } else if (rest.startsWith('dirty-bitmap:')) {
        const name = rest.slice('dirty-bitmap:'.length);
        if (name === '') {
          if (list) allBitmaps();
        } else {
          const i = bitmaps.findIndex((b) => b.name === name);
          if (i >= 0 && !sel.bitmaps.includes(i)) sel.bitmaps.push(i);
        }
      }
    }
  }
  sel.bitmaps.sort((a, b) => a - b);
  return sel;
}

/** The (id, name) pairs a selection announces, in qemu's order. */
export function metaContextNames(exp: NbdExport, sel: MetaSelection): { id: number; name: string }[] {
  const out: { id: number; name: string }[] = [];
  if (sel.baseAllocation) out.push({ id: META_ID_BASE_ALLOCATION, name: 'base:allocation' });
  if (sel.allocationDepth) out.push({ id: META_ID_ALLOCATION_DEPTH, name: 'qemu:allocation-depth' });
  for (const i of sel.bitmaps) out.push({ id: META_ID_DIRTY_BITMAP + i, name: `qemu:dirty-bitmap:${exp.bitmaps![i]!.name}` });
  return out;
}
