/**
 * Qcow2Image: an open qcow2 image as a BlockDevice — reads through the L1/L2 mapping (falling
 * through to the backing image), and writes that allocate clusters, copy on write and update
 * the metadata in qemu's order (data → refcount blocks → L2 tables → L1 table → header).
 *
 * This class is the facade: it owns one EngineState (state.ts) and delegates to the engine's
 * modules — read.ts, write.ts, compressed.ts, zero-discard.ts, resize.ts, l1-table.ts,
 * header-write.ts, corruption.ts — after checking each request.
 *
 * Concurrency: reads share the image, every change runs alone (a read/write gate), so metadata
 * is never seen half-updated. Caches evict only between operations.
 */
import { UnsupportedError, UsageError, type BlockDevice, type BlockStatus, type WriteZeroesOptions } from '@tsimg/raw';
import { listImageBitmaps, readImageBitmap, type PersistentBitmap } from '../bitmap-copy.js';
import { bitmapAction, type BitmapAction, type SourceBitmap } from './bitmap-ops.js';
import type { DirtyBitmap } from '../bitmap-store.js';
import { markDirty, storeHeldBitmaps } from './held-bitmaps.js';
import { detectMetadataPreallocation } from './preallocation.js';
import { compressCluster } from '../compress/compress.js';
import { findExtension, type HeaderExtension, type Qcow2Header } from '../format/header.js';
import { padCompressedTail, storeCompressed } from './compressed.js';
import { storeMetadata } from './corruption.js';
import { beforeChange, changeBackingFile, markClean, updateBitmapsExtension, type BitmapsExtension } from './header-write.js';
import { makeEmpty } from './make-empty.js';
import type { Geometry, MappingSource } from './mapping.js';
import { openEngineState, type Qcow2OpenOptions } from './open.js';
import { blockStatusAt, readGuest } from './read.js';
import { amend, type AmendOptions } from './amend.js';
import { resize, type ResizeOptions } from './resize.js';
import { checkRange, checkWritable, exclusive, flushAll, virtualSize, type BackingDevice, type EngineState } from './state.js';
import { writeGuest } from './write.js';
import { createSnapshot, deleteSnapshot, gotoSnapshot, type SnapshotCreateOptions } from './snapshots.js';
import { snapshotInfo, type SnapshotInfo } from '../info.js';
import { AUTOCLEAR_BITMAPS } from '../format/types.js';
import { discard, writeZeroes } from './zero-discard.js';

