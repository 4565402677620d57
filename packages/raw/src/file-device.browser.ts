/**
 * The browser build's stand-in for file-device.ts (the build picks `*.browser.ts` over a module
 * of the same name): a page has no host files, so opening one fails with a clear error; images
 * there are opened from a BlobDevice, an HttpDevice or a MemoryDevice instead.
 */
import { UnsupportedError } from './errors.js';
import type { FileDeviceOptions } from './file-device-options.js';
import type { LockPermissions } from './lock.js';

export type { FileDeviceOptions, FileLockState } from './file-device-options.js';

/** Host file locks: none in a browser. */
export function lockingAvailable(): boolean {
  return false;
}

/** Host files: refused in a browser. */
export class FileDevice {
  static async open(path: string, _options: FileDeviceOptions = {}): Promise<never> {
    throw new UnsupportedError(`Could not open '${path}': host files are not available in a browser (open a File or a URL)`);
  }
  static async remove(path: string): Promise<never> {
    throw new UnsupportedError(`Could not remove '${path}': host files are not available in a browser`);
  }
  static async sameFile(_a: string, _b: string): Promise<boolean> {
    return false;
  }
  setPermissions(_permissions: LockPermissions): boolean {
    return false;
  }
}
