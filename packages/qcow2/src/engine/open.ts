/**
 * Opening a qcow2 image for the engine: from qcow2_do_open's checks (open-checks.ts) to the
 * engine state — the active (or a snapshot's) L1 table, the metadata caches, the allocator and
 * what the overlap check protects — repairing a dirty image opened read/write first.
 */
import { loadHeldBitmaps } from './held-bitmaps.js';
import { FormatError, UsageError, type BlockDevice } from '@tsimg/raw';
import { Allocator } from './allocator.js';
import { TableCache, type CacheHooks } from './cache.js';
import { repairDirty, type CheckLog } from '../check/check.js';
import { findExtension, type HeaderInfo } from '../format/header.js';
import { decodeL1Entry } from '../format/l2-entry.js';
import { MetadataClusters, OL_ACTIVE_L2, OL_REFCOUNT_BLOCK } from '../format/overlap.js';
import { decodeReftableEntry, REFTABLE_ENTRY_SIZE } from '../format/refcount.js';
import { snapshotTableSize, type Qcow2Snapshot } from '../format/snapshot.js';
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  AUTOCLEAR_KNOWN,
  COMPAT_LAZY_REFCOUNTS,
  COMPRESSION_ZSTD,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  QCOW_MAX_L1_SIZE,
} from '../format/types.js';
import { signalCorruption, storeMetadata } from './corruption.js';
import { writeFeatureFields, writeReftableHeader } from './header-write.js';
import { geometry } from './mapping.js';
import { openQcow2Metadata, validateTable, type Qcow2OpenState } from './open-checks.js';
import { Gate, loadTable, type BackingDevice, type EngineState } from './state.js';

/** What Qcow2Image.open needs besides the file. */
export interface Qcow2OpenOptions<B extends BackingDevice = BackingDevice> {
  filename: string;
  readOnly: boolean;
  /** The external data file, when the header names one (opened by the caller). */
  dataFile?: BlockDevice;
  /** The backing image, when opened. */
  backing?: B;
  /**
   * The open checks' result when the caller ran them already (openQcow2Metadata with
   * `readTables`, e.g. to find the data file and the backing file first); run on `file` otherwise.
   */
  opened?: Qcow2OpenState;
  /**
   * Read a snapshot instead of the active layer: its L1 table replaces the active one, the
   * virtual size stays the image's (qemu's qcow2_snapshot_load_tmp). Read-only opens only.
   */
  l1Table?: { offset: number; size: number };
  /** Receives the lines qemu prints while repairing a dirty image opened read/write. */
  log?: CheckLog;
  /**
   * qemu's `discard=unmap` (BDRV_O_UNMAP, e.g. qemu-img convert's target unless -S 0): the
   * image's pass-discard-request then defaults to on, so host clusters freed by guest requests
   * (zero writes that may unmap, discards) are also discarded in the image file (punched).
   * Unlike qemu without unmap, {@link Qcow2Image.discard} is never ignored: callers only make
   * that request when they mean it.
   */
  /**
   * Load the persistent bitmaps of a read/write open, mark them in use and store them at the
   * close (default true, as qemu). false: an open that only looks and writes nothing (qemu-img
   * commit's first open, which qemu does not make) leaves them as they are.
   */
  holdBitmaps?: boolean;
  unmap?: boolean;
  /** The passphrase of an encrypted image (see Qcow2OpenFlags.password). */
  password?: () => Uint8Array;
}

/** L2 cache budget (qemu: 32 MiB max) and refcount cache budget, in bytes. */
const L2_CACHE_BYTES = 32 * 1024 * 1024;
const REFCOUNT_CACHE_BYTES = 4 * 1024 * 1024;
const MIN_CACHE_TABLES = 16;

/**
 * Opens a qcow2 image on `file` with qcow2_do_open's checks (shared with info and check),
 * loading the active L1 table and, when writable, the refcount table. A dirty image opened
 * read/write is repaired first, as qemu does at the end of its open.
 */
