/**
 * `--image-opts` filenames: the option string qemu parses with QemuOpts
 * (`driver=qcow2,file.filename=x`), split into its keys and resolved to a host file and a format.
 * Shared by every command that takes `--image-opts`.
 */
import { type HttpLocation, locateImageFromOptions, QEMU_FORMATS } from '@tsimg/image';
import type { LockingMode } from '@tsimg/raw';
import { CliExit } from './exit.js';

/**
 * Splits `--image-opts` text the way QemuOpts does: comma-separated `key=value` pairs, ",," for
 * a literal comma, a bare first element meaning `file=<it>` (the implied option) and any other
 * bare key meaning `key=on`.
 */
export function splitImageOpts(text: string): Map<string, string> {
  const opts = new Map<string, string>();
  let i = 0;
  let first = true;
  while (i < text.length) {
    let part = '';
    while (i < text.length) {
      if (text[i] === ',') {
        if (text[i + 1] === ',') {
          part += ',';
          i += 2;
          continue;
        }
        break;
      }
      part += text[i++];
    }
    i++;
    const eq = part.indexOf('=');
    if (eq >= 0) opts.set(part.slice(0, eq), part.slice(eq + 1));
    else if (first) opts.set('file', part);
    else if (part !== '') opts.set(part, 'on');
    first = false;
  }
  return opts;
}

/**
 * `--image-opts` text resolved to a host file and a format (as other commands use it), with
 * qemu's "Could not open '<text>': ..." message when the options name no usable file.
 */
export function parseImageOpts(text: string): {
  format?: string; filename: string; locking?: LockingMode; protocol?: boolean; http?: HttpLocation; keySecret?: string; backingKeySecrets?: (string | undefined)[];
} {
  const opts = splitImageOpts(text);
  const driver = opts.get('driver');
  // bdrv_open looks the driver up before it looks at any other option.
  if (driver !== undefined && !QEMU_FORMATS.has(driver)) throw new CliExit(1, `Could not open '${text}': Unknown driver '${driver}'`);
  try {
    const loc = locateImageFromOptions(opts);
    // An NBD export's `filename` is its nbd:// name, parsed again as such (protocol).
    return {
      format: loc.format, filename: loc.path, locking: loc.locking, protocol: loc.nbd !== undefined, http: loc.http,
      keySecret: loc.keySecret, backingKeySecrets: loc.backingKeySecrets,
    };
  } catch (err) {
    throw new CliExit(1, `Could not open '${text}': ${err instanceof Error ? err.message : String(err)}`);
  }
}