export type { BackingDevice } from './state.js';
export type { Qcow2OpenOptions } from './open.js';
export type { ResizeOptions, ResizePreallocation } from './resize.js';
export type { SnapshotCreateOptions } from './snapshots.js';
export type { AmendOptions } from './amend.js';
export { chainReadsAsZero } from './read.js';

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
  readonly clusterSize: number;
  readonly geo: Geometry;

  /** Everything the engine's modules share; the fields above are views of it. */
  readonly #s: EngineState;
  #preallocated: Promise<boolean> | undefined;

  private constructor(s: EngineState, filename: string, backing: B | undefined) {
    this.#s = s;
    this.filename = filename;
    this.file = s.file;
    this.readOnly = s.readOnly;
    this.backing = backing;
    this.dataFile = s.dataFile;
    this.header = s.header;
    this.extensions = s.extensions;
    this.geo = s.geo;
    this.clusterSize = s.clusterSize;
  }

  /**
   * Opens a qcow2 image on `file` with qcow2_do_open's checks (open-checks.ts, shared with
   * info and check), loading the active L1 table and, when writable, the refcount table. A
   * dirty image opened read/write is repaired first, as qemu does at the end of its open.
   */
  static async open<B extends BackingDevice = BackingDevice>(file: BlockDevice, opts: Qcow2OpenOptions<B>): Promise<Qcow2Image<B>> {
    const s = await openEngineState(file, opts);
    return new Qcow2Image<B>(s, opts.filename, opts.backing);
  }

  /**
   * qemu's metadata-preallocation judgement, made once per open image: when true, block status
   * of data runs is to be checked against the host file, whose holes read as zeroes.
   */
  metadataPreallocated(): Promise<boolean> {
    return (this.#preallocated ??= detectMetadataPreallocation(this));
  }

  /**
   * qcow2_has_zero_init: a preallocated image (its first L1 entry set) that is encrypted does
   * not read as zeroes — its clusters hold plain zeroes, which decrypt to noise.
   */
  hasZeroInit(): boolean {
    const s = this.#s;
    const preallocated = s.l1Size > 0 && s.l1.getBigUint64(0) !== 0n;
    return !(preallocated && s.crypto !== undefined);
  }

  /**
   * The persistent dirty bitmaps qemu would load, in its list order; undefined for v2 images,
   * none when the bitmaps autoclear bit says a program without bitmap support wrote the image.
   */
  listBitmaps(): Promise<PersistentBitmap[] | undefined> {
    const held = this.#s.heldBitmaps;
    if (held !== undefined) {
      return Promise.resolve(held.list.map((b) => ({ name: b.name, granularity: 2 ** b.granularityBits, inconsistent: b.inconsistent })));
    }
    return listImageBitmaps(this);
  }

  /**
   * The bits of the bitmap `name` as qemu holds them once the image is open (an inconsistent
   * bitmap has none); undefined when there is no such bitmap. A merge source.
   */
  readBitmap(name: string): Promise<SourceBitmap | undefined> {
    const held = this.#s.heldBitmaps;
    if (held !== undefined) return Promise.resolve(held.list.find((b) => b.name === name));
    return readImageBitmap(this, name);
  }

  /**
   * One operation of `qemu-img bitmap` on a writable image's persistent bitmaps (add, remove,
   * clear, enable, disable, merge), with qemu's checks and messages; the close stores the result.
   */
  async bitmapAction(action: BitmapAction): Promise<void> {
    const s = this.#s;
    checkWritable(s);
    await exclusive(s, () => bitmapAction(s, action));
  }

  /**
   * bdrv_create_dirty_bitmap for persistent bitmaps made elsewhere (convert --bitmaps' copies),
   * in the order they are created: each heads the list, and the close stores them.
   */
  adoptBitmaps(bitmaps: readonly DirtyBitmap[]): void {
    const held = this.#s.heldBitmaps;
    if (held === undefined) throw new UnsupportedError('Cannot store dirty bitmaps in qcow2 v2 files', { errno: 'ENOTSUP' });
    checkWritable(this.#s);
    for (const bm of bitmaps) held.list.unshift({ ...bm, inconsistent: false });
  }

  /** The backing file name the header records. */
  get backingFile(): string | undefined {
    return this.#s.backingFile;
  }

  /** The backing file format the header records (its backing-format extension). */
  get backingFormat(): string | undefined {
    return findExtension(this.#s.extensions, 'backing-format')?.name;
  }

  /** The header's version (2 or 3; amend may change it). */
  get version(): number {
    return this.#s.version;
  }

  /** The algorithm compressed clusters of this image use (the header's compression type). */
  get compressionType(): 'zlib' | 'zstd' {
    return this.header.compressionType === 1 ? 'zstd' : 'zlib';
  }

  // ---- MappingSource --------------------------------------------------------------------

  get l1Size(): number {
    return this.#s.l1Size;
  }

  get l1(): DataView {
    return this.#s.l1;
  }

  l2Table(offset: number): Promise<Uint8Array> {
    return this.#s.l2Cache.get(offset);
  }

  /**
   * Reports corruption like qcow2_signal_corruption: a writable image gets the corrupt bit (so
   * nothing writes over metadata again) and the operation fails with EIO. On a read-only image
   * the event is not fatal: the image stays usable, and only the first event carries qemu's
   * line ("Image is corrupt: ...") — later ones fail with a plain EIO, as qemu suppresses them.
   */
  corrupt(message: string): Promise<never> {
    return this.#s.corrupt(message);
  }

  // ---- BlockDevice: reads -----------------------------------------------------------------

  /** The virtual size in whole sectors, as qemu counts it (total_sectors = size / 512). */
  size(): number {
    return virtualSize(this.#s);
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    const s = this.#s;
    checkRange(s, offset, into.length);
    await s.gate.shared(async () => {
      await readGuest(s, offset, into);
      await s.l2Cache.evict();
    });
  }

  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    return this.#blockStatus(offset, length, false);
  }

  /**
   * Like blockStatus, but an unallocated run goes on over every missing L2 table after it
   * (blockStatus stops at the first table's end, as qemu's driver): for walks that merge runs.
   */
  async blockStatusMerged(offset: number, length: number): Promise<BlockStatus> {
    return this.#blockStatus(offset, length, true);
  }

  async #blockStatus(offset: number, length: number, merged: boolean): Promise<BlockStatus> {
    const s = this.#s;
    checkRange(s, offset, length);
    if (length === 0) throw new UsageError('blockStatus needs a length of at least 1');
    return s.gate.shared(async () => {
      const status = await blockStatusAt(s, offset, length, merged);
      await s.l2Cache.evict();
      return status;
    });
  }

  async allocatedSize(): Promise<number | undefined> {
    const own = await this.file.allocatedSize();
    if (this.dataFile === undefined || own === undefined) return own;
    const data = await this.dataFile.allocatedSize();
    return data === undefined ? undefined : own + data;
  }

  // ---- BlockDevice: writes ----------------------------------------------------------------

  async write(offset: number, data: Uint8Array): Promise<void> {
    const s = this.#s;
    checkRange(s, offset, data.length);
    checkWritable(s);
    if (data.length === 0) return;
    await exclusive(s, () => {
      markDirty(s, offset, data.length);
      return writeGuest(s, offset, data);
    });
  }

  async writeZeroes(offset: number, length: number, options: WriteZeroesOptions = {}): Promise<void> {
    const s = this.#s;
    checkRange(s, offset, length);
    checkWritable(s);
    if (length === 0) return;
    await exclusive(s, () => {
      markDirty(s, offset, length);
      return writeZeroes(s, offset, length, options.mayUnmap === true);
    });
  }

  async discard(offset: number, length: number): Promise<void> {
    const s = this.#s;
    checkRange(s, offset, length);
    checkWritable(s);
    if (length === 0) return;
    await exclusive(s, () => {
      markDirty(s, offset, length);
      return discard(s, offset, length);
    });
  }

  async flush(): Promise<void> {
    const s = this.#s;
    if (s.closed) throw new UsageError('device is closed');
    if (this.readOnly) return;
    await exclusive(s, () => flushAll(s, false));
  }

  /**
   * qcow2_co_truncate: grows (with `options.preallocation`: off, metadata, falloc, full) or
   * shrinks the image to `size`, a multiple of 512, with qemu's refusals and messages. An
   * external data file is resized with it; the header's size is written last.
   */
  async truncate(size: number, options: ResizeOptions = {}): Promise<void> {
    const s = this.#s;
    checkWritable(s);
    await exclusive(s, () => resize(s, size, options));
  }

  /** {@link truncate} without preallocation. */
  resize(size: number): Promise<void> {
    return this.truncate(size);
  }

  /**
   * Writes one cluster compressed at cluster-aligned `offset` (a shorter `cluster` only for the
   * image's last, partial cluster), as qemu-img convert -c does. `compressed` is the
   * precompressed form, `null` when it does not shrink (then it is written normally), or
   * undefined to compress here.
   */
  async writeCompressed(offset: number, cluster: Uint8Array, compressed?: Uint8Array | null): Promise<void> {
    const s = this.#s;
    checkRange(s, offset, cluster.length);
    checkWritable(s);
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
      out = (await compressCluster(s.compression, full)) ?? null;
    }
    if (out === null) {
      await this.write(offset, cluster);
      return;
    }
    const payload = out;
    await exclusive(s, () => {
      markDirty(s, offset, cluster.length);
      return storeCompressed(s, offset, payload);
    });
  }

  /** Ends a run of compressed writes: pads the file to a 512-byte boundary as qemu does. */
  async finishCompressed(): Promise<void> {
    const s = this.#s;
    checkWritable(s);
    await exclusive(s, () => padCompressedTail(s));
  }

  // ---- metadata written by other modules (persistent bitmaps) ----------------------------

  /**
   * qcow2_alloc_clusters for metadata a caller lays out itself (bitmap data, tables, the
   * bitmap directory): `size` bytes in whole clusters, first fit, refcount 1. Returns the
   * host offset.
   */
  async allocateClusters(size: number): Promise<number> {
    const alloc = checkWritable(this.#s);
    return exclusive(this.#s, () => alloc.allocClusters(size));
  }

  /** qcow2_free_clusters: drops one reference from every cluster of the host byte range. */
  async freeClusters(offset: number, size: number): Promise<void> {
    const alloc = checkWritable(this.#s);
    await exclusive(this.#s, () => alloc.freeClusters(offset, size));
  }

  /**
   * Writes metadata bytes at host `offset` of the image file (clusters the caller got from
   * {@link allocateClusters}), after the same overlap check as the engine's own tables.
   */
  async writeMetadata(offset: number, data: Uint8Array): Promise<void> {
    const s = this.#s;
    checkWritable(s);
    await exclusive(s, () => storeMetadata(s, offset, data));
  }

  /**
   * update_ext_header_and_dir's header step: writes the caches and syncs (qcow2_flush_caches,
   * so everything the new directory names is on disk first), then rewrites the header cluster
   * as qcow2_update_header does with the bitmaps extension `bitmaps` (none when undefined) and
   * the bitmaps autoclear bit set to match, and syncs again.
   */
  async updateBitmapsExtension(bitmaps: BitmapsExtension | undefined): Promise<void> {
    const s = this.#s;
    checkWritable(s);
    if (this.version < 3) throw new UnsupportedError('Cannot store dirty bitmaps in qcow2 v2 files', { errno: 'ENOTSUP' });
    await exclusive(s, () => updateBitmapsExtension(s, bitmaps));
    // The caller dropped the directory: the bitmaps held since the open go with it.
    if (bitmaps === undefined) s.heldBitmaps?.list.splice(0);
  }

  /**
   * qcow2_amend_options behind `qemu-img amend -o`: changes the version (compat), refcount
   * width, lazy refcounts, data-file bits or size, with qemu's refusals and messages.
   */
  async amend(options: AmendOptions): Promise<void> {
    const s = this.#s;
    checkWritable(s);
    await exclusive(s, () => amend(s, options));
  }

  // ---- internal snapshots (snapshots.ts) ------------------------------------------------

  /**
   * The internal snapshots in table order, as qemu lists them (qcow2_snapshot_list): IDs and
   * names as QEMUSnapshotInfo holds them (cut to 127 / 255 bytes).
   */
  listSnapshots(): SnapshotInfo[] {
    return this.#s.snapshots.map(snapshotInfo);
  }

  /**
   * qcow2_snapshot_create: a new snapshot of the active layer with the next free ID; every
   * cluster becomes shared (the next write copies it). Throws with qemu's errno: EFBIG at
   * 65536 snapshots or a table beyond 64 MiB, ENOTSUP with an external data file.
   */
  async createSnapshot(options: SnapshotCreateOptions): Promise<SnapshotInfo> {
    const s = this.#s;
    checkWritable(s);
    return snapshotInfo(await exclusive(s, () => createSnapshot(s, options)));
  }

  /**
   * qcow2_snapshot_goto behind bdrv_snapshot_goto: the active layer becomes the snapshot with
   * ID `idOrName`, else the first named so. Messages as qemu's ("Failed to load snapshot: No
   * such file or directory"; "Device has active dirty bitmaps" while persistent bitmaps exist).
   */
  async applySnapshot(idOrName: string): Promise<void> {
    const s = this.#s;
    checkWritable(s);
    const bitmaps = findExtension(s.extensions, 'bitmaps');
    if (bitmaps !== undefined && bitmaps.nbBitmaps > 0 && (s.header.autoclearFeatures & AUTOCLEAR_BITMAPS) !== 0n) {
      throw new UsageError('Device has active dirty bitmaps', { errno: 'EBUSY' });
    }
    await exclusive(s, () => gotoSnapshot(s, idOrName));
  }

  /**
   * qcow2_snapshot_delete: removes the first snapshot matching `id` and `name` (each when
   * given) and frees what only it referenced ("Can't find the snapshot" otherwise).
   */
  async deleteSnapshot(selector: { id?: string; name?: string }): Promise<void> {
    const s = this.#s;
    checkWritable(s);
    await exclusive(s, () => deleteSnapshot(s, selector.id, selector.name));
  }

  // ---- backing chain operations (make-empty.ts, header-write.ts) -------------------------

  /**
   * qcow2_make_empty: afterwards the image holds nothing and reads as its backing image (see
   * make-empty.ts for the two ways qemu does it).
   */
  async makeEmpty(): Promise<void> {
    const s = this.#s;
    checkWritable(s);
    await exclusive(s, () => makeEmpty(s));
  }

  /**
   * qcow2_change_backing_file: records `name` (undefined: no backing file) and `format` in the
   * header. The open image keeps reading through the backing image it was opened with.
   *
   * Unlike qemu, everything written before is flushed first, and the header after: a rebase
   * copies clusters into the image that only the new backing file makes necessary, so a header
   * naming it must never reach the disk before the L2 tables that map them.
   */
  async changeBackingFile(name: string | undefined, format: string | undefined): Promise<void> {
    const s = this.#s;
    checkWritable(s);
    await exclusive(s, async () => {
      await beforeChange(s);
      await flushAll(s);
      await changeBackingFile(s, name, format);
      await s.file.flush();
    });
  }

  async close(): Promise<void> {
    const s = this.#s;
    if (s.closed) return;
    try {
      if (!this.readOnly && !s.broken) {
        await exclusive(s, async () => {
          // qcow2_inactivate: the bitmaps first; losing them does not stop the flush.
          let lost: unknown;
          await storeHeldBitmaps(s).catch((err: unknown) => {
            lost = err;
          });
          await flushAll(s);
          await markClean(s);
          if (lost !== undefined) throw lost;
        });
      }
    } finally {
      s.closed = true;
      s.crypto?.cipher.dispose();
      s.l2Cache.clear();
      s.refcountCache.clear();
      await this.file.close();
      if (this.dataFile !== undefined) await this.dataFile.close();
      if (this.backing !== undefined) await this.backing.close();
    }
  }
}