export async function openEngineState(file: BlockDevice, opts: Qcow2OpenOptions): Promise<EngineState> {
  if (opts.l1Table !== undefined && !opts.readOnly) throw new UsageError('Failed to load snapshot: Device is not readonly', { errno: 'EINVAL' });
  const flags = { readWrite: !opts.readOnly, readTables: true, password: opts.password };
  let opened = opts.opened?.l1Table && opts.opened.reftable ? opts.opened : await openQcow2Metadata(file, flags);
  if ((opened.hdr.header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n && !opts.readOnly) {
    // qemu repairs a dirty (lazy refcounts) image when it is opened for writing: the
    // refcounts are rebuilt from the L1/L2 tables and the dirty bit is cleared.
    await repairDirty(file, opts.log);
    opened = await openQcow2Metadata(file, flags);
  }
  const info = opened.hdr;
  const h = info.header;
  // The engine reads guest data from the data file, so it must have been opened.
  if ((h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n && opts.dataFile === undefined) {
    throw new FormatError("'data-file' is required for this image", { errno: 'EINVAL' });
  }
  const l1 = opts.l1Table !== undefined ? await loadSnapshotL1(file, opts.l1Table, opened.clusterSize) : opened.l1Table!;
  let reftable = new Float64Array(0);
  if (!opts.readOnly) {
    const bytes = opened.reftable!;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    reftable = new Float64Array(bytes.length / REFTABLE_ENTRY_SIZE);
    for (let i = 0; i < reftable.length; i++) reftable[i] = decodeReftableEntry(view, i).offset;
  }
  const s = newEngineState(file, info, opts, l1, reftable, opened.snapshots);
  s.crypto = opened.crypto;
  if (!opts.readOnly && (h.autoclearFeatures & ~AUTOCLEAR_KNOWN) !== 0n) {
    // qemu clears autoclear bits it does not know on a read/write open.
    s.header.autoclearFeatures &= AUTOCLEAR_KNOWN;
    await writeFeatureFields(s);
  }
  // The open's only warnings are about a stale bitmaps extension (qcow2_read_extensions).
  if (!opts.readOnly && s.version >= 3 && opts.holdBitmaps !== false) await loadHeldBitmaps(s, opened.warnings.length > 0);
  return s;
}

/** qcow2_snapshot_load_tmp: the snapshot's L1 table, to replace the active one. */
async function loadSnapshotL1(file: BlockDevice, table: { offset: number; size: number }, clusterSize: number): Promise<Uint8Array> {
  try {
    validateTable(BigInt(table.offset), table.size, 8, QCOW_MAX_L1_SIZE, clusterSize, 'Snapshot L1 table');
  } catch (err) {
    throw new FormatError(`Failed to load snapshot: ${(err as Error).message}`, { errno: (err as FormatError).errno, cause: err });
  }
  const l1 = new Uint8Array(table.size * 8);
  const inFile = Math.max(0, Math.min(l1.length, file.size() - table.offset));
  if (inFile > 0) await file.read(table.offset, l1.subarray(0, inFile));
  return l1;
}

/** The engine state of a freshly opened image (no I/O). */
function newEngineState(
  file: BlockDevice,
  info: HeaderInfo,
  opts: Qcow2OpenOptions,
  l1: Uint8Array,
  reftable: Float64Array,
  snapshots: readonly Qcow2Snapshot[],
): EngineState {
  const h = info.header;
  const geo = geometry(h.clusterBits, (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n, opts.dataFile !== undefined);
  const cs = geo.clusterSize;
  const hooks = (ign: number): CacheHooks => ({
    load: (offset, into) => loadTable(file, offset, into),
    // As qcow2_cache_entry_flush: a cached table may be written over itself.
    store: (offset, data) => storeMetadata(s, offset, data, ign),
    sync: () => file.flush(),
  });
  const s: EngineState = {
    file,
    readOnly: opts.readOnly,
    backing: opts.backing,
    dataFile: opts.dataFile,
    header: { ...h },
    extensions: info.extensions,
    backingFile: info.backingFile,
    geo,
    clusterSize: cs,
    version: h.version,
    l1Size: l1.length / 8,
    l1Offset: opts.l1Table?.offset ?? h.l1TableOffset,
    l1Bytes: l1,
    l1: new DataView(l1.buffer, l1.byteOffset, l1.byteLength),
    snapshots: [...snapshots],
    snapshotsSize: snapshotTableSize(snapshots),
    l2Cache: new TableCache(cs, Math.max(MIN_CACHE_TABLES, Math.floor(L2_CACHE_BYTES / cs)), hooks(OL_ACTIVE_L2)),
    refcountCache: new TableCache(cs, Math.max(MIN_CACHE_TABLES, Math.floor(REFCOUNT_CACHE_BYTES / cs)), hooks(OL_REFCOUNT_BLOCK)),
    allocator: undefined,
    gate: new Gate(),
    protectedMetadata: {
      activeL2: new MetadataClusters(cs),
      refblocks: new MetadataClusters(cs),
      snapshotTable: undefined,
      inactiveL1: [],
      bitmapDirectory: undefined,
    },
    compression: h.compressionType === COMPRESSION_ZSTD ? 'zstd' : 'zlib',
    lazy: (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n,
    dataRaw: (h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n,
    passDiscardRequest: opts.unmap === true,
    closed: false,
    broken: false,
    signaledCorruption: false,
    frozen: false,
    markedDirty: false,
    cleanedAutoclear: false,
    heldBitmaps: undefined,
    crypto: undefined,
    decompressed: undefined,
    readAheadSpare: [],
    l2Table: (offset) => s.l2Cache.get(offset),
    corrupt: (message) => signalCorruption(s, message),
  };
  if (!opts.readOnly) {
    protectMetadata(s, info, reftable, snapshots);
    s.allocator = newAllocator(s, reftable);
  }
  return s;
}

/** Fills what the overlap check protects of a writable image from what open read. */
function protectMetadata(s: EngineState, info: HeaderInfo, reftable: Float64Array, snapshots: readonly Qcow2Snapshot[]): void {
  const h = info.header;
  const meta = s.protectedMetadata;
  for (let i = 0; i < s.l1Size; i++) meta.activeL2.add(decodeL1Entry(s.l1, i * 8).l2Offset);
  meta.refblocks.reset(reftable);
  const tableEnd = snapshotTableSize(snapshots);
  if (tableEnd > 0) meta.snapshotTable = { offset: h.snapshotsOffset, length: tableEnd };
  meta.inactiveL1 = snapshots.filter((sn) => sn.l1Size > 0).map((sn) => ({ offset: sn.l1TableOffset, length: sn.l1Size * 8 }));
  const bitmaps = findExtension(info.extensions, 'bitmaps');
  // As qemu: the extension counts only while the autoclear bit says it is valid.
  if (bitmaps !== undefined && (h.autoclearFeatures & AUTOCLEAR_BITMAPS) !== 0n) {
    meta.bitmapDirectory = { offset: bitmaps.bitmapDirectoryOffset, length: bitmaps.bitmapDirectorySize };
  }
}

/** The allocator of a writable image, hooked to the header and the overlap map. */
export function newAllocator(s: EngineState, reftable: Float64Array): Allocator {
  const h = s.header;
  return new Allocator(
    {
      file: s.file,
      clusterBits: h.clusterBits,
      refcountOrder: h.refcountOrder,
      refcountCache: s.refcountCache,
      l2Cache: s.l2Cache,
      writeReftableHeader: (offset, clusters) => writeReftableHeader(s, offset, clusters),
      corrupt: (m) => s.corrupt(m),
      refblockMoved: (from, to) => {
        s.protectedMetadata.refblocks.delete(from);
        s.protectedMetadata.refblocks.add(to);
      },
    },
    reftable,
    h.refcountTableOffset,
  );
}
