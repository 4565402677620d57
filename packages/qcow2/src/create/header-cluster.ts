/**
 * The header cluster of a new image as qemu's qcow2_update_header writes it: the header, its
 * extensions (backing format, data file name, feature names) and the backing file name.
 */
import { TsimgError, LimitError } from '@tsimg/raw';
import { encodeExtensions, encodeHeader, QEMU_FEATURE_NAMES, V2_HEADER_LENGTH, V3_HEADER_LENGTH, type HeaderExtension, type Qcow2Header } from '../format/header.js';
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
} from '../format/types.js';
import type { ResolvedQcow2CreateOptions } from './create-options.js';
import type { Layout } from './layout.js';
import { CRYPT_METHOD } from './encryption.js';

/** The header cluster qcow2_update_header writes; throws ENOSPC like qemu when it does not fit. */
export function headerCluster(
  o: ResolvedQcow2CreateOptions,
  lay: Pick<Layout, 'cs' | 'l1' | 'l1Offset' | 'reftable' | 'reftableOffset'>,
  withBacking: boolean,
  crypto?: { offset: number; length: number },
): Uint8Array {
  const cs = lay.cs;
  let incompat = 0n;
  if (o.dataFile !== undefined) incompat |= INCOMPAT_DATA_FILE;
  if (o.compressionType !== 'zlib') incompat |= INCOMPAT_COMPRESSION;
  if (o.extendedL2) incompat |= INCOMPAT_EXTL2;
  const header: Qcow2Header = {
    version: o.version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: o.clusterBits,
    size: Number(o.size),
    cryptMethod: crypto !== undefined ? CRYPT_METHOD.luks : o.encrypt?.format === 'aes' && withBacking ? CRYPT_METHOD.aes : 0,
    l1Size: lay.l1.length,
    l1TableOffset: lay.l1Offset,
    refcountTableOffset: lay.reftableOffset,
    refcountTableClusters: (lay.reftable.length * 8) / cs,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: incompat,
    compatibleFeatures: o.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n,
    autoclearFeatures: o.dataFileRaw ? AUTOCLEAR_DATA_FILE_RAW : 0n,
    refcountOrder: o.refcountOrder,
    headerLength: o.version === 3 ? V3_HEADER_LENGTH : V2_HEADER_LENGTH,
    compressionType: o.compressionType === 'zstd' ? 1 : 0,
  };
  const exts: HeaderExtension[] = [];
  if (withBacking && o.backingFormat !== undefined) exts.push({ kind: 'backing-format', name: o.backingFormat });
  if (o.dataFile !== undefined) exts.push({ kind: 'data-file', name: o.dataFile });
  if (crypto !== undefined) exts.push({ kind: 'crypto-header', ...crypto });
  // qemu omits the feature table for clusters of 4 KiB and less, to leave room for names
  if (o.version === 3 && cs > 4096) exts.push({ kind: 'feature-names', features: [...QEMU_FEATURE_NAMES] });
  const extBytes = encodeExtensions(exts);
  const buf = new Uint8Array(cs);
  const start = header.headerLength;
  const nospc = (): never => {
    throw new LimitError('No space left on device', { errno: 'ENOSPC' });
  };
  if (start + extBytes.length > cs) nospc();
  buf.set(extBytes, start);
  if (withBacking && o.backingFile !== undefined) {
    const name = new TextEncoder().encode(o.backingFile);
    const at = start + extBytes.length;
    if (cs - at < name.length) nospc();
    buf.set(name, at);
    header.backingFileOffset = at;
    header.backingFileSize = name.length;
  }
  encodeHeader(header, new DataView(buf.buffer));
  return buf;
}
