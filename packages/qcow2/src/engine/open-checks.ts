/**
 * qcow2_do_open's checks, owned here for every opener: a qcow2 image's metadata loaded and
 * checked the way qemu 7.2 opens it — the same checks in the same order with the same messages:
 * header fields, compression type, feature bits, table pointers and sizes (on their exact
 * 64-bit values), the header extensions (walked as qcow2_read_extensions walks them), the LUKS
 * header, the external data file rules, the backing file name, the snapshot table and the
 * bitmaps. info opens with BDRV_O_NO_IO (`loadQcow2Metadata`), check with BDRV_O_CHECK
 * (check-state.ts `openForCheck`), the engine plainly (open.ts, image.ts `Qcow2Image.open`);
 * `Qcow2OpenFlags` carries what differs. Nothing is written here, and no L2 or refcount block,
 * backing file or data file is read.
 *
 * Damaged images behave as in qemu: 64-bit offsets beyond 2^53 are accepted where qemu's checks
 * pass, reads past the end of the file see zeroes, and reads ending past BDRV_MAX_LENGTH fail
 * with EIO.
 */
import { BDRV_MAX_LENGTH, BDRV_SECTOR_SIZE, FormatError, IoError, TsimgError, UnsupportedError, UsageError, type BlockDevice, CorruptError } from '@tsimg/raw';
import {
  decodeBitmapsBody,
  decodeCString,
  decodeCryptoHeaderBody,
  decodeExtension,
  decodeHeader,
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO_HEADER,
  EXT_END,
  findExtension,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  V3_HEADER_LENGTH_MIN,
  type HeaderExtension,
  type HeaderInfo,
  type Qcow2Header,
} from '../format/header.js';
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  COMPRESSION_ZLIB,
  COMPRESSION_ZSTD,
  CRYPT_AES,
  CRYPT_LUKS,
  CRYPT_NONE,
  INCOMPAT_COMPRESSION,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  INCOMPAT_KNOWN,
  MAX_BACKING_FILE_NAME,
  MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS,
  QCOW_MAX_L1_SIZE,
  QCOW_MAX_REFTABLE_SIZE,
  u64ToNumber,
} from '../format/types.js';
import { loadSnapshots, MAX_SNAPSHOTS, readOrFail, SNAPSHOT_HEADER_SIZE, type Qcow2Snapshot } from '../format/snapshot.js';
import {
  BME_FLAG_IN_USE,
  QCOW2_MAX_BITMAPS,
  QCOW2_MAX_BITMAP_DIRECTORY_SIZE,
  loadBitmapDirectory,
  loadBitmapTable,
  type BitmapDirectoryEntry,
} from '../format/bitmap-directory.js';
import { decodeByteString } from '../format/byte-string.js';
import { decodeLuksInfo, LUKS_HEADER_SIZE, type LuksInfo } from '../crypto/luks-header.js';
import { openQcow2Aes, openQcow2Luks, type Qcow2Crypto } from '../crypto/qcow2-crypto.js';


/** What qemu-img info reports for an encrypted qcow2 (QAPI ImageInfoSpecificQCow2Encryption). */
export type Qcow2EncryptionInfo = { format: 'aes' } | ({ format: 'luks' } & LuksInfo);

/**
 * A view of a host file for header parsing: at least 2 MiB long, reading zeroes past the end —
 * qemu's file driver pads short reads the same way, so a truncated header is judged on its
 * fields (e.g. "qcow2 header too short"), not on the file size.
 */
