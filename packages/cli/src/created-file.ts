/**
 * A target file a command makes itself, to be removed again when the command does not finish —
 * tsimg's one departure from qemu-img 7.2 on failure (issue 11): qemu-img convert leaves a
 * partial target behind, which later passes for a complete image.
 */
import fs from 'node:fs';

/**
 * The file at `path` as seen before a command creates it. Only a name that did not exist is
 * ever removed: a file that was there before (overwritten as qemu-img overwrites it), a block
 * device, and a symbolic link's target are left alone.
 */
export class CreatedFile {
  readonly path: string;
  #existed: boolean;
  #id: string | undefined;

  private constructor(path: string, existed: boolean) {
    this.path = path;
    this.#existed = existed;
  }

  /** Notes whether `path` exists now, before the command creates it. */
  static async before(path: string): Promise<CreatedFile> {
    const existed = await fs.promises.lstat(path).then(
      () => true,
      () => false,
    );
    return new CreatedFile(path, existed);
  }

  /** Records the file the command has just created (its device and inode), if it is new. */
  async created(): Promise<void> {
    if (this.#existed) return;
    const st = await fs.promises.stat(this.path).catch(() => undefined);
    if (st?.isFile()) this.#id = `${st.dev}:${st.ino}`;
  }

  /**
   * Removes the file if this command created it (also when creating it failed half-way) and the
   * name still names it; never throws (the command's own error is what the user needs to see).
   */
  async remove(): Promise<boolean> {
    if (this.#existed) return false;
    this.#existed = true; // once
    const st = await fs.promises.lstat(this.path).catch(() => undefined);
    if (!st?.isFile() || (this.#id !== undefined && `${st.dev}:${st.ino}` !== this.#id)) return false;
    return fs.promises.unlink(this.path).then(
      () => true,
      () => false,
    );
  }
}
