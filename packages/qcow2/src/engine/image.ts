/**
 * Qcow2Image: an open qcow2 image as a BlockDevice — reads through the L1/L2 mapping (falling
 * through to the backing image), and writes that allocate clusters, copy on write and update
 * the metadata in qemu's order (data → refcount blocks → L2 tables → L1 table → header).
 *
 * Concurrency: reads share the image, every change runs alone (a read/write gate), so metadata
 * is never seen half-updated. Caches evict only between operations.
 */
import {
  FormatError,
  IoError,
  ReadOnlyError,
  TsimgError,
  UnsupportedError,
  UsageError,
  type BlockDevice,
  type BlockStatus,
  type WriteZeroesOptions,
} from '@tsimg/raw';
import { Allocator } from './allocator.js';
import { detectMetadataPreallocation } from './preallocation.js';
import { TableCache } from './cache.js';
import { compressCluster, decompressCluster, type CompressionType } from '../compress/compress.js';
import { calculateL2Meta, linkedBitmap, type L2Meta } from './cow.js';
import { repairDirty, type CheckLog } from '../check/check.js';
import {
  encodeExtensions,
  encodeHeader,
  findExtension,
  QEMU_FEATURE_NAMES,
  V3_HEADER_LENGTH,
  type HeaderExtension,
  type HeaderInfo,
  type Qcow2Header,
} from '../format/header.js';
import {
  compressedEntry,
  compressedRange,
  decodeL1Entry,
  decodeL2Entry,
  encodeL1Entry,
  encodeL2Entry,
  entryHostCluster,
  entryWritableInPlace,
  type L2Entry,
} from '../format/l2-entry.js';
import { openQcow2Metadata, validateTable, type Qcow2OpenState } from './open-checks.js';
import { geometry, lookupRun, type Geometry, type MappedRun, type MappingSource } from './mapping.js';
import { decodeReftableEntry, REFTABLE_ENTRY_SIZE } from '../format/refcount.js';
import {
  MetadataClusters,
  OL_ACTIVE_L1,
  OL_ACTIVE_L2,
  OL_BITMAP_DIRECTORY,
  OL_INACTIVE_L1,
  OL_MAIN_HEADER,
  OL_REFCOUNT_BLOCK,
  OL_REFCOUNT_TABLE,
  OL_SNAPSHOT_TABLE,
  overlapName,
  type ByteRange,
} from '../format/overlap.js';
import { snapshotEntrySize, type Qcow2Snapshot } from '../format/snapshot.js';
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  AUTOCLEAR_KNOWN,
  COMPAT_LAZY_REFCOUNTS,
  COMPRESSION_ZSTD,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  QCOW_MAX_L1_SIZE,
} from '../format/types.js';

/**
 * What a qcow2 image reads through where it is unallocated: its backing image, of any format
 * (the image layer opens it). Only its own chain matters here, for zero detection.
 */
export interface BackingDevice extends BlockDevice {
  readonly backing?: BackingDevice;
}

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
  unmap?: boolean;
}

/** L2 cache budget (qemu: 32 MiB max) and refcount cache budget, in bytes. */
const L2_CACHE_BYTES = 32 * 1024 * 1024;
const REFCOUNT_CACHE_BYTES = 4 * 1024 * 1024;
const MIN_CACHE_TABLES = 16;
/** BDRV_REQUEST_MAX_BYTES: the largest single request qemu's block layer passes down. */
const REQUEST_MAX_BYTES = 2 ** 31 - 512;
const INT_MAX = 2 ** 31 - 1;
/** Zero-filled writes (v2 zeroes, unaligned heads) go out in pieces of this size. */
const ZERO_WRITE_CHUNK = 4 * 1024 * 1024;

/** The largest read-ahead for compressed clusters in one guest read (see #readCompressed). */
const COMPRESSED_READ_AHEAD = 2 * 1024 * 1024;

/** State of one guest read for #readCompressed: the last cluster's range, the window read ahead. */
interface CompressedReadAhead {
  start: number;
  end: number;
  /** Guest bytes the request still needs: the read-ahead never goes further. */
  budget: number;
  window?: { offset: number; data: Uint8Array };
}

/** Shared reads, exclusive changes. */
class Gate {
  #tail: Promise<void> = Promise.resolve();
  readonly #reads = new Set<Promise<unknown>>();

