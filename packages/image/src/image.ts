/**
 * The generic image: what every format's open image is (a BlockDevice with its file, backing
 * image and data file), and what a format provides to be opened, probed and reported on.
 */
import type { BlockDevice } from '@tsimg/raw';
import type { AmendOptions, BitmapAction, CheckOutcome, MeasureResult, Secrets, SnapshotCreateOptions, SourceBitmap } from '@tsimg/qcow2';
import type { HttpLocation } from './http-location.js';
import type { ImageInfo, SnapshotInfo } from './info-types.js';
import type { MeasureSource } from './measure.js';
import type { NbdAddress } from './nbd/address.js';
import type { NodePermissions } from './permissions.js';
import type { OptDesc, QemuOpts } from './qemu-opts.js';

export type { AmendOptions, BitmapAction, SnapshotCreateOptions, SourceBitmap } from '@tsimg/qcow2';

/** An open image of any format: a BlockDevice that knows its file and backing image. */
export interface Image extends BlockDevice {
  /** The format's name as qemu spells it (`raw`, `qcow2`, …). */
  readonly format: string;
  readonly filename: string;
  /** The device holding the image (for qcow2 the metadata file). */
  readonly file: BlockDevice;
  /** An external data file, when host offsets of data point there instead of into `file`. */
  readonly dataFile?: BlockDevice;
  readonly backing?: Image;
  /**
   * bdrv_has_zero_init: whether the image as created reads as zeroes (so convert may skip
   * zero runs); absent: it does.
   */
  hasZeroInit?(): boolean;
  /** The allocation granularity, for formats that have one. */
  readonly clusterSize?: number;
  /**
   * The format's judgement that data runs must be checked against the host file, whose holes
   * then read as zeroes (qemu's BDRV_BLOCK_RECURSE for metadata-preallocated qcow2).
   */
  metadataPreallocated?(): Promise<boolean>;
  /**
   * The persistent dirty bitmaps the image carries, in qemu's list order; undefined when the
   * image cannot carry any (raw, qcow2 v2). Formats without bitmaps leave the method out.
   */
  listBitmaps?(): Promise<ImageBitmap[] | undefined>;
  /** The bits of the persistent bitmap `name` (a merge source); undefined when there is none. */
  readBitmap?(name: string): Promise<SourceBitmap | undefined>;
  /**
   * One operation of qemu-img bitmap (add, remove, clear, enable, disable, merge) on a writable
   * image's persistent bitmaps, with qemu's messages; stored when the image is closed.
   */
  bitmapAction?(action: BitmapAction): Promise<void>;
  /** The algorithm of the image's compressed clusters, for formats that compress. */
  readonly compressionType?: 'zlib' | 'zstd';
  /**
   * Changes the virtual size as qemu's bdrv_co_truncate does for this format (with its
   * refusals and messages), preallocating a grown area as `options.preallocation` asks. A
   * format without it can only be resized with plain `resize` (no preallocation).
   */
  truncate?(size: number, options: TruncateOptions): Promise<void>;

  // Internal snapshots, for formats that have them (qcow2); absent: the format has none, and
  // callers answer as qemu does for such a format ("Operation not supported" and the like).

  /** The internal snapshots in table order (qemu's bdrv_snapshot_list). */
  listSnapshots?(): SnapshotInfo[];
  /** Takes a new snapshot of the image as it is now; returns it (qemu's bdrv_snapshot_create). */
  createSnapshot?(options: SnapshotCreateOptions): Promise<SnapshotInfo>;
  /** Makes the image read as the snapshot with this ID, else this name (bdrv_snapshot_goto). */
  applySnapshot?(idOrName: string): Promise<void>;
  /** Deletes the first snapshot matching the ID and name given (bdrv_snapshot_delete). */
  deleteSnapshot?(selector: { id?: string; name?: string }): Promise<void>;

  // Backing chain operations (commit, rebase).

