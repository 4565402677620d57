/**
 * NBD names and block options as image locations: what location.ts asks when a name's protocol
 * is nbd's or block options name the nbd driver.
 */
import { UsageError } from '@tsimg/raw';
import { isNbdProtocol, type NbdAddress, nbdAddressFromOptions, nbdFilename, parseNbdName } from './address.js';

/** An NBD export as an image location: qemu's name for it, and its address. */
export interface NbdLocation {
  path: string;
  nbd: NbdAddress;
  /** 'nbd' when the options open the nbd driver as the top node (no format above it). */
  format?: string;
}

/** The location of an nbd filename, or undefined when `proto` is not nbd's. */
export function locateNbdName(name: string, proto: string): NbdLocation | undefined {
  if (!isNbdProtocol(proto)) return undefined;
  const nbd = parseNbdName(name);
  return { path: nbdFilename(nbd), nbd };
}

/**
 * The location of block options that name the nbd driver (`driver=nbd`, or `file.driver=nbd`
 * under a format), or undefined when they do not.
 */
export function locateNbdOptions(opts: ReadonlyMap<string, string>): NbdLocation | undefined {
  const top = opts.get('driver') === 'nbd';
  if (!top && opts.get('file.driver') !== 'nbd') return undefined;
  const own = new Map<string, string>();
  for (const [key, value] of opts) {
    if (top) {
      if (key !== 'driver') own.set(key, value);
    } else if (key.startsWith('file.')) {
      if (key !== 'file.driver') own.set(key.slice(5), value);
    } else if (key !== 'driver') {
      throw new UsageError(`Block format '${opts.get('driver') ?? ''}' does not support the option '${key}'`);
    }
  }
  const nbd = nbdAddressFromOptions(own);
  return { path: nbdFilename(nbd), nbd, format: top ? 'nbd' : opts.get('driver') };
}
