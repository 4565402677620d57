/**
 * The block drivers qemu-img 7.2 knows, and which of them create images: what lets tsimg answer
 * like qemu for a format it does not implement ("Unknown driver 'foo'" for a name qemu does not
 * know either, "does not support image creation" for one qemu cannot create, "not supported by
 * tsimg" for the rest).
 */

/** Every format qemu-img 7.2 lists under "Supported formats" (`qemu-img --help`). */
export const QEMU_FORMATS: ReadonlySet<string> = new Set(
  ('blkdebug blklogwrites blkverify bochs cloop compress copy-before-write copy-on-read dmg file ftp ftps ' +
    'gluster host_cdrom host_device http https iscsi iser luks nbd nfs null-aio null-co nvme parallels ' +
    'preallocate qcow qcow2 qed quorum raw rbd replication snapshot-access ssh throttle vdi vhdx vmdk vpc vvfat').split(' '),
);

/** The formats of {@link QEMU_FORMATS} that qemu can create images of (tsimg creates raw, qcow2 and file). */
export const QEMU_CREATABLE: ReadonlySet<string> = new Set(
  'file gluster host_cdrom host_device iscsi iser luks nbd nfs nvme parallels qcow qcow2 qed raw rbd ssh vdi vhdx vmdk vpc'.split(' '),
);

/** The values QAPI's BlockdevDriver takes (what `backing_fmt` is checked against). */
export const BLOCKDEV_DRIVERS: ReadonlySet<string> = new Set([...QEMU_FORMATS, 'blkreplay']);

/**
 * qemu's answer for a target format tsimg cannot create: unknown to qemu, known but not
 * creatable, or creatable by qemu but not by tsimg.
 */
export function uncreatableFormatMessage(fmt: string): string {
  if (!QEMU_FORMATS.has(fmt)) return `Unknown file format '${fmt}'`;
  if (!QEMU_CREATABLE.has(fmt)) return `Format driver '${fmt}' does not support image creation`;
  return `Format '${fmt}' is not supported by tsimg (raw and qcow2 are)`;
}