  /**
   * bdrv_make_empty: drops everything the image holds, so it reads as its backing image (qemu-img
   * commit empties the top this way). Formats that cannot leave the method out (qemu's ENOTSUP).
   */
  makeEmpty?(): Promise<void>;
  /**
   * bdrv_change_backing_file: records another backing file name and format in the image's
   * metadata (undefined name: no backing file), without opening it. Formats without backing
   * files leave the method out (qemu's ENOTSUP).
   */
  changeBackingFile?(name: string | undefined, format: string | undefined): Promise<void>;
  /**
   * Writes one whole cluster compressed at cluster-aligned `offset` (a shorter `cluster` only
   * for the image's last partial cluster); formats that compress only.
   */
  writeCompressed?(offset: number, cluster: Uint8Array): Promise<void>;
  /**
   * Changes format options in place (qemu's bdrv_amend_options, for `qemu-img amend`); absent:
   * the format has no option amendment (qemu: "Format driver 'x' does not support option
   * amendment").
   */
  amend?(options: AmendOptions): Promise<void>;
}

/** A persistent dirty bitmap of an image. */
export interface ImageBitmap {
  name: string;
  /** Bytes of guest data one bit covers. */
  granularity: number;
  /** Not stored cleanly (qcow2's IN_USE flag): its bits cannot be trusted. */
  inconsistent: boolean;
}

/** How {@link Image.truncate} treats the new area (qemu's PreallocMode) and where warnings go. */
export interface TruncateOptions {
  /** `off` (default), `metadata`, `falloc` or `full`; what a format cannot do it refuses. */
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
  /** Receives warnings qemu prints without failing (e.g. a file tail left after a shrink). */
  warn?: (message: string) => void;
  /**
   * The caller's own refusals (qemu-img resize's), run once the image stands as qemu's open
   * leaves it and before anything changes the size; what it throws fails the truncate. (For
   * qcow2 the difference shows: qemu stores persistent bitmaps again even when it refuses.)
   */
  check?: () => void;
}

/** A snapshot to read instead of the active layer: an ID or name, or both to match. */
export type SnapshotSelector = string | { id?: string; name?: string };

/** What the generic opener hands a format while it opens one layer. */
export interface LayerContext {
  readonly filename: string;
  readonly readOnly: boolean;
  readonly snapshot?: SnapshotSelector;
  /** Receives the lines qemu prints while repairing a dirty image opened read/write. */
  readonly log?: (line: string, kind?: 'report' | 'raw') => void;
  /** qemu's `discard=unmap` for this layer (see OpenImageOptions.unmap). */
  readonly unmap: boolean;
  /** false: a read/write open that leaves persistent bitmaps alone (see OpenImageOptions.holdBitmaps). */
  readonly holdBitmaps?: boolean;
  /** Opens a file the image names (a data file) with this layer's mode and file options. */
  openFile(name: string): Promise<BlockDevice>;
  /** The secret id this layer's key comes from (`encrypt.key-secret`, `key-secret`), if given. */
  readonly keySecret?: string;
  /** The secrets of the open (`--object secret,...`), for {@link keySecret} and amend. */
  readonly secrets?: ReadonlyMap<string, Uint8Array>;
  /**
   * Opens the backing image by the name stored in the image and its recorded format (empty or
   * undefined: probed). Resolves the name, refuses loops and chains that are too deep, and
   * answers undefined when the caller asked for no backing chain.
   */
  openBacking(storedName: string, formatName: string | undefined): Promise<Image | undefined>;
}

/** The parts of `qemu-img info` a format fills in (the generic layer adds the rest). */
export type FormatInfo = Omit<ImageInfo, 'filename' | 'format' | 'actual-size' | 'full-backing-filename'>;

/**
 * An image format. The generic loops (open, info, map, convert …) reach a format only through
 * this: adding a format is a new `ImageFormat` in the list of formats, nothing else.
 */
export interface ImageFormat {
  /** The name, as `-f` takes it. */
  readonly name: string;
  /** True when the first bytes of a file are this format's (probing); absent: never probed. */
  probe?(first: Uint8Array): boolean;
  /**
   * Opens one layer on `file` (which the caller closes if this throws). Files the layer opens
   * through `ctx` are closed by the caller on failure too.
   */
  open(file: BlockDevice, ctx: LayerContext): Promise<Image>;
  /**
   * `qemu-img info`'s view of the image from its metadata alone; warnings as qemu prints them;
   * the exact size in bytes when `virtual-size` (a number) cannot hold it.
   */
  info(file: BlockDevice): Promise<{ info: FormatInfo; warnings: string[]; sizeBytes?: bigint }>;
  /**
   * True when the format zeroes a range in its metadata, without writing or punching its file
   * (a zero write with BDRV_REQ_NO_FALLBACK succeeds): NBD's fast-zero flag is offered for it.
   */
  readonly fastZeroes?: boolean;
  /** True when the format writes compressed clusters (qemu's bdrv_co_pwritev_compressed): `convert -c`. */
  readonly writesCompressed?: boolean;
  /** How images of this format are created (`create`, `convert`, `-o help`); absent: they are not. */
  readonly creation?: FormatCreation;
  /**
   * qemu's bdrv_co_check for `qemu-img check`; absent: "This image format does not support
   * checks" once the image has been opened with {@link open}.
   */
  readonly check?: FormatCheck;
}

