/**
 * The state one open qcow2 image shares between the engine's modules (read, write, compressed,
 * zero/discard, L1 table, resize, header writes, corruption), and the small helpers on it: the
 * read/write gate, range and writability guards, cache write-back, and qemu's request limits.
 *
 * The engine modules are functions over one EngineState (imago's split of its Qcow2 object);
 * Qcow2Image (image.ts) is the facade that owns it.
 */
import { IoError, ReadOnlyError, TsimgError, UsageError, type BlockDevice, CorruptError } from '@tsimg/raw';
import { BDRV_MAX_LENGTH } from '@tsimg/raw';
import type { Allocator } from './allocator.js';
import type { TableCache } from './cache.js';
import type { CompressionType } from '../compress/compress.js';
import type { HeaderExtension, Qcow2Header } from '../format/header.js';
import type { Geometry, MappingSource } from './mapping.js';
import type { ByteRange, MetadataClusters } from '../format/overlap.js';
import type { Qcow2Snapshot } from '../format/snapshot.js';
import { INCOMPAT_CORRUPT } from '../format/types.js';
import type { HeldBitmaps } from './held-bitmaps.js';
import type { Qcow2Crypto } from '../crypto/qcow2-crypto.js';


/**
 * What a qcow2 image reads through where it is unallocated: its backing image, of any format
 * (the image layer opens it). Only its own chain matters here, for zero detection.
 */
export interface BackingDevice extends BlockDevice {
  readonly backing?: BackingDevice;
}

/** Shared reads, exclusive changes. */
export class Gate {
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

/**
 * What the pre-write overlap check protects besides the header, the active L1 table and the
 * refcount table (corruption.ts). Filled for writable images only: nothing else writes.
 */
export interface ProtectedMetadata {
  /** Every L2 table the active L1 table names, kept in step with the L1 table in memory. */
  readonly activeL2: MetadataClusters;
  /** Every refcount block the refcount table names, kept in step by the allocator's hook. */
  readonly refblocks: MetadataClusters;
  /**
   * The snapshot table and the snapshots' L1 tables: as read on open, then kept in step by
   * the snapshot operations (snapshots.ts).
   */
  snapshotTable: ByteRange | undefined;
  inactiveL1: readonly ByteRange[];
  /**
   * The bitmap directory: from open (when the autoclear bit made the extension valid) until
   * updateBitmapsExtension replaces it. beforeChange clearing the bit leaves the directory's
   * clusters in use, and qemu, which keeps the bit while it has the image open, checks it.
   */
  bitmapDirectory: ByteRange | undefined;
}

/**
 * One open image's engine state. As a MappingSource it is what the mapping lookups read
 * (`l1Size` / `l1` are the active L1 table in memory, `corrupt` signals corruption).
 */
export interface EngineState extends MappingSource {
  readonly file: BlockDevice;
  readonly readOnly: boolean;
  readonly backing?: BackingDevice;
  /** The external data file, if the image has one. */
  readonly dataFile?: BlockDevice;
  /** The header as it is on disk now (updated by every header write; shared with the facade). */
  readonly header: Qcow2Header;
  /** The header extensions (the facade's array: replaced in place). */
  readonly extensions: HeaderExtension[];
  /** The backing file name the header records (changed by changeBackingFile). */
  backingFile?: string;
  readonly geo: Geometry;
  readonly clusterSize: number;
  /** The header's version; changed only by amend (compat). */
  version: number;

  // The active L1 table in memory (l1Size and l1 are the MappingSource's).
  l1Size: number;
  l1Offset: number;
  l1Bytes: Uint8Array;
  l1: DataView;

  /**
   * The snapshot table in memory (qemu's s->snapshots), in table order, and the bytes it takes
   * on disk from header.snapshotsOffset (s->snapshots_size). Changed by snapshots.ts only.
   */
  snapshots: Qcow2Snapshot[];
  snapshotsSize: number;

  readonly l2Cache: TableCache;
  readonly refcountCache: TableCache;
  /** Writable images only. */
  allocator: Allocator | undefined;
  readonly gate: Gate;
  readonly protectedMetadata: ProtectedMetadata;

  readonly compression: CompressionType;
  /** Lazy refcounts in use; changed only by amend (lazy_refcounts, compat). */
  lazy: boolean;
  readonly dataRaw: boolean;
  /** discard_passthrough[QCOW2_DISCARD_REQUEST]: on when the image was opened with unmap. */
  readonly passDiscardRequest: boolean;

