/**
 * The qcow2 half of `qemu-img info`: the members of qemu 7.2's QAPI `ImageInfo` that qcow2 fills
 * in (qcow2_get_specific_info, qcow2_snapshot_list), built in QAPI schema order from metadata
 * loaded with qemu's open-time checks (engine/open-checks.ts), so an image qemu refuses is
 * refused here too. The generic half (names, probing, the chain) is @tsimg/image's.
 */
import { findExtension } from './format/header.js';
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  COMPRESSION_ZSTD,
  CRYPT_NONE,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
} from './format/types.js';
import { snapshotIcount, snapshotVmStateSize, type Qcow2Snapshot } from './format/snapshot.js';
import { bitmapFlagNames, cName } from './format/bitmap-directory.js';
import { cBuffer } from './format/byte-string.js';
import { loadQcow2Metadata, type Qcow2EncryptionInfo, type Qcow2Metadata } from './engine/open-checks.js';

/** QAPI SnapshotInfo. */
export interface SnapshotInfo {
  id: string;
  name: string;
  'vm-state-size': bigint;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': bigint;
  'vm-clock-nsec': number;
  icount?: bigint;
}

/** QAPI Qcow2BitmapInfo. */
export interface Qcow2BitmapInfo {
  name: string;
  granularity: number;
  flags: Array<'in-use' | 'auto'>;
}


/** QAPI ImageInfoSpecificQCow2. */
export interface ImageInfoSpecificQcow2 {
  compat: '0.10' | '1.1';
  'data-file'?: string;
  'data-file-raw'?: boolean;
  'extended-l2'?: boolean;
  'lazy-refcounts'?: boolean;
  corrupt?: boolean;
  'refcount-bits': number;
  encrypt?: Qcow2EncryptionInfo;
  bitmaps?: Qcow2BitmapInfo[];
  'compression-type': 'zlib' | 'zstd';
}

/** The ImageInfo members a qcow2 image reports, in QAPI order (the image layer adds the rest). */
export interface Qcow2ImageInfo {
  'dirty-flag': boolean;
  'virtual-size': number;
  'cluster-size': number;
  encrypted?: boolean;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: SnapshotInfo[];
  'format-specific': { type: 'qcow2'; data: ImageInfoSpecificQcow2 };
}


/** QAPI SnapshotInfo for a qcow2 snapshot (qcow2_snapshot_list + bdrv_query_snapshot_info_list). */
export function snapshotInfo(sn: Qcow2Snapshot): SnapshotInfo {
  const out: SnapshotInfo = {
    id: cBuffer(sn.id, 128),
    name: cBuffer(sn.name, 256),
    'vm-state-size': BigInt.asIntN(64, snapshotVmStateSize(sn)),
    'date-sec': sn.dateSec,
    'date-nsec': sn.dateNsec,
    'vm-clock-sec': BigInt.asIntN(64, sn.vmClockNsec / 1_000_000_000n),
    'vm-clock-nsec': Number(sn.vmClockNsec % 1_000_000_000n),
  };
  const icount = snapshotIcount(sn);
  if (icount !== undefined) out.icount = BigInt.asIntN(64, icount);
  return out;
}

/** The ImageInfo members of a qcow2 image, from its loaded metadata. */
export function qcow2ImageInfo(meta: Qcow2Metadata): Qcow2ImageInfo {
  const h = meta.hdr.header;
  // Member order follows the QAPI schema (it decides qemu's key order on ties).
  const info: Qcow2ImageInfo = {
    'dirty-flag': (h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n,
    'virtual-size': Number((meta.sizeBytes / 512n) * 512n),
    'cluster-size': meta.clusterSize,
  } as Qcow2ImageInfo;
  if (h.cryptMethod !== CRYPT_NONE) info.encrypted = true;
  if (meta.hdr.backingFile !== undefined && cBuffer(meta.hdr.backingFile, 1024) !== '') {
    info['backing-filename'] = cBuffer(meta.hdr.backingFile, 1024);
    const fmt = findExtension(meta.hdr.extensions, 'backing-format');
    if (fmt && cBuffer(fmt.name, 16) !== '') info['backing-filename-format'] = cBuffer(fmt.name, 16);
  }
  if (meta.snapshots.length > 0) info.snapshots = meta.snapshots.map(snapshotInfo);

  info['format-specific'] = { type: 'qcow2', data: qcow2Specific(meta) };
  return info;
}

/** qcow2_get_specific_info: v2 images report only compat, refcount bits and compression. */
function qcow2Specific(meta: Qcow2Metadata): ImageInfoSpecificQcow2 {
  const h = meta.hdr.header;
  const d: Partial<ImageInfoSpecificQcow2> = { compat: h.version === 2 ? '0.10' : '1.1' };
  if (h.version === 3) {
    const dataFile = findExtension(meta.hdr.extensions, 'data-file');
    if (dataFile) d['data-file'] = cBuffer(dataFile.name, Number.MAX_SAFE_INTEGER);
    // qemu-img info does not open the data file; has_data_file() then follows the feature bit.
    if ((h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n) {
      d['data-file-raw'] = (h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n;
    }
    d['extended-l2'] = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
    d['lazy-refcounts'] = (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
    d.corrupt = (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n;
  }
  d['refcount-bits'] = 2 ** h.refcountOrder;
  if (meta.encrypt) d.encrypt = meta.encrypt;
  if (h.version === 3 && meta.bitmaps.length > 0) {
    d.bitmaps = meta.bitmaps.map((b) => ({
      name: cName(b.name),
      granularity: 2 ** b.granularityBits,
      flags: bitmapFlagNames(b.flags),
    }));
  }
  d['compression-type'] = h.compressionType === COMPRESSION_ZSTD ? 'zstd' : 'zlib';
  return d as ImageInfoSpecificQcow2;
}
