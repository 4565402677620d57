/**
 * Format probing as qemu's drivers claim an image: the registered formats first (qcow2 by its
 * magic and a version of 2 or more), then the magics of formats tsimg does not handle (reported
 * as unsupported rather than shown as raw), else raw.
 */
import { DEFAULT_FORMATS } from './formats.js';
import type { ImageFormat } from './image.js';

/** Formats qemu knows but tsimg does not handle (recognised so they are not shown as raw). */
export const FOREIGN_FORMATS = new Set([
  'qcow', 'qed', 'vmdk', 'vdi', 'vpc', 'vhdx', 'parallels', 'bochs', 'cloop', 'dmg', 'vvfat', 'file',
  'host_device', 'nbd', 'ssh', 'http', 'https', 'blkdebug', 'null-co', 'throttle', 'copy-on-read', 'quorum',
]);

function bytesEqual(a: Uint8Array, offset: number, s: string): boolean {
  if (offset + s.length > a.length) return false;
  for (let i = 0; i < s.length; i++) if (a[offset + i] !== s.charCodeAt(i)) return false;
  return true;
}

/** qcow (version 1) shares qcow2's magic. */
const QCOW_MAGIC = 0x514649fb;

/**
 * The format whose driver would claim an image starting with `first` (at least the first
 * 2 KiB, or the whole file): one of `formats` (default: tsimg's), else the name of a format
 * tsimg does not handle, else raw.
 */
export function probeFormat(first: Uint8Array, formats: readonly ImageFormat[] = DEFAULT_FORMATS): string {
  for (const f of formats) if (f.probe?.(first)) return f.name;
  const v = new DataView(first.buffer, first.byteOffset, first.byteLength);
  if (first.length >= 8 && v.getUint32(0) === QCOW_MAGIC && v.getUint32(4) === 1) return 'qcow';
  if (bytesEqual(first, 0, 'QED\0')) return 'qed';
  if (bytesEqual(first, 0, 'KDMV') || bytesEqual(first, 0, 'COWD') || bytesEqual(first, 0, '# Disk DescriptorFile')) return 'vmdk';
  if (first.length >= 0x44 && v.getUint32(0x40, true) === 0xbeda107f) return 'vdi';
  if (bytesEqual(first, 0, 'conectix')) return 'vpc';
  if (bytesEqual(first, 0, 'vhdxfile')) return 'vhdx';
  if (bytesEqual(first, 0, 'LUKS\xba\xbe')) return 'luks';
  if (bytesEqual(first, 0, 'WithoutFreeSpace') || bytesEqual(first, 0, 'WithouFreSpacExt')) return 'parallels';
  if (bytesEqual(first, 0, 'Bochs Virtual HD Image')) return 'bochs';
  return 'raw';
}