/** What a format supplies for `qemu-img check`. */
export interface FormatCheck {
  /**
   * Opens `file` for a check (bdrv_open with qemu's check flag): the format's header checks,
   * then the files it names. Throws the typed error of the open; what it opened itself is
   * closed again then (not `file`, which stays the caller's).
   */
  open(file: BlockDevice, ctx: CheckOpenContext): Promise<CheckSession>;
}

/** How {@link FormatCheck.open} opens: the command's mode, locks and reporting. */
export interface CheckOpenContext {
  /** The image's name (messages, and a reopen after a repair). */
  readonly filename: string;
  /** The host path names stored in the image are relative to. */
  readonly path: string;
  /** `-r`: the image is opened read/write to be repaired. */
  readonly writable: boolean;
  /** The permissions of the top node, for the files the image names (its data file). */
  readonly node: NodePermissions;
  readonly onWarning?: (message: string) => void;
  /** Receives the lines qemu prints while it opens and repairs the image. */
  readonly log: (line: string, kind?: 'report' | 'raw') => void;
  /** The secret id of the image's key (`encrypt.key-secret`), if given. */
  readonly keySecret?: string;
  readonly secrets: ReadonlyMap<string, Uint8Array>;
  /** The remote location when the image is read over HTTP (a json:-named node has no base directory). */
  readonly http?: HttpLocation;
  /**
   * Opens a backing image (by its resolved path, with its recorded format if that is one tsimg
   * opens) read-only, as the check's caller opens images: the chain must open for the check.
   */
  openBacking(path: string, format: string | undefined): Promise<Image>;
}

/** An image open for checking. */
export interface CheckSession {
  /** One pass of the check, repairing what `fix` (FIX_LEAKS | FIX_ERRORS) allows. */
  check(fix: number): Promise<CheckOutcome>;
  /** After a repair: what closing qemu's read/write node writes (best effort, never throws). */
  finishRepair(): Promise<void>;
  /** Closes the files the open opened besides the image's own file. */
  close(): Promise<void>;
}

/**
 * What a format (or the file protocol) supplies to be created: qemu's `create_opts` and
 * `bdrv_co_create_opts` of its driver.
 */
export interface FormatCreation {
  /**
   * The creation options in qemu 7.2's order and with its help texts: `-o` is parsed against
   * them merged with the file protocol's, and `-o help` prints them.
   */
  readonly options: readonly OptDesc[];
  /** Creates the image at host path `path` from `opts`, which hold the size. */
  create(path: string, opts: QemuOpts, ctx: CreateContext): Promise<void>;
  /**
   * Creates the image on an NBD export, which is used as it is (bdrv_co_create_opts_simple);
   * absent: the format cannot be created there.
   */
  createOnNbd?(nbd: NbdAddress, opts: QemuOpts): Promise<void>;
  /**
   * qemu's bdrv_measure: the file size a new image of this format with creation options `opts`
   * needs for `source`; `secrets` for the key secret the options name. Absent: the format does
   * not support size measurement.
   */
  measure?(source: MeasureSource, opts: QemuOpts, secrets: Secrets): Promise<MeasureResult>;
}

/** What creating an image may need besides its options. */
export interface CreateContext {
  /** `--object secret,...` data by id, for the key secrets the options name. */
  secrets: Secrets;
  /** Lock warnings of the files created (FileDeviceOptions.onWarning). */
  onWarning?: (message: string) => void;
  /** A line qemu prints (error_report) on the way to the error that follows it. */
  report?: (line: string) => void;
}