function headerView(dev: BlockDevice): BlockDevice {
  return {
    readOnly: true,
    size: () => Math.max(dev.size(), 1 << MAX_CLUSTER_BITS),
    read: async (offset, into) => {
      // qemu's block layer refuses requests ending past BDRV_MAX_LENGTH with EIO.
      if (offset + into.length > BDRV_MAX_LENGTH) throw new IoError('Input/output error', { errno: 'EIO' });
      // Past the end of the file (even at offsets beyond 2^53, from corrupt pointers) reads zeroes.
      const inFile = Math.max(0, Math.min(into.length, dev.size() - offset));
      if (inFile > 0) await dev.read(offset, into.subarray(0, inFile));
      into.fill(0, inFile);
    },
    write: () => Promise.reject(new UsageError('read-only view')),
    writeZeroes: () => Promise.reject(new UsageError('read-only view')),
    discard: () => Promise.reject(new UsageError('read-only view')),
    flush: () => Promise.resolve(),
    resize: () => Promise.reject(new UsageError('read-only view')),
    blockStatus: (offset, length) => dev.blockStatus(offset, length),
    allocatedSize: () => dev.allocatedSize(),
    close: () => Promise.resolve(),
  };
}

/**
 * qemu's report_unsupported_feature message for the unknown incompatible bits `mask`, naming
 * them from the image's feature name table.
 */
function unsupportedFeatures(extensions: readonly HeaderExtension[], mask: bigint): string {
  const parts: string[] = [];
  const table = findExtension(extensions, 'feature-names')?.features ?? [];
  for (const f of table) {
    if (f.name === '') break;
    if (f.type === 0 && f.bit < 64 && (mask & (1n << BigInt(f.bit))) !== 0n) {
      parts.push(f.name.slice(0, 46));
      mask &= ~(1n << BigInt(f.bit));
    }
  }
  if (mask !== 0n) parts.push(`Unknown incompatible feature: ${mask.toString(16)}`);
  return `Unsupported qcow2 feature(s): ${parts.join(', ')}`;
}

/** Everything about a qcow2 image that info needs, loaded and checked as qemu's open does. */
export interface Qcow2Metadata {
  hdr: HeaderInfo;
  /** The header's size field, exact (hdr.header.size is approximate beyond 2^53). */
  sizeBytes: bigint;
  clusterSize: number;
  snapshots: Qcow2Snapshot[];
  bitmaps: BitmapDirectoryEntry[];
  encrypt?: Qcow2EncryptionInfo;
  warnings: string[];
}

/** Bytes up to the first NUL, as text (qemu keeps these names as C strings). */
function cBytes(b: Uint8Array): string {
  return decodeCString(b, decodeByteString);
}

/** A failure in qemu's extension walk, with the extensions read before it (for the feature table). */
class ExtensionWalkError extends FormatError {
  readonly partial: HeaderExtension[];
  constructor(message: string, partial: HeaderExtension[]) {
    super(message, { errno: 'EINVAL' });
    this.partial = partial;
  }
}

/**
 * qcow2_read_extensions: walks the extensions of the first cluster from `start` to `end` with
 * qemu's checks, in qemu's order, checking each extension as it is reached (so the first bad
 * one decides the message). Reports the bitmap warnings through `warnings`.
 */