  async shared<T>(fn: () => Promise<T>): Promise<T> {
    await this.#tail;
    const p = fn();
    this.#reads.add(p);
    try {
      return await p;
    } finally {
      this.#reads.delete(p);
    }
  }

  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(async () => {
      await Promise.allSettled([...this.#reads]);
      return fn();
    });
    this.#tail = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }
}

/** qemu's BDRV_MAX_LENGTH (INT64_MAX aligned down to 1 GiB): requests ending past it fail with EIO. */
const BDRV_MAX_LENGTH = 2 ** 63 - 2 ** 30;

/**
 * Loads a metadata table (L2 table, refcount block) as qemu's qcow2_cache_do_get → bdrv_pread:
 * a request ending past BDRV_MAX_LENGTH fails with EIO (bdrv_check_request32); otherwise bytes
 * past the end of the file read as zeroes (file-posix), which also covers offsets a device
 * could not address (beyond 2^53: no file is that large). `into` arrives zero-filled.
 */
async function loadTable(dev: BlockDevice, offset: number, into: Uint8Array): Promise<void> {
  if (offset + into.length > BDRV_MAX_LENGTH) throw new IoError('Input/output error', { errno: 'EIO' });
  if (offset >= dev.size()) {
    into.fill(0);
    return;
  }
  await dev.read(offset, into);
}

/** printf's `%#x`, as qemu's corruption messages format offsets: no `0x` for zero. */
function hex(n: number): string {
  return n === 0 ? '0' : `0x${n.toString(16)}`;
}

/** An open qcow2 image (v2 or v3, any cluster size, refcount width and L2 entry width). */
export class Qcow2Image<B extends BackingDevice = BackingDevice> implements MappingSource {
  readonly format = 'qcow2' as const;
  readonly filename: string;
  readonly file: BlockDevice;
  readonly readOnly: boolean;
  readonly backing?: B;
  /** The external data file, if the image has one. */
  readonly dataFile?: BlockDevice;
  /** The header as it is on disk now (updated by every header write). */
  readonly header: Qcow2Header;
  readonly extensions: HeaderExtension[];
  readonly backingFile?: string;
  readonly backingFormat?: string;
  readonly clusterSize: number;
  readonly geo: Geometry;
  readonly version: number;

  #l1Size: number;
  #l1Offset: number;
  #l1Bytes: Uint8Array;
  #l1View: DataView;
  readonly #l2Cache: TableCache;
  readonly #refcountCache: TableCache;
  #allocator: Allocator | undefined;
  readonly #gate = new Gate();
  readonly #compression: CompressionType;
  readonly #lazy: boolean;
  readonly #dataRaw: boolean;
  /** discard_passthrough[QCOW2_DISCARD_REQUEST]: on when the image was opened with unmap. */
  readonly #passDiscardRequest: boolean;
  #closed = false;
  /** Set once corruption was found: no more writes, no write-back on close. */
  #broken = false;
  /** A non-fatal (read-only) corruption event was reported already: later ones are silent. */
  #signaledCorruption = false;
  /** Set when a table switch in the header failed: no more changes, but write-back on close. */
  #frozen = false;
  #markedDirty = false;
  #cleanedAutoclear = false;
  #decompressed: { key: string; data: Uint8Array } | undefined;
  #preallocated: Promise<boolean> | undefined;

  // What the pre-write overlap check protects besides the header, the active L1 table and the
  // refcount table (#overlapCheck). Filled for writable images only: nothing else writes.
  /** Every L2 table the active L1 table names, kept in step with the L1 table in memory. */
  readonly #activeL2: MetadataClusters;
  /** Every refcount block the refcount table names, kept in step by the allocator's hook. */
  readonly #refblocks: MetadataClusters;
  /**
   * The snapshot table and the snapshots' L1 tables as read on open (tsimg changes snapshots
   * only through other code paths, never through an open image).
   */
  readonly #snapshotTable: ByteRange | undefined;
  readonly #inactiveL1: readonly ByteRange[];
  /**
   * The bitmap directory: from open (when the autoclear bit made the extension valid) until
   * updateBitmapsExtension replaces it. #beforeChange clearing the bit leaves the directory's
   * clusters in use, and qemu, which keeps the bit while it has the image open, checks it.
   */
  #bitmapDirectory: ByteRange | undefined;

  private constructor(
    file: BlockDevice,
    info: HeaderInfo,
    opts: Qcow2OpenOptions<B>,
    l1: Uint8Array,
    reftable: Float64Array,
    snapshots: readonly Qcow2Snapshot[],
  ) {
    const h = info.header;
    this.filename = opts.filename;
    this.file = file;
    this.readOnly = opts.readOnly;
    this.backing = opts.backing;
    this.dataFile = opts.dataFile;
    this.header = { ...h };
    this.extensions = info.extensions;
    this.backingFile = info.backingFile;
    this.backingFormat = findExtension(info.extensions, 'backing-format')?.name;
    this.version = h.version;
    this.geo = geometry(h.clusterBits, (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n, opts.dataFile !== undefined);
    this.clusterSize = this.geo.clusterSize;
    this.#compression = h.compressionType === COMPRESSION_ZSTD ? 'zstd' : 'zlib';
    this.#lazy = (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
    this.#dataRaw = (h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n;
    this.#passDiscardRequest = opts.unmap === true;
    this.#l1Size = l1.length / 8;
    this.#l1Offset = opts.l1Table?.offset ?? h.l1TableOffset;
    this.#l1Bytes = l1;
    this.#l1View = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    const cs = this.clusterSize;
    const fileDev = file;
    this.#l2Cache = new TableCache(cs, Math.max(MIN_CACHE_TABLES, Math.floor(L2_CACHE_BYTES / cs)), {
      load: (offset, into) => loadTable(fileDev, offset, into),
      // As qcow2_cache_entry_flush: a cached table may be written over itself.
      store: (offset, data) => this.#storeMetadata(offset, data, OL_ACTIVE_L2),
      sync: () => fileDev.flush(),
    });
    this.#refcountCache = new TableCache(cs, Math.max(MIN_CACHE_TABLES, Math.floor(REFCOUNT_CACHE_BYTES / cs)), {
      load: (offset, into) => loadTable(fileDev, offset, into),
      store: (offset, data) => this.#storeMetadata(offset, data, OL_REFCOUNT_BLOCK),
      sync: () => fileDev.flush(),
    });
    this.#activeL2 = new MetadataClusters(cs);
    this.#refblocks = new MetadataClusters(cs);
    this.#inactiveL1 = [];
    if (!opts.readOnly) {
      for (let i = 0; i < this.#l1Size; i++) this.#activeL2.add(decodeL1Entry(this.#l1View, i * 8).l2Offset);
      this.#refblocks.reset(reftable);
      // qemu's snapshots_size: the entries one after another, each 8-byte aligned.
      let tableEnd = 0;
      for (const sn of snapshots) tableEnd = Math.ceil(tableEnd / 8) * 8 + snapshotEntrySize(sn);
      if (tableEnd > 0) this.#snapshotTable = { offset: h.snapshotsOffset, length: tableEnd };
      this.#inactiveL1 = snapshots.filter((sn) => sn.l1Size > 0).map((sn) => ({ offset: sn.l1TableOffset, length: sn.l1Size * 8 }));
      const bitmaps = findExtension(info.extensions, 'bitmaps');
      // As qemu: the extension counts only while the autoclear bit says it is valid.
      if (bitmaps !== undefined && (h.autoclearFeatures & AUTOCLEAR_BITMAPS) !== 0n) {
        this.#bitmapDirectory = { offset: bitmaps.bitmapDirectoryOffset, length: bitmaps.bitmapDirectorySize };
      }
      this.#allocator = new Allocator(
        {
          file,
          clusterBits: h.clusterBits,
          refcountOrder: h.refcountOrder,
          refcountCache: this.#refcountCache,
          l2Cache: this.#l2Cache,
          writeReftableHeader: (offset, clusters) => this.#writeReftableHeader(offset, clusters),
          corrupt: (m) => this.corrupt(m),
          refblockMoved: (from, to) => {
            this.#refblocks.delete(from);
            this.#refblocks.add(to);
          },
        },
        reftable,
        h.refcountTableOffset,
      );
    }
  }

  /**
   * Opens a qcow2 image on `file` with qcow2_do_open's checks (qcow2-metadata.ts, shared with
   * info and check), loading the active L1 table and, when writable, the refcount table. A
   * dirty image opened read/write is repaired first, as qemu does at the end of its open.
   */
  static async open<B extends BackingDevice = BackingDevice>(file: BlockDevice, opts: Qcow2OpenOptions<B>): Promise<Qcow2Image<B>> {
    if (opts.l1Table !== undefined && !opts.readOnly) throw new UsageError('Failed to load snapshot: Device is not readonly', { errno: 'EINVAL' });
    const flags = { readWrite: !opts.readOnly, readTables: true };
    let opened = opts.opened?.l1Table && opts.opened.reftable ? opts.opened : await openQcow2Metadata(file, flags);
    if ((opened.hdr.header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n && !opts.readOnly) {
      // qemu repairs a dirty (lazy refcounts) image when it is opened for writing: the
      // refcounts are rebuilt from the L1/L2 tables and the dirty bit is cleared.
      await repairDirty(file, opts.log);
      opened = await openQcow2Metadata(file, flags);
    }
    const info = opened.hdr;
    const h = info.header;
    const cs = opened.clusterSize;
    // The engine reads guest data from the data file, so it must have been opened.
    if ((h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n && opts.dataFile === undefined) {
      throw new FormatError("'data-file' is required for this image", { errno: 'EINVAL' });
    }
    let l1 = opened.l1Table!;
    if (opts.l1Table !== undefined) {
      // qcow2_snapshot_load_tmp: the snapshot's L1 table replaces the active one.
      try {
        validateTable(BigInt(opts.l1Table.offset), opts.l1Table.size, 8, QCOW_MAX_L1_SIZE, cs, 'Snapshot L1 table');
      } catch (err) {
        throw new FormatError(`Failed to load snapshot: ${(err as Error).message}`, { errno: (err as FormatError).errno, cause: err });
      }
      l1 = new Uint8Array(opts.l1Table.size * 8);
      const inFile = Math.max(0, Math.min(l1.length, file.size() - opts.l1Table.offset));
      if (inFile > 0) await file.read(opts.l1Table.offset, l1.subarray(0, inFile));
    }
    let reftable = new Float64Array(0);
    if (!opts.readOnly) {
      const bytes = opened.reftable!;
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      reftable = new Float64Array(bytes.length / REFTABLE_ENTRY_SIZE);
      for (let i = 0; i < reftable.length; i++) reftable[i] = decodeReftableEntry(view, i).offset;
    }
    const image = new Qcow2Image(file, info, opts, l1, reftable, opened.snapshots);
    if (!opts.readOnly && (h.autoclearFeatures & ~AUTOCLEAR_KNOWN) !== 0n) {
      // qemu clears autoclear bits it does not know on a read/write open.
      image.header.autoclearFeatures &= AUTOCLEAR_KNOWN;
      await image.#writeFeatureFields();
    }
    return image;
  }

  /**
   * qemu's metadata-preallocation judgement, made once per open image: when true, block status
   * of data runs is to be checked against the host file, whose holes read as zeroes.
   */
  metadataPreallocated(): Promise<boolean> {
    return (this.#preallocated ??= detectMetadataPreallocation(this));
  }

  // ---- MappingSource --------------------------------------------------------------------

  get l1Size(): number {
    return this.#l1Size;
  }

  get l1(): DataView {
    return this.#l1View;
  }

  l2Table(offset: number): Promise<Uint8Array> {
    return this.#l2Cache.get(offset);
  }

  /** This image's mapping for looking ahead: corruption found through it is not signalled. */
  readonly #lookahead: MappingSource = (() => {
    const img = this;
    return {
      get geo() {
        return img.geo;
      },
      get version() {
        return img.version;
      },
      get l1Size() {
        return img.l1Size;
      },
      get l1() {
        return img.l1;
      },
      l2Table: (offset: number) => img.l2Table(offset),
      corrupt: async (message: string): Promise<never> => {
        throw new TsimgError('io', `qcow2: ${message}`, { errno: 'EIO' });
      },
    };
  })();

  /**
   * Reports corruption like qcow2_signal_corruption: a writable image gets the corrupt bit (so
   * nothing writes over metadata again) and the operation fails with EIO. On a read-only image
   * the event is not fatal: the image stays usable, and only the first event carries qemu's
   * line ("Image is corrupt: ...") — later ones fail with a plain EIO, as qemu suppresses them.
   */
  async corrupt(message: string): Promise<never> {
    if (this.readOnly) {
      const first = !this.#signaledCorruption;
      this.#signaledCorruption = true;
      if (!first) throw new TsimgError('io', `qcow2: ${message}`, { errno: 'EIO' });
      throw new TsimgError('corrupt', `qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`, {
        errno: 'EIO',
      });
    }
    // Like qemu making the node unusable: nothing cached is written back any more.
    this.#broken = true;
    this.#l2Cache.clear();
    this.#refcountCache.clear();
    if (!this.readOnly && (this.header.incompatibleFeatures & INCOMPAT_CORRUPT) === 0n && this.version === 3) {
      this.header.incompatibleFeatures |= INCOMPAT_CORRUPT;
      try {
        await this.#writeFeatureFields();
      } catch {
        // the corruption report matters more than the failed mark
      }
    }
    throw new TsimgError('corrupt', `qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed`, {
      errno: 'EIO',
    });
  }

  // ---- BlockDevice: reads -----------------------------------------------------------------

  /** The virtual size in whole sectors, as qemu counts it (total_sectors = size / 512). */
  size(): number {
    return Math.floor(this.header.size / 512) * 512;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.#checkRange(offset, into.length);
    await this.#gate.shared(async () => {
      await this.#readGuest(offset, into);
      await this.#l2Cache.evict();
    });
  }

  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    this.#checkRange(offset, length);
    if (length === 0) throw new UsageError('blockStatus needs a length of at least 1');
    return this.#gate.shared(async () => {
      const toStatus = (r: MappedRun, at: number): BlockStatus => {
        switch (r.kind) {
          case 'data':
            return { kind: 'data', offset: at, length: r.length, hostOffset: r.hostOffset };
          case 'compressed':
            return { kind: 'data', offset: at, length: r.length };
          case 'zero':
            return r.hostOffset !== undefined
              ? { kind: 'zero', offset: at, length: r.length, hostOffset: r.hostOffset }
              : { kind: 'zero', offset: at, length: r.length };
          case 'unallocated': {
            const st: BlockStatus = { kind: 'unallocated', offset: at, length: r.length };
            // An unallocated subcluster of an allocated cluster keeps its host offset (qemu:
            // OFFSET_VALID for UNALLOCATED_ALLOC); map.ts prints it.
            return r.hostOffset !== undefined ? Object.assign(st, { hostOffset: r.hostOffset }) : st;
          }
        }
      };
      const first = toStatus(await lookupRun(this, offset, length), offset);
      // Merge following runs of the same kind (contiguous on the host when there is a host).
      while (first.length < length) {
        const at = offset + first.length;
        // qemu answers one run per call (qcow2_co_block_status) and never looks past it: a
        // failure further on (a corrupt entry) is the next call's, after this run is reported.
        // Nor does a corruption found there count as met: the next call signals it (and on a
        // read-only image, only the first signal prints qemu's line).
        let run: MappedRun;
        try {
          run = await lookupRun(this.#lookahead, at, length - first.length);
        } catch {
          break;
        }
        const next = toStatus(run, at);
        if (next.kind !== first.kind) break;
        const fh = 'hostOffset' in first ? first.hostOffset : undefined;
        const nh = 'hostOffset' in next ? next.hostOffset : undefined;
        if ((fh === undefined) !== (nh === undefined)) break;
        if (fh !== undefined && nh !== fh + first.length) break;
        first.length += next.length;
      }
      await this.#l2Cache.evict();
      return first;
    });
  }

  async allocatedSize(): Promise<number | undefined> {
    const own = await this.file.allocatedSize();
    if (this.dataFile === undefined || own === undefined) return own;
    const data = await this.dataFile.allocatedSize();
    return data === undefined ? undefined : own + data;
  }

  /** The device guest data clusters live on. */
  get #dataDevice(): BlockDevice {
    return this.dataFile ?? this.file;
  }

  #checkRange(offset: number, length: number): void {
    if (this.#closed) throw new UsageError('device is closed');
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new UsageError(`invalid range ${offset}+${length}`);
    }
    if (offset + length > this.size()) {
      throw new UsageError(`range ${offset}+${length} is beyond the end of the image (${this.size()} bytes)`, {
        errno: 'EIO',
      });
    }
  }

  async #readGuest(offset: number, into: Uint8Array): Promise<void> {
    let pos = 0;
    const ahead: CompressedReadAhead = { start: -1, end: -1, budget: 0 };
    // Data runs that continue on the host (across L2 tables) are read with one device call.
    let pending: { pos: number; host: number; length: number } | undefined;
    const readPending = async (): Promise<void> => {
      if (pending === undefined) return;
      const p = pending;
      pending = undefined;
      await this.#dataDevice.read(p.host, into.subarray(p.pos, p.pos + p.length));
    };
    while (pos < into.length) {
      const run = await lookupRun(this, offset + pos, into.length - pos);
      if (run.kind === 'data') {
        if (pending !== undefined && pending.host + pending.length === run.hostOffset) pending.length += run.length;
        else {
          await readPending();
          pending = { pos, host: run.hostOffset, length: run.length };
        }
        pos += run.length;
        continue;
      }
      await readPending();
      const dst = into.subarray(pos, pos + run.length);
      switch (run.kind) {
        case 'zero':
          dst.fill(0);
          break;
        case 'unallocated':
          await this.#readBacking(offset + pos, dst);
          break;
        case 'compressed': {
          ahead.budget = into.length - pos;
          const cluster = await this.#decompress(run.entry, ahead);
          const start = offset + pos - run.clusterOffset;
          dst.set(cluster.subarray(start, start + run.length));
          break;
        }
      }
      pos += run.length;
    }
    await readPending();
  }

  async #readBacking(offset: number, dst: Uint8Array): Promise<void> {
    const b = this.backing;
    if (b === undefined) {
      dst.fill(0);
      return;
    }
    const avail = Math.max(0, Math.min(dst.length, b.size() - offset));
    if (avail > 0) await b.read(offset, dst.subarray(0, avail));
    if (avail < dst.length) dst.subarray(avail).fill(0);
  }

  async #decompress(entry: { hostOffset: number; sectors: number }, ahead?: CompressedReadAhead): Promise<Uint8Array> {
    const key = `${entry.hostOffset}:${entry.sectors}`;
    if (this.#decompressed?.key === key) return this.#decompressed.data;
    const range = compressedRange(entry);
    const raw = await this.#readCompressed(range, ahead);
    const data = await decompressCluster(this.#compression, raw, this.clusterSize);
    this.#decompressed = { key, data };
    return data;
  }

  /**
   * The stored bytes of one compressed cluster. Within one guest read, compressed clusters
   * usually follow one another in the file (convert -c and qemu write them so): once one starts
   * where the previous one ended, the file is read ahead — as far as the guest bytes the request
   * still needs, at most COMPRESSED_READ_AHEAD — and the next clusters come from that buffer.
   * Reading a 256 MiB compressed image, that is one device read per ~30 clusters instead of one
   * each (a thread-pool round trip apiece). Scattered clusters are read one by one, as before.
   */
  async #readCompressed(range: { offset: number; length: number }, ahead?: CompressedReadAhead): Promise<Uint8Array> {
    const win = ahead?.window;
    if (win !== undefined && range.offset >= win.offset && range.offset + range.length <= win.offset + win.data.length) {
      ahead!.start = range.offset;
      ahead!.end = range.offset + range.length;
      return win.data.subarray(range.offset - win.offset, range.offset - win.offset + range.length);
    }
    let length = range.length;
    // The previous range ends at a sector boundary past its last byte: the next cluster starts
    // inside that last sector or right at its end.
    if (ahead !== undefined && range.offset > ahead.start && range.offset <= ahead.end) {
      const avail = this.file.size() - range.offset;
      length = Math.max(length, Math.min(ahead.budget, COMPRESSED_READ_AHEAD, avail));
    }
    const data = new Uint8Array(length);
    await this.file.read(range.offset, data);
    if (ahead !== undefined) {
      ahead.window = length > range.length ? { offset: range.offset, data } : undefined;
      ahead.start = range.offset;
      ahead.end = range.offset + range.length;
    }
    return length > range.length ? data.subarray(0, range.length) : data;
  }

  // ---- BlockDevice: writes ----------------------------------------------------------------

  #checkWritable(): Allocator {
    if (this.#closed) throw new UsageError('device is closed');
    if (this.readOnly || this.#allocator === undefined) throw new ReadOnlyError();
    if ((this.header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n || this.#broken) {
      throw new TsimgError('corrupt', 'Image is corrupt; writes are refused', { errno: 'EIO' });
    }
    if (this.#frozen) {
      throw new IoError('An earlier header update failed; the image takes no more changes until it is reopened', {
        errno: 'EIO',
      });
    }
    return this.#allocator;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#checkRange(offset, data.length);
    this.#checkWritable();
    if (data.length === 0) return;
    await this.#exclusive(() => this.#writeGuest(offset, data));
  }

  async writeZeroes(offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
    this.#checkRange(offset, length);
    this.#checkWritable();
    if (length === 0) return;
    await this.#exclusive(() => this.#writeZeroes(offset, length, options.mayUnmap === true));
  }

  async discard(offset: number, length: number): Promise<void> {
    this.#checkRange(offset, length);
    this.#checkWritable();
    if (length === 0) return;
    await this.#exclusive(() => this.#discard(offset, length));
  }

  async flush(): Promise<void> {
    if (this.#closed) throw new UsageError('device is closed');
    if (this.readOnly) return;
    await this.#exclusive(() => this.#flushAll(false));
  }

  async resize(size: number): Promise<void> {
    if (!Number.isSafeInteger(size) || size < 0) throw new UsageError(`invalid size ${size}`);
    this.#checkWritable();
    await this.#exclusive(() => this.#resize(size));
  }

  /**
   * Writes one cluster compressed at cluster-aligned `offset` (a shorter `cluster` only for the
   * image's last, partial cluster), as qemu-img convert -c does. `compressed` is the
   * precompressed form, `null` when it does not shrink (then it is written normally), or
   * undefined to compress here.
   */
  async writeCompressed(offset: number, cluster: Uint8Array, compressed?: Uint8Array | null): Promise<void> {
    this.#checkRange(offset, cluster.length);
    this.#checkWritable();
    if (this.dataFile !== undefined) {
      throw new UnsupportedError('Compressed writes are not supported with an external data file', { errno: 'ENOTSUP' });
    }
    const cs = this.clusterSize;
    if (offset % cs !== 0 || (cluster.length !== cs && offset + cluster.length !== this.size()) || cluster.length > cs) {
      throw new UsageError('Compressed writes must be whole clusters (or the image tail)', { errno: 'EINVAL' });
    }
    let out = compressed;
    if (out === undefined) {
      let full = cluster;
      if (cluster.length < cs) {
        full = new Uint8Array(cs);
        full.set(cluster);
      }
      out = (await compressCluster(this.#compression, full)) ?? null;
    }
    if (out === null) {
      await this.write(offset, cluster);
      return;
    }
    const payload = out;
    await this.#exclusive(async () => {
      await this.#beforeChange();
      const alloc = this.#allocator!;
      const t = await this.#getClusterTable(offset);
      const view = tableView(t.table);
      const e = decodeL2Entry(view, t.index * this.geo.entrySize, this.geo);
      if (e.kind !== 'unallocated' && !(e.kind === 'extended' && e.hostOffset === undefined) && !(e.kind === 'zero' && e.hostOffset === 0)) {
        throw new IoError("Compression can't overwrite anything", { errno: 'EIO' });
      }
      const host = await alloc.allocBytes(payload.length);
      // As qcow2_alloc_bytes: refcounts first, even with lazy refcounts (and no dirty bit).
      await this.#l2Cache.setDependency(this.#refcountCache);
      await this.#overlapCheck(host, payload.length);
      await this.file.write(host, payload);
      encodeL2Entry(compressedEntry(host, payload.length), view, t.index * this.geo.entrySize, this.geo);
      this.#l2Cache.markDirty(t.l2Offset, t.table);
      this.#l2Cache.setDependsOnFlush();
    });
  }

  /** Ends a run of compressed writes: pads the file to a 512-byte boundary as qemu does. */
  async finishCompressed(): Promise<void> {
    this.#checkWritable();
    await this.#exclusive(async () => {
      const len = this.file.size();
      const padded = Math.ceil(len / 512) * 512;
      if (padded !== len) await this.file.resize(padded);
    });
  }

  // ---- metadata written by other modules (persistent bitmaps) ----------------------------

  /**
   * qcow2_alloc_clusters for metadata a caller lays out itself (bitmap data, tables, the
   * bitmap directory): `size` bytes in whole clusters, first fit, refcount 1. Returns the
   * host offset.
   */
  async allocateClusters(size: number): Promise<number> {
    const alloc = this.#checkWritable();
    return this.#exclusive(() => alloc.allocClusters(size));
  }

  /** qcow2_free_clusters: drops one reference from every cluster of the host byte range. */
  async freeClusters(offset: number, size: number): Promise<void> {
    const alloc = this.#checkWritable();
    await this.#exclusive(() => alloc.freeClusters(offset, size));
  }

  /**
   * Writes metadata bytes at host `offset` of the image file (clusters the caller got from
   * {@link allocateClusters}), after the same overlap check as the engine's own tables.
   */
  async writeMetadata(offset: number, data: Uint8Array): Promise<void> {
    this.#checkWritable();
    await this.#exclusive(() => this.#storeMetadata(offset, data));
  }

  /**
   * update_ext_header_and_dir's header step: writes the caches and syncs (qcow2_flush_caches,
   * so everything the new directory names is on disk first), then rewrites the header cluster
   * as qcow2_update_header does with the bitmaps extension `bitmaps` (none when undefined) and
   * the bitmaps autoclear bit set to match, and syncs again.
   */
  async updateBitmapsExtension(
    bitmaps: { nbBitmaps: number; bitmapDirectorySize: number; bitmapDirectoryOffset: number } | undefined,
  ): Promise<void> {
    this.#checkWritable();
    if (this.version < 3) throw new UnsupportedError('Cannot store dirty bitmaps in qcow2 v2 files', { errno: 'ENOTSUP' });
    await this.#exclusive(async () => {
      await this.#flushAll(false);
      const h = this.header;
      const cs = this.clusterSize;
      const exts = this.extensions;
      // qcow2_update_header's order: backing format, data file, crypto header, feature table
      // (v3, clusters above 4 KiB), bitmaps, then the unknown extensions as they were.
      const next: HeaderExtension[] = [];
      for (const kind of ['backing-format', 'data-file', 'crypto-header'] as const) {
        const e = findExtension(exts, kind);
        if (e) next.push(e);
      }
      if (cs > 4096) next.push({ kind: 'feature-names', features: [...QEMU_FEATURE_NAMES] });
      if (bitmaps) next.push({ kind: 'bitmaps', ...bitmaps });
      next.push(...exts.filter((e) => e.kind === 'unknown'));
      const buf = new Uint8Array(cs);
      // Header fields past the 112 bytes qemu knows are kept (unknown_header_fields).
      const headerLength = Math.max(h.headerLength, V3_HEADER_LENGTH);
      if (h.headerLength > V3_HEADER_LENGTH) await this.file.read(V3_HEADER_LENGTH, buf.subarray(V3_HEADER_LENGTH, h.headerLength));
      const extBytes = encodeExtensions(next);
      const nospc = (): never => {
        throw new TsimgError('limit', 'Failed to update bitmap extension: No space left on device', { errno: 'ENOSPC' });
      };
      if (headerLength + extBytes.length > cs) nospc();
      buf.set(extBytes, headerLength);
      let backingFileOffset = 0;
      let backingFileSize = 0;
      if (this.backingFile !== undefined) {
        const name = new TextEncoder().encode(this.backingFile);
        backingFileOffset = headerLength + extBytes.length;
        if (cs - backingFileOffset < name.length) nospc();
        buf.set(name, backingFileOffset);
        backingFileSize = name.length;
      }
      const autoclear = bitmaps ? h.autoclearFeatures | AUTOCLEAR_BITMAPS : h.autoclearFeatures & ~AUTOCLEAR_BITMAPS;
      const updated: Qcow2Header = { ...h, headerLength, backingFileOffset, backingFileSize, autoclearFeatures: autoclear };
      const unknownFields = buf.slice(V3_HEADER_LENGTH, headerLength);
      encodeHeader(updated, new DataView(buf.buffer));
      buf.set(unknownFields, V3_HEADER_LENGTH);
      await this.file.write(0, buf);
      await this.file.flush();
      Object.assign(this.header, updated);
      exts.splice(0, exts.length, ...next);
      this.#bitmapDirectory = bitmaps ? { offset: bitmaps.bitmapDirectoryOffset, length: bitmaps.bitmapDirectorySize } : undefined;
      // The bitmaps just stored describe the image as it is now; a later change clears the
      // bit again, as #beforeChange does for any bitmaps tsimg does not track.
      this.#cleanedAutoclear = false;
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      if (!this.readOnly && !this.#broken) {
        await this.#exclusive(async () => {
          await this.#flushAll();
          if (this.#markedDirty) {
            // qcow2_mark_clean: every refcount is on disk now, so the image is consistent.
            this.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
            await this.#writeFeatureFields();
            this.#markedDirty = false;
          }
        });
      }
    } finally {
      this.#closed = true;
      this.#l2Cache.clear();
      this.#refcountCache.clear();
      await this.file.close();
      if (this.dataFile !== undefined) await this.dataFile.close();
      if (this.backing !== undefined) await this.backing.close();
    }
  }

  // ---- write machinery --------------------------------------------------------------------

  async #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.#gate.exclusive(async () => {
      this.#decompressed = undefined;
      try {
        return await fn();
      } finally {
        await this.#l2Cache.evict();
        await this.#refcountCache.evict();
      }
    });
  }

  /** A metadata write; `ign` names the kind of metadata it may overwrite (its own). */
  async #storeMetadata(offset: number, data: Uint8Array, ign = 0): Promise<void> {
    await this.#overlapCheck(offset, data.length, ign);
    await this.file.write(offset, data);
  }

  /**
   * qcow2_pre_write_overlap_check in qemu's default ("cached") mode: a write into the image
   * file must not hit the header, the active L1 table, the refcount table, the snapshot table,
   * a snapshot's L1 table, an active L2 table, a refcount block or the bitmap directory (a
   * wrong L2 entry or refcount would otherwise let data overwrite metadata). The image is
   * marked corrupt instead. `ign` is a mask of OL_* kinds not to check.
   */
  async #overlapCheck(offset: number, length: number, ign = 0): Promise<void> {
    const what = this.#overlappedMetadata(offset, length, ign);
    if (what !== 0) await this.corrupt(`Preventing invalid write on metadata (overlaps with ${overlapName(what)})`);
  }

  /** qcow2_check_metadata_overlap: the first kind of metadata (qemu's order) the write hits, or 0. */
  #overlappedMetadata(offset: number, length: number, ign: number): number {
    if (length === 0) return 0;
    const cs = this.clusterSize;
    if ((ign & OL_MAIN_HEADER) === 0 && offset < cs) return OL_MAIN_HEADER;
    // As qemu, the range is widened to whole clusters first.
    const first = Math.floor(offset / cs);
    const end = Math.ceil((offset + length) / cs);
    const start = first * cs;
    const stop = end * cs;
    const hit = (at: number, len: number): boolean => len > 0 && start < at + len && at < stop;
    const hitRange = (r: ByteRange | undefined): boolean => r !== undefined && hit(r.offset, r.length);
    if ((ign & OL_ACTIVE_L1) === 0 && hit(this.#l1Offset, this.#l1Size * 8)) return OL_ACTIVE_L1;
    const alloc = this.#allocator;
    if ((ign & OL_REFCOUNT_TABLE) === 0 && alloc !== undefined && hit(alloc.tableOffset, alloc.table.length * REFTABLE_ENTRY_SIZE)) {
      return OL_REFCOUNT_TABLE;
    }
    if ((ign & OL_SNAPSHOT_TABLE) === 0 && hitRange(this.#snapshotTable)) return OL_SNAPSHOT_TABLE;
    if ((ign & OL_INACTIVE_L1) === 0 && this.#inactiveL1.some(hitRange)) return OL_INACTIVE_L1;
    if ((ign & OL_ACTIVE_L2) === 0 && this.#activeL2.overlaps(first, end)) return OL_ACTIVE_L2;
    if ((ign & OL_REFCOUNT_BLOCK) === 0 && this.#refblocks.overlaps(first, end)) return OL_REFCOUNT_BLOCK;
    if ((ign & OL_BITMAP_DIRECTORY) === 0 && hitRange(this.#bitmapDirectory)) return OL_BITMAP_DIRECTORY;
    return 0;
  }

  /**
   * Writes the caches and syncs. While lazy refcounts keep the image dirty, a plain flush
   * leaves refcount blocks in memory as qemu's qcow2_write_caches does (`everything` writes
   * them too: close, shrink).
   */
  async #flushAll(everything = true): Promise<void> {
    if (everything || !this.#markedDirty) await this.#refcountCache.flush();
    await this.#l2Cache.flush();
    await this.file.flush();
    if (this.dataFile !== undefined) await this.dataFile.flush();
  }

  /** Writes the three feature-bit fields of a v3 header (bytes 72..95) and syncs. */
  async #writeFeatureFields(): Promise<void> {
    if (this.version < 3) return;
    const b = new Uint8Array(24);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, this.header.incompatibleFeatures);
    v.setBigUint64(8, this.header.compatibleFeatures);
    v.setBigUint64(16, this.header.autoclearFeatures);
    await this.file.write(72, b);
    await this.file.flush();
  }

  async #writeReftableHeader(offset: number, clusters: number): Promise<void> {
    const b = new Uint8Array(12);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, BigInt(offset));
    v.setUint32(8, clusters);
    await this.#headerSwitch(() => this.file.write(48, b));
    this.header.refcountTableOffset = offset;
    this.header.refcountTableClusters = clusters;
  }

  /**
   * A header write that moves a table (L1, refcount table), then a sync. When it fails nobody
   * knows which table the header on disk names, and both must stay as they are: the image
   * takes no more changes in this session. (Cached tables are still written back: the old and
   * the new table name the same L2 tables and refcount blocks.)
   */
  async #headerSwitch(write: () => Promise<void>): Promise<void> {
    try {
      await write();
      await this.file.flush();
    } catch (err) {
      this.#frozen = true;
      throw err;
    }
  }

  /** Before the first change: lazy refcounts set the dirty bit; persistent bitmaps go stale. */
  async #beforeChange(): Promise<void> {
    if (!this.#cleanedAutoclear && (this.header.autoclearFeatures & AUTOCLEAR_BITMAPS) !== 0n) {
      // tsimg does not update persistent dirty bitmaps: clearing the autoclear bit marks them
      // invalid, as the spec asks of software that changes the image without tracking them.
      this.header.autoclearFeatures &= ~AUTOCLEAR_BITMAPS;
      await this.#writeFeatureFields();
    }
    this.#cleanedAutoclear = true;
  }

  async #markDirtyIfLazy(): Promise<void> {
    if (!this.#lazy || this.#markedDirty || this.version < 3) return;
    this.header.incompatibleFeatures |= INCOMPAT_DIRTY;
    await this.#writeFeatureFields();
    this.#markedDirty = true;
  }

  /** get_cluster_table: the L2 table for guest `offset`, allocated (or copied) when needed. */
  async #getClusterTable(offset: number): Promise<{ table: Uint8Array; l2Offset: number; index: number }> {
    const geo = this.geo;
    const l1Index = Math.floor(offset / geo.l2Span);
    if (l1Index >= this.#l1Size) await this.#growL1(l1Index + 1, false);
    const e = decodeL1Entry(this.#l1View, l1Index * 8);
    if (e.l2Offset % geo.clusterSize !== 0) {
      await this.corrupt(`L2 table offset ${hex(e.l2Offset)} unaligned (L1 index: ${hex(l1Index)})`);
    }
    let l2Offset = e.l2Offset;
    if (!e.copied) {
      await this.#l2Allocate(l1Index);
      if (e.l2Offset !== 0) await this.#allocator!.freeClusters(e.l2Offset, geo.clusterSize);
      l2Offset = decodeL1Entry(this.#l1View, l1Index * 8).l2Offset;
    }
    const table = await this.#l2Cache.get(l2Offset);
    return { table, l2Offset, index: Math.floor((offset % geo.l2Span) / geo.clusterSize) };
  }

  /** l2_allocate: a new L2 table (a copy of the old one when shared), hooked into the L1 table. */
  async #l2Allocate(l1Index: number): Promise<void> {
    const cs = this.clusterSize;
    const alloc = this.#allocator!;
    const oldEntry = this.#l1Bytes.slice(l1Index * 8, l1Index * 8 + 8);
    const old = decodeL1Entry(this.#l1View, l1Index * 8).l2Offset;
    const l2Offset = await alloc.allocClusters(cs);
    let l1WriteTried = false;
    try {
      if (l2Offset === 0) await this.corrupt('Preventing invalid allocation of L2 table at offset 0');
      await this.#refcountCache.flush();
      let oldTable: Uint8Array | undefined;
      if (old !== 0) oldTable = await this.#l2Cache.get(old);
      const table = this.#l2Cache.getEmpty(l2Offset);
      if (oldTable !== undefined) table.set(oldTable);
      this.#l2Cache.markDirty(l2Offset, table);
      await this.#l2Cache.flush();
      encodeL1Entry({ l2Offset, copied: true }, this.#l1View, l1Index * 8);
      l1WriteTried = true;
      await this.#writeL1Entry(l1Index);
      this.#activeL2.delete(old);
      this.#activeL2.add(l2Offset);
    } catch (err) {
      // As qemu's l2_allocate, the L1 entry in memory keeps pointing at the old table. Unlike
      // qemu, once the L1 write was tried the new table is kept (leaked), not freed: the write
      // may have reached the disk, and the new table (zeroes, or a copy of the old one) must
      // stay valid for it. Before that point it goes back, and out of the cache.
      this.#l1Bytes.set(oldEntry, l1Index * 8);
      if (!l1WriteTried && !this.#broken && l2Offset > 0) await alloc.freeClusters(l2Offset, cs, true).catch(() => undefined);
      throw err;
    }
  }

  async #writeL1Entry(l1Index: number): Promise<void> {
    await this.#overlapCheck(this.#l1Offset + l1Index * 8, 8, OL_ACTIVE_L1);
    await this.file.write(this.#l1Offset + l1Index * 8, this.#l1Bytes.subarray(l1Index * 8, l1Index * 8 + 8));
    await this.file.flush();
  }

  /** qcow2_grow_l1_table. */
  async #growL1(minSize: number, exact: boolean): Promise<void> {
    if (minSize <= this.#l1Size) return;
    if (minSize > INT_MAX / 8) throw new TsimgError('limit', 'Active L1 table too large', { errno: 'EFBIG' });
    let newSize = minSize;
    if (!exact) {
      newSize = Math.max(this.#l1Size, 1);
      while (minSize > newSize) newSize = Math.ceil((newSize * 3) / 2);
    }
    if (newSize > QCOW_MAX_L1_SIZE / 8) throw new TsimgError('limit', 'Active L1 table too large', { errno: 'EFBIG' });
    const bytes = new Uint8Array(newSize * 8);
    bytes.set(this.#l1Bytes.subarray(0, this.#l1Size * 8));
    const alloc = this.#allocator!;
    const newOffset = await alloc.allocClusters(bytes.length);
    try {
      await this.#refcountCache.flush();
      await this.#overlapCheck(newOffset, bytes.length);
      await this.file.write(newOffset, bytes);
      await this.file.flush();
    } catch (err) {
      // The old table stays active; its replacement goes back (qemu's qcow2_grow_l1_table).
      if (!this.#broken) await alloc.freeClusters(newOffset, bytes.length).catch(() => undefined);
      throw err;
    }
    const hdr = new Uint8Array(12);
    const v = new DataView(hdr.buffer);
    v.setUint32(0, newSize);
    v.setBigUint64(4, BigInt(newOffset));
    await this.#headerSwitch(() => this.file.write(36, hdr));
    const oldOffset = this.#l1Offset;
    const oldSize = this.#l1Size;
    this.#l1Bytes = bytes;
    this.#l1View = new DataView(bytes.buffer);
    this.#l1Offset = newOffset;
    this.#l1Size = newSize;
    this.header.l1Size = newSize;
    this.header.l1TableOffset = newOffset;
    await alloc.freeClusters(oldOffset, oldSize * 8);
  }

  /** qcow2_co_truncate without preallocation: grow the L1 table, or drop what lies beyond. */
  async #resize(size: number): Promise<void> {
    const old = this.size();
    if (size === old) return;
    if (size % 512 !== 0) throw new UsageError('The new size must be a multiple of 512', { errno: 'EINVAL' });
    if (this.version < 3 && this.header.nbSnapshots > 0) {
      throw new UnsupportedError("Can't resize a v2 image which has snapshots", { errno: 'ENOTSUP' });
    }
    await this.#beforeChange();
    const newL1Size = Math.ceil(size / this.geo.l2Span);
    if (size < old) {
      const cs = this.clusterSize;
      const start = Math.ceil(size / cs) * cs;
      if (start < old) await this.#discardClusters(start, old - start, true);
      await this.#shrinkL1(newL1Size);
      const alloc = this.#allocator!;
      await alloc.shrinkReftable();
      const fileSize = Math.ceil(this.file.size() / 512) * 512;
      const last = await alloc.lastUsedCluster(fileSize);
      if ((last + 1) * cs < fileSize) {
        // Everything written so far must reach the file before its tail goes away.
        await this.#flushAll();
        await this.file.resize((last + 1) * cs);
      }
    } else {
      await this.#growL1(newL1Size, true);
    }
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(size));
    await this.file.write(24, b);
    // The device has taken the new size: if the flush fails, it still reaches the disk with a
    // later flush, so the image must not go on believing in the old size.
    this.header.size = size;
    await this.file.flush();
  }

  /** qcow2_shrink_l1_table: zeroes the L1 entries from `newSize` on and frees their L2 tables. */
  async #shrinkL1(newSize: number): Promise<void> {
    if (newSize >= this.#l1Size) return;
    const from = newSize * 8;
    const to = this.#l1Size * 8;
    const dropped: number[] = [];
    for (let i = this.#l1Size - 1; i >= newSize; i--) {
      const e = decodeL1Entry(this.#l1View, i * 8);
      if (e.l2Offset !== 0) dropped.push(e.l2Offset);
    }
    try {
      await this.file.flush();
      await this.file.write(this.#l1Offset + from, new Uint8Array(to - from));
      await this.file.flush();
    } finally {
      // As qemu: the entries leave memory even when the zeroes may not have reached the disk
      // (a half-cleared table on disk only leaks its L2 tables), and before their clusters are
      // freed — otherwise a failed free leaves memory pointing at a reusable cluster.
      this.#l1Bytes.fill(0, from, to);
      for (const l2Offset of dropped) this.#activeL2.delete(l2Offset);
    }
    for (const l2Offset of dropped) await this.#allocator!.freeClusters(l2Offset, this.clusterSize, true);
  }

  /** How many clusters from l2Index on need (or do not need) a new allocation. */
  #countSingleWrite(view: DataView, l2Index: number, n: number, newAlloc: boolean): number {
    const geo = this.geo;
    let expected = entryHostCluster(decodeL2Entry(view, l2Index * geo.entrySize, geo)) ?? 0;
    let i = 0;
    for (; i < n; i++) {
      const e = decodeL2Entry(view, (l2Index + i) * geo.entrySize, geo);
      if (!entryWritableInPlace(e) !== newAlloc) break;
      if (!newAlloc) {
        if (entryHostCluster(e) !== expected) break;
        expected += geo.clusterSize;
      }
    }
    return i;
  }

  #clustersToLookAt(start: number, bytes: number): number {
    const geo = this.geo;
    const inCluster = start % geo.clusterSize;
    const l2Index = Math.floor((start % geo.l2Span) / geo.clusterSize);
    return Math.min(Math.ceil((inCluster + bytes) / geo.clusterSize), geo.l2Entries - l2Index, Math.floor(REQUEST_MAX_BYTES / geo.clusterSize));
  }

  /**
   * qcow2_alloc_host_offset: maps as much of `[offset, offset+bytes)` as possible to one
   * contiguous host range, allocating clusters as qemu would. Returns the bytes covered, the
   * host offset of `offset`, and the allocations to link afterwards.
   */
  async #allocHostOffset(offset: number, bytes: number): Promise<{ bytes: number; host: number; metas: L2Meta[] }> {
    const geo = this.geo;
    const cs = geo.clusterSize;
    const alloc = this.#allocator!;
    let start = offset;
    let remaining = bytes;
    let clusterOffset: number | undefined;
    let host: number | undefined;
    let cur = 0;
    const metas: L2Meta[] = [];
    for (;;) {
      if (host === undefined && clusterOffset !== undefined) host = clusterOffset;
      start += cur;
      remaining -= cur;
      if (clusterOffset !== undefined) clusterOffset += cur;
      if (remaining === 0) break;
      cur = remaining;
      const inCluster = start % cs;

      // handle_copied: clusters we may write in place.
      {
        const n = this.#clustersToLookAt(start, cur);
        const t = await this.#getClusterTable(start);
        const view = tableView(t.table);
        const entry = decodeL2Entry(view, t.index * geo.entrySize, geo);
        if (entryWritableInPlace(entry)) {
          const hostCluster = entryHostCluster(entry)!;
          if (hostCluster % cs !== 0) await this.corrupt(`Preventing invalid write on metadata (unaligned cluster ${hex(hostCluster)})`);
          if (clusterOffset !== undefined && hostCluster !== clusterOffset - inCluster) break;
          const keep = this.#countSingleWrite(view, t.index, n, false);
          cur = Math.min(cur, keep * cs - inCluster);
          const meta = calculateL2Meta(geo, view, t.index, hostCluster, start, cur, true);
          if (meta !== undefined) metas.push(meta);
          clusterOffset = hostCluster + inCluster;
          continue;
        }
      }

      // handle_alloc: new clusters (optionally exactly at clusterOffset, to stay contiguous).
      const n0 = this.#clustersToLookAt(start, cur);
      const t = await this.#getClusterTable(start);
      const view = tableView(t.table);
      let n = this.#countSingleWrite(view, t.index, n0, true);
      let allocAt: number;
      if (this.dataFile !== undefined) {
        allocAt = start - inCluster; // external data files map guest offsets 1:1
        if (clusterOffset !== undefined && clusterOffset - inCluster !== allocAt) break;
      } else if (clusterOffset === undefined) {
        allocAt = await alloc.allocClusters(n * cs);
      } else {
        allocAt = clusterOffset - inCluster;
        n = await alloc.allocClustersAt(allocAt, n);
        if (n === 0) break;
      }
      const requested = cur + inCluster;
      const nbBytes = Math.min(requested, n * cs);
      cur = Math.min(cur, nbBytes - inCluster);
      const tv = tableView((await this.#getClusterTable(start)).table);
      metas.push(calculateL2Meta(geo, tv, t.index, allocAt, start, cur, false)!);
      clusterOffset = allocAt + inCluster;
    }
    return { bytes: bytes - remaining, host: host!, metas };
  }

  /** qcow2_co_pwritev_part. */
  async #writeGuest(offset: number, data: Uint8Array): Promise<void> {
    await this.#beforeChange();
    let done = 0;
    const pending: L2Meta[] = [];
    try {
      while (done < data.length) {
        const want = Math.min(data.length - done, INT_MAX);
        const guest = offset + done;
        const r = await this.#allocHostOffset(guest, want);
        try {
          await this.#writeChunk(guest, data.subarray(done, done + r.bytes), r);
        } catch (err) {
          // qcow2_alloc_cluster_abort: the clusters this chunk allocated go back unused.
          if (!this.#broken && this.dataFile === undefined) {
            for (const m of r.metas) {
              if (!m.keepOld) await this.#allocator!.freeClusters(m.hostStart, m.nbClusters * this.clusterSize).catch(() => undefined);
            }
          }
          throw err;
        }
        pending.push(...r.metas);
        done += r.bytes;
      }
    } finally {
      // qemu runs the chunks of a multi-chunk request as parallel tasks: all allocations happen
      // before the first task links its L2 entries (and frees the clusters it replaced). Chunks
      // whose data was written are linked even when a later one failed.
      if (!this.#broken) for (const m of pending) await this.#linkL2(m);
    }
  }

  /** Writes one chunk's data with the COW regions around it, as one device write. */
  async #writeChunk(guest: number, chunk: Uint8Array, r: { bytes: number; host: number; metas: L2Meta[] }): Promise<void> {
    const allocating = r.metas.some((m) => !m.keepOld);
    if (allocating) await this.#markDirtyIfLazy();
    // One write covering the data and the COW regions at both ends.
    const first = r.metas.find((m) => m.guestStart + m.cowStartTo === guest);
    const last = r.metas.find((m) => m.guestStart + m.cowEndFrom === guest + r.bytes);
    const head = first !== undefined ? first.cowStartTo - first.cowStartFrom : 0;
    const tail = last !== undefined ? last.cowEndTo - last.cowEndFrom : 0;
    if (this.dataFile === undefined) await this.#overlapCheck(r.host - head, head + chunk.length + tail);
    if (head === 0 && tail === 0) {
      await this.#dataDevice.write(r.host, chunk);
    } else {
      const buf = new Uint8Array(head + chunk.length + tail);
      if (head > 0) await this.#readGuest(guest - head, buf.subarray(0, head));
      if (tail > 0) await this.#readGuest(guest + r.bytes, buf.subarray(head + chunk.length));
      buf.set(chunk, head);
      await this.#dataDevice.write(r.host - head, buf);
    }
    if (allocating) this.#l2Cache.setDependsOnFlush();
  }

  /** qcow2_alloc_cluster_link_l2: points the L2 entries at the new clusters, frees the old ones. */
  async #linkL2(m: L2Meta): Promise<void> {
    const geo = this.geo;
    if (!this.#lazy) await this.#l2Cache.setDependency(this.#refcountCache);
    const t = await this.#getClusterTable(m.guestStart);
    const view = tableView(t.table);
    const old: L2Entry[] = [];
    for (let i = 0; i < m.nbClusters; i++) {
      const at = (t.index + i) * geo.entrySize;
      if (view.getUint32(at) !== 0 || view.getUint32(at + 4) !== 0) old.push(decodeL2Entry(view, at, geo));
      const prev = decodeL2Entry(view, at, geo);
      const hostOffset = m.hostStart + i * geo.clusterSize;
      if (geo.extendedL2) {
        const bits = prev.kind === 'extended' ? { alloc: prev.alloc, zero: prev.zero } : { alloc: 0, zero: 0 };
        const nb = linkedBitmap(geo, m, i, bits);
        encodeL2Entry({ kind: 'extended', hostOffset, copied: true, alloc: nb.alloc, zero: nb.zero }, view, at, geo);
      } else {
        encodeL2Entry({ kind: 'data', hostOffset, copied: true }, view, at, geo);
      }
    }
    this.#l2Cache.markDirty(t.l2Offset, t.table);
    if (!m.keepOld) for (const e of old) await this.#freeAnyCluster(e);
  }

  /** qcow2_free_any_cluster. */
  async #freeAnyCluster(e: L2Entry, discard = false): Promise<void> {
    const alloc = this.#allocator!;
    if (e.kind === 'compressed') {
      const r = compressedRange(e);
      await alloc.freeClusters(r.offset, r.length, discard);
      return;
    }
    const host = entryHostCluster(e);
    if (host === undefined) return;
    if (host % this.clusterSize !== 0) {
      await this.corrupt(`Cannot free unaligned cluster ${hex(host)}`);
    }
    if (this.dataFile !== undefined) {
      // Data file clusters are not refcounted; with discard passthrough they are dropped.
      if (discard) await this.dataFile.discard(host, Math.max(0, Math.min(this.clusterSize, this.dataFile.size() - host)));
      return;
    }
    await alloc.freeClusters(host, this.clusterSize, discard);
  }

  /** True when the guest range reads as zeroes, judged from metadata only (qemu's is_zero). */
  async #readsAsZero(offset: number, length: number): Promise<boolean> {
    const end = Math.min(offset + length, this.size());
    let pos = offset;
    while (pos < end) {
      const run = await lookupRun(this, pos, end - pos);
      if (run.kind === 'data' || run.kind === 'compressed') return false;
      if (run.kind === 'unallocated' && this.backing !== undefined) {
        if (!(await chainReadsAsZero(this.backing, pos, run.length))) return false;
      }
      pos += run.length;
    }
    return true;
  }

  /** qcow2_co_pwrite_zeroes with the block layer's alignment split around it. */
  async #writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    await this.#beforeChange();
    if (this.version < 3) {
      await this.#writeExplicitZeroes(offset, length);
      return;
    }
    const scs = this.geo.subclusterSize;
    const end = offset + length;
    const imageEnd = this.size();
    let pos = offset;
    while (pos < end) {
      const scStart = Math.floor(pos / scs) * scs;
      const scEnd = Math.min(scStart + scs, imageEnd);
      if (pos === scStart && (end >= scEnd || end === imageEnd)) {
        // Aligned middle: everything up to the last whole subcluster (or the image end).
        const alignedEnd = end === imageEnd ? end : Math.floor(end / scs) * scs;
        await this.#zeroize(pos, alignedEnd - pos, mayUnmap);
        pos = alignedEnd;
        continue;
      }
      // An unaligned piece inside one subcluster.
      const pieceEnd = Math.min(end, scStart + scs);
      const ok =
        (await this.#readsAsZero(scStart, pos - scStart)) &&
        (pieceEnd >= imageEnd || (await this.#readsAsZero(pieceEnd, scEnd - pieceEnd))) &&
        (await this.#subclusterZeroable(scStart));
      if (ok) await this.#zeroize(scStart, scEnd - scStart, mayUnmap);
      else await this.#writeExplicitZeroes(pos, pieceEnd - pos);
      pos = pieceEnd;
    }
  }

  async #subclusterZeroable(offset: number): Promise<boolean> {
    const run = await lookupRun(this, offset, 1);
    return run.kind === 'zero' || run.kind === 'unallocated';
  }

  async #writeExplicitZeroes(offset: number, length: number): Promise<void> {
    const zero = new Uint8Array(Math.min(length, ZERO_WRITE_CHUNK));
    for (let pos = 0; pos < length; pos += zero.length) {
      await this.#writeGuest(offset + pos, zero.subarray(0, Math.min(zero.length, length - pos)));
    }
  }

  /** qcow2_subcluster_zeroize: subcluster-aligned range (or up to the image end). */
  async #zeroize(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    const geo = this.geo;
    const cs = geo.clusterSize;
    if (this.#dataRaw && this.dataFile !== undefined) await this.dataFile.writeZeroes(offset, length, { mayUnmap });
    let end = offset + length;
    const head = Math.min(end, Math.ceil(offset / cs) * cs) - offset;
    let pos = offset + head;
    const tail = end >= this.size() ? 0 : end - Math.max(pos, Math.floor(end / cs) * cs);
    end -= tail;
    // As qemu: the host discards of clusters this frees are collected and issued once the
    // L2 entries and refcounts are updated (in the caches), merged into as few as possible.
    const alloc = this.#allocator!;
    alloc.cacheDiscards = true;
    try {
      if (head > 0) await this.#zeroSubclusters(offset, head);
      let n = Math.ceil((end - pos) / cs);
      while (n > 0) {
        const done = await this.#zeroInL2(pos, n, mayUnmap);
        n -= done;
        pos += done * cs;
      }
      if (tail > 0) await this.#zeroSubclusters(end, tail);
    } catch (err) {
      // qcow2_process_discards(bs, ret < 0) drops the queue without discarding.
      alloc.cacheDiscards = false;
      alloc.dropDiscards();
      throw err;
    }
    alloc.cacheDiscards = false;
    await alloc.processDiscards();
  }

  /** zero_l2_subclusters: sets zero bits for some subclusters of one cluster (extended L2). */
  async #zeroSubclusters(offset: number, length: number): Promise<void> {
    const geo = this.geo;
    const t = await this.#getClusterTable(offset);
    const view = tableView(t.table);
    const at = t.index * geo.entrySize;
    const e = decodeL2Entry(view, at, geo);
    if (e.kind !== 'extended') {
      // Compressed clusters cannot be partially zeroed: qemu falls back to writing zeroes.
      await this.#writeExplicitZeroes(offset, length);
      return;
    }
    const sc = Math.floor((offset % geo.clusterSize) / geo.subclusterSize);
    const count = Math.ceil(length / geo.subclusterSize);
    const range = ((2 ** count - 1) * 2 ** sc) >>> 0;
    const zero = (e.zero | range) >>> 0;
    const allocBits = (e.alloc & ~range) >>> 0;
    if (zero === e.zero && allocBits === e.alloc) return;
    encodeL2Entry({ ...e, zero, alloc: allocBits }, view, at, geo);
    this.#l2Cache.markDirty(t.l2Offset, t.table);
  }

  /** zero_in_l2_slice. */
  async #zeroInL2(offset: number, nbClusters: number, mayUnmap: boolean): Promise<number> {
    const geo = this.geo;
    const t = await this.#getClusterTable(offset);
    const view = tableView(t.table);
    const n = Math.min(nbClusters, geo.l2Entries - t.index);
    for (let i = 0; i < n; i++) {
      const at = (t.index + i) * geo.entrySize;
      const old = decodeL2Entry(view, at, geo);
      const allocated = old.kind === 'compressed' || entryHostCluster(old) !== undefined;
      const unmap = old.kind === 'compressed' || (mayUnmap && allocated);
      let next: L2Entry;
      if (geo.extendedL2) {
        const host = unmap || old.kind !== 'extended' ? undefined : old.hostOffset;
        const copied = unmap || old.kind !== 'extended' ? false : old.copied;
        next = { kind: 'extended', hostOffset: host, copied, alloc: 0, zero: 0xffff_ffff };
      } else if (unmap || old.kind === 'unallocated') {
        next = { kind: 'zero', hostOffset: 0, copied: false };
      } else if (old.kind === 'data' || old.kind === 'zero') {
        next = { kind: 'zero', hostOffset: old.hostOffset, copied: old.copied };
      } else {
        next = old;
      }
      if (sameEntry(view, at, next, geo)) continue;
      encodeL2Entry(next, view, at, geo);
      this.#l2Cache.markDirty(t.l2Offset, t.table);
      if (unmap) {
        await this.#refcountCache.setDependency(this.#l2Cache);
        // qemu frees them as QCOW2_DISCARD_REQUEST: discarded in the file with unmap.
        await this.#freeAnyCluster(old, this.#passDiscardRequest);
      }
    }
    return n;
  }

  /** qcow2_co_pdiscard + qcow2_cluster_discard (not full_discard). */
  async #discard(offset: number, length: number): Promise<void> {
    if (this.version < 3 && this.backing !== undefined) return; // would expose the backing file
    await this.#beforeChange();
    const cs = this.clusterSize;
    const start = Math.ceil(offset / cs) * cs;
    let end = Math.floor((offset + length) / cs) * cs;
    if (offset + length === this.size()) end = this.size();
    if (start >= end) return;
    await this.#discardClusters(start, end - start, false);
  }

  /**
   * qcow2_cluster_discard over cluster-aligned `[start, start+length)`. A full discard (when
   * shrinking) leaves the clusters unallocated and drops freed host clusters from the file.
   */
  async #discardClusters(start: number, length: number, full: boolean): Promise<void> {
    const cs = this.clusterSize;
    const alloc = this.#allocator!;
    let pos = start;
    let n = Math.ceil(length / cs);
    alloc.cacheDiscards = true;
    try {
      while (n > 0) {
        const done = await this.#discardInL2(pos, n, full);
        n -= done;
        pos += done * cs;
      }
    } finally {
      alloc.cacheDiscards = false;
      await alloc.processDiscards();
    }
  }

  async #discardInL2(offset: number, nbClusters: number, full: boolean): Promise<number> {
    const geo = this.geo;
    const t = await this.#getClusterTable(offset);
    const view = tableView(t.table);
    const n = Math.min(nbClusters, geo.l2Entries - t.index);
    const dropped: L2Entry[] = [];
    for (let i = 0; i < n; i++) {
      const at = (t.index + i) * geo.entrySize;
      const old = decodeL2Entry(view, at, geo);
      const allocated = old.kind === 'compressed' || entryHostCluster(old) !== undefined;
      let next = old;
      if (full) next = geo.extendedL2 ? { kind: 'extended', hostOffset: undefined, copied: false, alloc: 0, zero: 0 } : { kind: 'unallocated' };
      else if (this.backing !== undefined || allocated) {
        if (geo.extendedL2) next = { kind: 'extended', hostOffset: undefined, copied: false, alloc: 0, zero: 0xffff_ffff };
        else next = this.version >= 3 ? { kind: 'zero', hostOffset: 0, copied: false } : { kind: 'unallocated' };
      }
      if (sameEntry(view, at, next, geo)) continue;
      encodeL2Entry(next, view, at, geo);
      this.#l2Cache.markDirty(t.l2Offset, t.table);
      if (full) {
        dropped.push(old);
        continue;
      }
      await this.#refcountCache.setDependency(this.#l2Cache);
      // A guest discard frees as QCOW2_DISCARD_REQUEST: passed to the file with unmap.
      await this.#freeAnyCluster(old, this.#passDiscardRequest);
    }
    if (dropped.length > 0) {
      // A shrink frees (and discards) these clusters for good: the L2 entries that drop them
      // reach the disk first, so that if the shrink fails later, a reused cluster is never
      // still mapped at its old place on disk. A failed flush here leaks them instead.
      await this.#l2Cache.flush();
      await this.#refcountCache.setDependency(this.#l2Cache);
      for (const e of dropped) await this.#freeAnyCluster(e, true);
    }
    return n;
  }
}

function tableView(table: Uint8Array): DataView {
  return new DataView(table.buffer, table.byteOffset, table.byteLength);
}

/** True when encoding `entry` would leave the bytes at `at` unchanged. */
function sameEntry(view: DataView, at: number, entry: L2Entry, geo: Geometry): boolean {
  const size = geo.entrySize;
  const scratch = new DataView(new ArrayBuffer(size));
  encodeL2Entry(entry, scratch, 0, geo);
  for (let i = 0; i < size; i += 4) if (scratch.getUint32(i) !== view.getUint32(at + i)) return false;
  return true;
}

/** Whether `[offset, offset+length)` of `image` reads as zeroes, from block status alone. */
export async function chainReadsAsZero(image: BackingDevice, offset: number, length: number): Promise<boolean> {
  const end = Math.min(offset + length, image.size());
  let pos = offset;
  while (pos < end) {
    const st = await image.blockStatus(pos, end - pos);
    if (st.kind === 'data') return false;
    if (st.kind === 'unallocated' && image.backing !== undefined) {
      if (!(await chainReadsAsZero(image.backing, pos, st.length))) return false;
    }
    pos += st.length;
  }
  return true;
}