  closed: boolean;
  /** Set once corruption was found: no more writes, no write-back on close. */
  broken: boolean;
  /** A non-fatal (read-only) corruption event was reported already: later ones are silent. */
  signaledCorruption: boolean;
  /** Set when a table switch in the header failed: no more changes, but write-back on close. */
  frozen: boolean;
  markedDirty: boolean;
  cleanedAutoclear: boolean;
  /**
   * The persistent bitmaps a writable v3 image holds while open (held-bitmaps.ts): loaded at
   * the open, stored at the close. Undefined for read-only and v2 images.
   */
  heldBitmaps: HeldBitmaps | undefined;
  /** The data clusters' encryption (encrypted images opened with their key). */
  crypto?: Qcow2Crypto;
  /** The last cluster decompressed (compressed.ts); dropped by every change. */
  decompressed: { key: string; data: Uint8Array } | undefined;
  /**
   * Read-ahead buffers of compressed clusters not in use (compressed.ts): reused, page-aligned
   * buffers instead of a fresh 2 MiB one per read-ahead. One per guest read in flight at most.
   */
  readAheadSpare: Uint8Array[];
}

/**
 * Loads a metadata table (L2 table, refcount block) as qemu's qcow2_cache_do_get → bdrv_pread:
 * a request ending past BDRV_MAX_LENGTH fails with EIO (bdrv_check_request32); otherwise bytes
 * past the end of the file read as zeroes (file-posix), which also covers offsets a device
 * could not address (beyond 2^53: no file is that large). `into` arrives zero-filled.
 */
export async function loadTable(dev: BlockDevice, offset: number, into: Uint8Array): Promise<void> {
  if (offset + into.length > BDRV_MAX_LENGTH) throw new IoError('Input/output error', { errno: 'EIO' });
  if (offset >= dev.size()) {
    into.fill(0);
    return;
  }
  await dev.read(offset, into);
}

/** The virtual size in whole sectors, as qemu counts it (total_sectors = size / 512). */
export function virtualSize(s: EngineState): number {
  return Math.floor(s.header.size / 512) * 512;
}

/** The device guest data clusters live on. */
export function dataDevice(s: EngineState): BlockDevice {
  return s.dataFile ?? s.file;
}

/** A DataView over one cached table's bytes. */
export function tableView(table: Uint8Array): DataView {
  return new DataView(table.buffer, table.byteOffset, table.byteLength);
}

/** Refuses a request on a closed image or outside the guest range. */
export function checkRange(s: EngineState, offset: number, length: number): void {
  if (s.closed) throw new UsageError('device is closed');
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new UsageError(`invalid range ${offset}+${length}`);
  }
  const size = virtualSize(s);
  if (offset + length > size) {
    throw new UsageError(`range ${offset}+${length} is beyond the end of the image (${size} bytes)`, {
      errno: 'EIO',
    });
  }
}

/** Refuses a change the image cannot take (closed, read-only, corrupt, frozen); returns the allocator. */
export function checkWritable(s: EngineState): Allocator {
  if (s.closed) throw new UsageError('device is closed');
  if (s.readOnly || s.allocator === undefined) throw new ReadOnlyError();
  if ((s.header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n || s.broken) {
    throw new CorruptError('Image is corrupt; writes are refused', { errno: 'EIO' });
  }
  if (s.frozen) {
    throw new IoError('An earlier header update failed; the image takes no more changes until it is reopened', {
      errno: 'EIO',
    });
  }
  return s.allocator;
}

/** Runs a change alone; the caches evict (a safe point) when it ends. */
export async function exclusive<T>(s: EngineState, fn: () => Promise<T>): Promise<T> {
  return s.gate.exclusive(async () => {
    s.decompressed = undefined;
    try {
      return await fn();
    } finally {
      await s.l2Cache.evict();
      await s.refcountCache.evict();
    }
  });
}

/**
 * Writes the caches and syncs. While lazy refcounts keep the image dirty, a plain flush
 * leaves refcount blocks in memory as qemu's qcow2_write_caches does (`everything` writes
 * them too: close, shrink).
 */
export async function flushAll(s: EngineState, everything = true): Promise<void> {
  if (everything || !s.markedDirty) await s.refcountCache.flush();
  await s.l2Cache.flush();
  await s.file.flush();
  if (s.dataFile !== undefined) await s.dataFile.flush();
}
