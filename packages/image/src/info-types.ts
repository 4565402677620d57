/** The QAPI types `qemu-img info` reports (qemu 7.2's ImageInfo), shared by every format. */
import type { ImageInfoSpecificQcow2, LuksInfo, SnapshotInfo } from '@tsimg/qcow2';

export type { SnapshotInfo } from '@tsimg/qcow2';

/** QAPI ImageInfoSpecific (the qcow2 and luks branches). */
export type ImageInfoSpecific = { type: 'qcow2'; data: ImageInfoSpecificQcow2 } | { type: 'luks'; data: LuksInfo };

/** QAPI ImageInfo, qemu 7.2. Optional members are absent rather than undefined. */
export interface ImageInfo {
  filename: string;
  format: string;
  'dirty-flag'?: boolean;
  'actual-size'?: number;
  'virtual-size': number;
  'cluster-size'?: number;
  encrypted?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: SnapshotInfo[];
  'format-specific'?: ImageInfoSpecific;
}

/** What gathering produced: the info, plus warnings qemu prints on stderr while opening. */
export interface ImageInfoResult {
  info: ImageInfo;
  /** Whole lines (without "qemu-img: "), in the order qemu prints them. */
  warnings: string[];
}
