/**
 * Opening the images named on a command line: `-f` names are checked against qemu-img 7.2's
 * format list first, so an unknown name reads like qemu's ("Unknown driver 'foo'") and a format
 * qemu knows but tsimg does not handle says so, before @tsimg/qcow2's `openImage` runs.
 */
import { openImage, type Image } from '@tsimg/qcow2';
import { TsimgError, UnsupportedError } from '@tsimg/raw';

/** Every format qemu-img 7.2 lists under "Supported formats". */
export const QEMU_FORMATS: readonly string[] = [
  'blkdebug', 'blklogwrites', 'blkverify', 'bochs', 'cloop', 'compress', 'copy-before-write',
  'copy-on-read', 'dmg', 'file', 'ftp', 'ftps', 'gluster', 'host_cdrom', 'host_device', 'http',
  'https', 'iscsi', 'iser', 'luks', 'nbd', 'nfs', 'null-aio', 'null-co', 'nvme', 'parallels',
  'preallocate', 'qcow', 'qcow2', 'qed', 'quorum', 'raw', 'rbd', 'replication', 'snapshot-access',
  'ssh', 'throttle', 'vdi', 'vhdx', 'vmdk', 'vpc', 'vvfat',
];

/** Opens `filename` (read-only unless asked) with an optional `-f` format name. */
export async function openCommandImage(
  filename: string,
  options: { format?: string; readOnly?: boolean } = {},
): Promise<Image> {
  const format = options.format;
  if (format !== undefined && format !== 'raw' && format !== 'qcow2') {
    if (!QEMU_FORMATS.includes(format)) {
      throw new TsimgError('usage', `Could not open '${filename}': Unknown driver '${format}'`, { errno: 'EINVAL' });
    }
    throw new UnsupportedError(`Could not open '${filename}': tsimg does not support the '${format}' format`);
  }
  return openImage(filename, { format, readOnly: options.readOnly ?? true });
}
