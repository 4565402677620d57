/** Image names as qemu treats them: protocol prefixes and names relative to another image. */

/** qemu's path_has_protocol: a ':' before any '/'. */
export function pathHasProtocol(path: string): boolean {
  const m = /[:/]/.exec(path);
  return m !== null && m[0] === ':';
}

/**
 * qemu's bdrv_get_full_backing_filename_from_filename: an absolute or protocol name as is,
 * else relative to the directory of `backed`; undefined when that cannot be determined
 * (a `json:` filename).
 */
export function fullBackingFilename(backed: string, backing: string): string | undefined {
  if (backing === '') return undefined;
  if (pathHasProtocol(backing) || backing.startsWith('/')) return backing;
  if (backed === '' || backed.startsWith('json:')) return undefined;
  // path_combine: keep base up to its last '/', or up to its protocol prefix "proto:" (a
  // colon after a '/' is part of a file name).
  let prefix = pathHasProtocol(backed) ? backed.indexOf(':') + 1 : 0;
  const slash = backed.lastIndexOf('/');
  if (slash + 1 > prefix) prefix = slash + 1;
  return backed.slice(0, prefix) + backing;
}

/**
 * The file a name stored in an image refers to (a backing file): qemu's combination of the
 * two names, and the name as it is where no directory can be taken from the image's name.
 */
export function resolveRelative(imageFilename: string, name: string): string {
  return fullBackingFilename(imageFilename, name) ?? name;
}
