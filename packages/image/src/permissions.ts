/**
 * Which lock permissions each file of an open image takes, worked out as QEMU 7.2's block layer
 * does (block/block-backend.c blk_new_open, block.c bdrv_default_perms_for_storage / _for_cow,
 * bdrv_filter_default_perms, bdrv_child_perm's force_share): the command's open flags give the
 * permissions of the image's user (the BlockBackend), and each child — the image's file, its
 * external data file, its backing image and that image's file — derives its own from its parent.
 *
 * Checked against what qemu-img / qemu-io lock (strace of their fcntl calls and /proc/locks):
 * e.g. `qemu-img map top.qcow2` locks 100 201 203 on top.qcow2 and on its qcow2 backing file,
 * a raw backing file only 100, a data file 100 203; `convert` opens its sources with
 * BDRV_O_NO_SHARE, so there a raw source, a raw backing file and a data file lock 100 201 203.
 */
import {
  BLK_PERM_ALL, BLK_PERM_CONSISTENT_READ, BLK_PERM_RESIZE, BLK_PERM_WRITE, BLK_PERM_WRITE_UNCHANGED,
  type LockPermissions, UsageError,
} from '@tsimg/raw';

/** How a command opens an image: qemu-img's BDRV_O_* flags and its -U. */
export interface OpenFlags {
  /** BDRV_O_RDWR: the image is written (backing images never are). */
  write: boolean;
  /** BDRV_O_RESIZE: the image may change size (qemu-img resize and commit ask for it). */
  resize?: boolean;
  /** BDRV_O_NO_IO: only metadata is read (qemu-img info; create's look at its backing file). */
  noIo?: boolean;
  /** BDRV_O_NO_SHARE: others may not write while it is open (qemu-img convert's sources). */
  noShare?: boolean;
  /** qemu's force-share (-U): share every permission; read-only opens only. */
  forceShare?: boolean;
}

/** qemu's message for force-share on an image opened for writing (bdrv_open_common). */
export const FORCE_SHARE_WRITE_MESSAGE = 'force-share=on can only be used with read-only images';

/** Throws qemu's UsageError when `flags` ask to share everything while writing. */
export function checkForceShare(flags: OpenFlags): void {
  if (flags.forceShare && flags.write) throw new UsageError(FORCE_SHARE_WRITE_MESSAGE, { errno: 'EINVAL' });
}

/** What the image's user asks of the top node (blk_new_open). */
export function backendPermissions(flags: OpenFlags): LockPermissions {
  let perm = 0;
  if (!flags.noIo) perm |= BLK_PERM_CONSISTENT_READ | (flags.write ? BLK_PERM_WRITE : 0);
  if (flags.resize) perm |= BLK_PERM_RESIZE;
  const shared = flags.noShare ? BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED : BLK_PERM_ALL;
  return { perm, shared };
}

/** bdrv_filter_default_perms: a filter (the raw format over its file) passes everything on. */
export function filterPermissions(parent: LockPermissions): LockPermissions {
  return { perm: parent.perm & BLK_PERM_ALL, shared: parent.shared & BLK_PERM_ALL };
}

/**
 * bdrv_default_perms_for_storage: the file a format keeps its metadata in (`metadata`; qcow2's
 * `file` child, which also holds the data without a data file) or an external data file
 * (`metadata` false). A metadata file is written and resized whenever the node is writable,
 * read unless BDRV_O_NO_IO, and never lets others write or resize it; a data file never lets
 * others resize it and may be grown by writes past its end.
 */
export function storagePermissions(
  parent: LockPermissions,
  child: { metadata: boolean; writable: boolean; noIo?: boolean },
): LockPermissions {
  let { perm, shared } = filterPermissions(parent);
  if (child.metadata) {
    if (child.writable) perm |= BLK_PERM_WRITE | BLK_PERM_RESIZE;
    if (!child.noIo) perm |= BLK_PERM_CONSISTENT_READ;
    shared &= ~(BLK_PERM_WRITE | BLK_PERM_RESIZE);
  }
  // The data role (qcow2's file child without a data file has it too; it changes nothing there).
  shared &= ~BLK_PERM_RESIZE;
  if (perm & BLK_PERM_WRITE_UNCHANGED) perm |= BLK_PERM_WRITE;
  if (perm & BLK_PERM_WRITE) perm |= BLK_PERM_RESIZE;
  return { perm, shared };
}

/**
 * bdrv_default_perms_for_cow: a backing image is only read, consistently if the parent reads
 * so; it may be written and resized by others only when the parent lets others write.
 */
export function cowPermissions(parent: LockPermissions): LockPermissions {
  const perm = parent.perm & BLK_PERM_CONSISTENT_READ;
  const shared =
    (parent.shared & BLK_PERM_WRITE ? BLK_PERM_WRITE | BLK_PERM_RESIZE : 0) |
    BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;
  return { perm, shared };
}

/** bdrv_child_perm: a node opened with force-share (inherited by every child) shares it all. */
function forced(p: LockPermissions, forceShare: boolean | undefined): LockPermissions {
  return forceShare ? { perm: p.perm, shared: BLK_PERM_ALL } : p;
}

/**
 * One format node of an open image: the permissions its parent asks of it, whether it is
 * written, and the inherited flags. Derive its children's permissions with the functions below.
 */
export interface NodePermissions {
  /** What the node's parents ask of it (the user's for the top image, cow for a backing one). */
  readonly node: LockPermissions;
  readonly writable: boolean;
  readonly noIo: boolean;
  readonly forceShare: boolean;
}

/** Locks nothing and tests nothing: what a file holds until its format is known. */
export const NO_PERMISSIONS: LockPermissions = { perm: 0, shared: BLK_PERM_ALL };

/** The top image's node, for a command's open flags. */
export function topNodePermissions(flags: OpenFlags): NodePermissions {
  checkForceShare(flags);
  return {
    node: backendPermissions(flags),
    writable: flags.write,
    noIo: flags.noIo ?? false,
    forceShare: flags.forceShare ?? false,
  };
}

/** What the file holding node `n` takes: raw passes through, other formats keep metadata in it. */
export function imageFileLock(n: NodePermissions, format: string): LockPermissions {
  const p = format === 'raw' ? filterPermissions(n.node) : storagePermissions(n.node, { metadata: true, writable: n.writable, noIo: n.noIo });
  return forced(p, n.forceShare);
}

/** What an external data file of node `n` takes (qcow2's data-file child). */
export function dataFileLock(n: NodePermissions): LockPermissions {
  return forced(storagePermissions(n.node, { metadata: false, writable: n.writable, noIo: n.noIo }), n.forceShare);
}

/** The backing image's node of node `n`: read-only, with qemu's cow permissions. */
export function backingNodePermissions(n: NodePermissions): NodePermissions {
  // BDRV_O_NO_IO stays on a cow child (bdrv_inherited_options clears it for metadata only).
  return { node: forced(cowPermissions(n.node), n.forceShare), writable: false, noIo: n.noIo, forceShare: n.forceShare };
}

/**
 * The permissions a node's children get while it is being opened: qemu attaches them before
 * the image's user attaches to the node, so they are derived from a node nobody uses yet (a
 * qcow2 file already takes its metadata permissions; a data file only refuses resizes). The
 * first conflict qemu reports is often found here, hence its message.
 */
export function openingPermissions(perms: NodePermissions): NodePermissions {
  return { ...perms, node: NO_PERMISSIONS };
}