function walkExtensions(
  cluster: Uint8Array,
  h: Qcow2Header,
  start: number,
  end: number,
  warnings: string[],
  flags: Qcow2OpenFlags,
): HeaderExtension[] {
  const clusterSize = 2 ** h.clusterBits;
  const v = new DataView(cluster.buffer, cluster.byteOffset, cluster.byteLength);
  const out: HeaderExtension[] = [];
  const fail = (msg: string): never => {
    throw new ExtensionWalkError(msg, out);
  };
  let off = start;
  while (off < end) {
    const type = v.getUint32(off);
    const len = v.getUint32(off + 4);
    off += 8;
    if (off > end || len > end - off) fail('Header extension too large');
    const body = cluster.subarray(off, off + len);
    const d = new DataView(cluster.buffer, cluster.byteOffset + off, len);
    switch (type) {
      case EXT_END:
        return out;
      case EXT_BACKING_FORMAT:
        if (len >= 16) fail(`ERROR: ext_backing_format: len=${len} too large (>=16)`);
        out.push(decodeExtension(type, body, decodeByteString));
        break;
      case EXT_CRYPTO_HEADER: {
        if (h.cryptMethod !== CRYPT_LUKS) fail('CRYPTO header extension only expected with LUKS encryption method');
        if (len !== 16) fail(`CRYPTO header extension size ${len}, but expected size 16`);
        const exact = decodeCryptoHeaderBody(d);
        const offset = u64ToNumber(exact.offset);
        const length = u64ToNumber(exact.length);
        if (offset === undefined || offset % clusterSize !== 0) {
          fail(`Encryption header offset '${exact.offset}' is not a multiple of cluster size '${clusterSize}'`);
        }
        // qcrypto_block_open: without BDRV_O_NO_IO the LUKS layer needs the key here.
        if (!flags.noIo && flags.password === undefined) fail(keySecretRequired().message);
        out.push({ kind: 'crypto-header', offset: offset!, length: length ?? Number.MAX_SAFE_INTEGER });
        break;
      }
      case EXT_BITMAPS: {
        if (len !== 24) fail('bitmaps_ext: Invalid extension length');
        if ((h.autoclearFeatures & AUTOCLEAR_BITMAPS) === 0n) {
          // qemu warns and then ignores the bitmaps (a read-write open would drop the extension).
          warnings.push(
            h.version < 3
              ? 'warning: This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent'
              : 'warning: a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent',
          );
          break;
        }
        const b = decodeBitmapsBody(d);
        if (b.reserved !== 0) fail('bitmaps_ext: Reserved field is not zero');
        const nb = b.nbBitmaps;
        const size = b.bitmapDirectorySize;
        const offset = b.bitmapDirectoryOffset;
        if (nb > QCOW2_MAX_BITMAPS) {
          fail(`bitmaps_ext: Image has ${nb} bitmaps, exceeding the QEMU supported maximum of ${QCOW2_MAX_BITMAPS}`);
        }
        if (nb === 0) fail('found bitmaps extension with zero bitmaps');
        if (offset % BigInt(clusterSize) !== 0n) {
          fail('bitmaps_ext: invalid bitmap directory offset');
        }
        if (size > BigInt(QCOW2_MAX_BITMAP_DIRECTORY_SIZE)) {
          fail(`bitmaps_ext: bitmap directory size (${size}) exceeds the maximum supported size (${QCOW2_MAX_BITMAP_DIRECTORY_SIZE})`);
        }
        out.push({ kind: 'bitmaps', nbBitmaps: nb, bitmapDirectorySize: Number(size), bitmapDirectoryOffset: Number(offset) });
        break;
      }
      default:
        // feature names, data file name, unknown extensions: no checks, names kept as bytes.
        out.push(decodeExtension(type, body, decodeByteString));
    }
    off += (len + 7) & ~7;
  }
  return out;
}

/** The header's 64-bit fields as on disk (qemu accepts values past 2^53 where its checks pass). */
export interface WideFields {
  backingFileOffset: bigint;
  size: bigint;
  l1TableOffset: bigint;
  refcountTableOffset: bigint;
  snapshotsOffset: bigint;
}

/**
 * decodeHeader, tolerating 64-bit offsets and sizes beyond 2^53: those come back exact in `raw`
 * and approximate in the header (any such offset lies far past the end of a real file).
 */
function decodeHeaderWide(fixed: Uint8Array): { h: Qcow2Header; raw: WideFields } {
  const copy = fixed.slice();
  const v = new DataView(copy.buffer);
  const raw: WideFields = {
    backingFileOffset: v.getBigUint64(8),
    size: v.getBigUint64(24),
    l1TableOffset: v.getBigUint64(40),
    refcountTableOffset: v.getBigUint64(48),
    snapshotsOffset: v.getBigUint64(64),
  };
  for (const off of [8, 24, 40, 48, 64]) v.setBigUint64(off, 0n);
  const h = decodeHeader(v);
  h.backingFileOffset = Number(raw.backingFileOffset);
  h.size = Number(raw.size);
  h.l1TableOffset = Number(raw.l1TableOffset);
  h.refcountTableOffset = Number(raw.refcountTableOffset);
  h.snapshotsOffset = Number(raw.snapshotsOffset);
  return { h, raw };
}

/** Throws EIO for a read qemu's block layer would refuse (ending past BDRV_MAX_LENGTH). */
async function checkReach(offset: number, length: number): Promise<void> {
  if (offset + length > BDRV_MAX_LENGTH) throw new IoError('Input/output error', { errno: 'EIO' });
}

/**
 * qcow2_validate_table on the exact 64-bit offset: at most `maxBytes` of entries (else
 * "<what> too large", EFBIG), the offset cluster-aligned and the table ending below 2^63 (else
 * "<what> offset invalid", EINVAL). `what` is qemu's table name, e.g. "Active L1 table".
 */
export function validateTable(offset: bigint, entries: number, entryLen: number, maxBytes: number, clusterSize: number, what: string): void {
  if (entries > Math.floor(maxBytes / entryLen)) throw new FormatError(`${what} too large`, { errno: 'EFBIG' });
  if ((1n << 63n) - 1n - BigInt(entries) * BigInt(entryLen) < offset || offset % BigInt(clusterSize) !== 0n) {
    throw new FormatError(`${what} offset invalid`, { errno: 'EINVAL' });
  }
}

/**
 * How the image is opened — the open flags that change what qcow2_do_open checks. qemu-img
 * info opens read-only with BDRV_O_NO_IO; check with BDRV_O_CHECK (read/write for -r); the
 * engine (map, convert, compare, measure, dd...) plainly, read-only or read/write.
 */
export interface Qcow2OpenFlags {
  /**
   * BDRV_O_CHECK: a missing refcount table is accepted, the snapshot table is neither
   * validated nor read, and a corrupt image opens read/write (to be repaired).
   */
  check?: boolean;
  /** BDRV_O_RDWR: a corrupt image is refused ("Image is corrupt; cannot be opened read/write") unless `check`. */
  readWrite?: boolean;
  /**
   * BDRV_O_NO_IO: encryption is set up without a key (the LUKS header is only parsed). Without
   * it an encrypted image needs `encrypt.key-secret`, which tsimg never has, so it fails like
   * qemu without the option.
   */
  noIo?: boolean;
  /**
   * Return the active L1 table and the refcount table as read (qemu always reads them; info
   * needs only their reads to be possible, so it leaves this off and saves the memory).
   */
  readTables?: boolean;
  /**
   * The passphrase of `encrypt.key-secret` (looked up only when the image is encrypted), so
   * that an encrypted image opens with I/O; without it such an open fails as in qemu.
   */
  password?: () => Uint8Array;
}

/** What qcow2_do_open leaves behind: the metadata plus what the check and the engine go on with. */
export interface Qcow2OpenState extends Qcow2Metadata {
  /** The header's 64-bit fields exactly as on disk (the header's numbers round past 2^53). */
  exact: WideFields;
  /** The active L1 table, big-endian entries as on disk (with `readTables`). */
  l1Table?: Uint8Array;
  /** The refcount table, big-endian entries as on disk (with `readTables`). */
  reftable?: Uint8Array;
  /** The bitmaps extension when qemu uses it (absent, or ignored without the autoclear bit: undefined). */
  bitmapsExt?: Extract<HeaderExtension, { kind: 'bitmaps' }>;
  /**
   * Lines qemu prints while opening, as `[kind, text]` for a check log: the bitmap warning is
   * an error_report-style line, the leak hint raw text without a newline.
   */
  log: Array<[kind: 'report' | 'raw', text: string]>;
  /** The data encryption, unlocked with `password` (encrypted images opened with I/O). */
  crypto?: Qcow2Crypto;
}

/**
 * Loads the metadata of a qcow2 image from `file` the way qcow2_do_open does for qemu-img info
 * (read-only, BDRV_O_NO_IO): the same checks in the same order with the same messages —
 * header fields, compression type, feature bits, table pointers and sizes, extensions (backing
 * format, LUKS header, bitmaps), backing file name, snapshot table, bitmaps. Reads past the end
 * of the file see zeroes, as in qemu.
 */
export async function loadQcow2Metadata(file: BlockDevice): Promise<Qcow2Metadata> {
  return openQcow2Metadata(file, { noIo: true });
}

/**
 * qcow2_do_open's checks, in its order and with its messages, for every opener: info, check
 * and the engine differ only by `flags` (qemu's BDRV_O_CHECK, BDRV_O_RDWR, BDRV_O_NO_IO).
 * A line-for-line port of that one function's checks, kept as one function so that its order
 * (which decides which message a broken image gets) can be read against qemu's.
 * Writes nothing: clearing unknown autoclear bits and repairing a dirty image are the caller's
 * (they need its write path). Throws the typed errors with qemu's messages; the caller adds
 * "Could not open 'NAME': ".
 */
export async function openQcow2Metadata(file: BlockDevice, flags: Qcow2OpenFlags = {}): Promise<Qcow2OpenState> {
  const view = headerView(file);
  const fixed = new Uint8Array(V3_HEADER_LENGTH);
  await view.read(0, fixed);
  const { h, raw } = decodeHeaderWide(fixed);
  if (h.clusterBits < MIN_CLUSTER_BITS || h.clusterBits > MAX_CLUSTER_BITS) {
    throw new FormatError(`Unsupported cluster size: 2^${h.clusterBits}`, { errno: 'EINVAL' });
  }
  const clusterSize = 2 ** h.clusterBits;
  if (h.version === 3 && h.headerLength < V3_HEADER_LENGTH_MIN) throw new FormatError('qcow2 header too short', { errno: 'EINVAL' });
  if (h.headerLength > clusterSize) throw new FormatError('qcow2 header exceeds cluster size', { errno: 'EINVAL' });
  if (raw.backingFileOffset > BigInt(clusterSize)) throw new FormatError('Invalid backing file offset', { errno: 'EINVAL' });
  const cluster = new Uint8Array(clusterSize);
  await view.read(0, cluster);
  const extStart = h.version === 3 ? h.headerLength : V2_HEADER_LENGTH;
  const extEnd = h.backingFileOffset !== 0 ? h.backingFileOffset : clusterSize;
  const warnings: string[] = [];

  if (h.compressionType !== COMPRESSION_ZLIB && h.compressionType !== COMPRESSION_ZSTD) {
    throw new UnsupportedError(`qcow2: unknown compression type: ${h.compressionType}`, { errno: 'ENOTSUP' });
  }
  const hasCompressionBit = (h.incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n;
  if (h.compressionType === COMPRESSION_ZLIB && hasCompressionBit) {
    throw new FormatError('qcow2: Compression type incompatible feature bit must not be set', { errno: 'EINVAL' });
  }
  if (h.compressionType !== COMPRESSION_ZLIB && !hasCompressionBit) {
    throw new FormatError('qcow2: Compression type incompatible feature bit must be set', { errno: 'EINVAL' });
  }
  const unknown = h.incompatibleFeatures & ~INCOMPAT_KNOWN;
  if (unknown !== 0n) {
    // qemu names the bits from the feature table, walking the extensions as far as it can.
    let exts: HeaderExtension[];
    try {
      exts = walkExtensions(cluster, h, extStart, extEnd, [], flags);
    } catch (err) {
      exts = err instanceof ExtensionWalkError ? err.partial : [];
    }
    throw new UnsupportedError(unsupportedFeatures(exts, unknown), { errno: 'ENOTSUP' });
  }
  if ((h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n && flags.readWrite && !flags.check) {
    // Corrupt images may be written to only to repair them.
    throw new CorruptError('qcow2: Image is corrupt; cannot be opened read/write', { errno: 'EACCES' });
  }
  const extL2 = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
  if (extL2 && clusterSize / 32 < 2 ** MIN_CLUSTER_BITS) {
    throw new FormatError(`Unsupported subcluster size: ${clusterSize / 32}`, { errno: 'EINVAL' });
  }
  if (h.refcountOrder > 6) {
    throw new FormatError('Reference count entry width too large; may not exceed 64 bits', { errno: 'EINVAL' });
  }
  if (h.refcountTableClusters === 0 && !flags.check) {
    throw new FormatError('Image does not contain a reference count table', { errno: 'EINVAL' });
  }
  validateTable(raw.refcountTableOffset, h.refcountTableClusters, clusterSize, QCOW_MAX_REFTABLE_SIZE, clusterSize, 'Reference count table');
  if (!flags.check) {
    validateTable(raw.snapshotsOffset, h.nbSnapshots, SNAPSHOT_HEADER_SIZE, SNAPSHOT_HEADER_SIZE * MAX_SNAPSHOTS, clusterSize, 'Snapshot table');
  }
  validateTable(raw.l1TableOffset, h.l1Size, 8, QCOW_MAX_L1_SIZE, clusterSize, 'Active L1 table');
  const l2Bits = BigInt(h.clusterBits - 3 - (extL2 ? 1 : 0));
  const shift = BigInt(h.clusterBits) + l2Bits;
  // size_to_l1 in uint64_t arithmetic (it wraps for sizes near 2^64, as in qemu)
  const l1Needed = BigInt.asUintN(64, raw.size + (1n << shift) - 1n) >> shift;
  if (l1Needed > 0x7fffffffn) throw new FormatError('Image is too big', { errno: 'EFBIG' });
  if (BigInt(h.l1Size) < l1Needed) throw new FormatError('L1 table is too small', { errno: 'EINVAL' });
  // Reads past the end of the file return zeroes; only a table reaching past BDRV_MAX_LENGTH fails.
  let l1Table: Uint8Array | undefined;
  if (h.l1Size > 0) {
    await readOrFail(checkReach(h.l1TableOffset, h.l1Size * 8), 'Could not read L1 table');
    if (flags.readTables) {
      l1Table = new Uint8Array(h.l1Size * 8);
      await view.read(h.l1TableOffset, l1Table);
    }
  } else if (flags.readTables) {
    l1Table = new Uint8Array(0);
  }
  // qcow2_update_options refuses crypt methods it does not know.
  if (h.cryptMethod !== CRYPT_NONE && h.cryptMethod !== CRYPT_AES && h.cryptMethod !== CRYPT_LUKS) {
    throw new UnsupportedError(`Unsupported encryption method ${h.cryptMethod | 0}`, { errno: 'EINVAL' });
  }
  const reftableBytes = h.refcountTableClusters * clusterSize;
  await readOrFail(checkReach(h.refcountTableOffset, reftableBytes), 'Could not initialize refcount handling');
  let reftable: Uint8Array | undefined;
  if (flags.readTables) {
    reftable = new Uint8Array(reftableBytes);
    await view.read(h.refcountTableOffset, reftable);
  }

  const extensions = walkExtensions(cluster, h, extStart, extEnd, warnings, flags);
  const dataFile = (h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;
  // The data file itself is opened by the caller (it knows how to resolve its name). qemu-img
  // info (BDRV_O_NO_IO) passes both checks: 7.2 opens such images for info, and only for info.
  if (dataFile && !flags.noIo && !findExtension(extensions, 'data-file')) {
    throw new FormatError("'data-file' is required for this image", { errno: 'EINVAL' });
  }
  if (!dataFile && !flags.noIo && (h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n) {
    throw new FormatError('data-file-raw requires a data file', { errno: 'EINVAL' });
  }
  let encrypt: Qcow2EncryptionInfo | undefined;
  let cryptoState: Qcow2Crypto | undefined;
  const crypto = findExtension(extensions, 'crypto-header');
  if (crypto) {
    // The LUKS header is read through the extension's window (qcow2_crypto_hdr_read_func).
    if (crypto.length < LUKS_HEADER_SIZE) throw new FormatError('Request for data outside of extension header');
    const luksHeader = new Uint8Array(LUKS_HEADER_SIZE);
    await view.read(crypto.offset, luksHeader);
    encrypt = { format: 'luks', ...decodeLuksInfo(luksHeader) };
    if (!flags.noIo) {
      const password = flags.password!();
      try {
        cryptoState = await openQcow2Luks(file, crypto, password);
      } finally {
        password.fill(0);
      }
    }
  } else if (h.cryptMethod === CRYPT_AES) {
    if (!flags.noIo && flags.password === undefined) throw keySecretRequired();
    encrypt = { format: 'aes' };
    if (!flags.noIo) {
      const password = flags.password!();
      cryptoState = openQcow2Aes(password);
      password.fill(0);
    }
  } else if (h.cryptMethod === CRYPT_LUKS && !flags.noIo) {
    throw new FormatError(`Missing CRYPTO header for crypt method ${h.cryptMethod}`, { errno: 'EINVAL' });
  }

  let backingFile: string | undefined;
  if (h.backingFileOffset !== 0) {
    const len = h.backingFileSize;
    if (len > Math.min(MAX_BACKING_FILE_NAME, clusterSize - h.backingFileOffset)) {
      throw new FormatError('Backing file name too long', { errno: 'EINVAL' });
    }
    const name = new Uint8Array(len);
    await view.read(h.backingFileOffset, name);
    backingFile = cBytes(name);
  }

  // The snapshot table is not read in check mode: a broken one must not stop the check.
  const snapshots = flags.check ? [] : await loadSnapshots(view, h.snapshotsOffset, h.nbSnapshots);

  let bitmaps: BitmapDirectoryEntry[] = [];
  const bitmapsExt = findExtension(extensions, 'bitmaps');
  if (bitmapsExt) {
    const virtualSize = Math.floor(h.size / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE;
    bitmaps = await loadBitmapDirectory(view, bitmapsExt, clusterSize, virtualSize);
    // qemu loads every consistent bitmap on open, so a broken table fails the open.
    for (const bm of bitmaps) {
      if ((bm.flags & BME_FLAG_IN_USE) === 0) await loadBitmapTable(view, bm, clusterSize, virtualSize);
    }
  }
  // bdrv_open_driver after the driver's open (refresh_total_sectors): the sector count times
  // 512 may not pass BDRV_MAX_LENGTH. Only a size that wraps size_to_l1 gets this far.
  if (raw.size / BigInt(BDRV_SECTOR_SIZE) > BigInt(BDRV_MAX_LENGTH / BDRV_SECTOR_SIZE)) {
    throw new FormatError('Could not refresh total sector count: File too large', { errno: 'EFBIG' });
  }
  const log: Qcow2OpenState['log'] = [];
  for (const w of warnings) {
    log.push(['report', w]);
    log.push(['raw', LEAK_HINT]);
  }
  return {
    hdr: { header: h, extensions, backingFile },
    sizeBytes: raw.size,
    clusterSize,
    snapshots,
    bitmaps,
    encrypt,
    warnings,
    exact: raw,
    l1Table,
    reftable,
    bitmapsExt,
    log,
    crypto: cryptoState,
  };
}

/** What qemu prints (error_printf, no newline) after the bitmap warning. */
const LEAK_HINT = "Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.";

/** qcrypto_block_open without a key (tsimg takes none): what qemu says without `encrypt.key-secret`. */
function keySecretRequired(): UnsupportedError {
  return new UnsupportedError("Parameter 'encrypt.key-secret' is required for cipher", { errno: 'EINVAL' });
}
