/**
 * `tsimg info [-f fmt] [--output=human|json] [--backing-chain] [--image-opts] [-U] [--object ...]
 * filename` — qemu-img 7.2's img_info: same options, same text and JSON, same messages and exit
 * statuses. The gathering lives in @tsimg/qcow2 (info.ts); the printing in ../format-info.ts.
 */
import { type LockingMode, TsimgError } from '@tsimg/raw';
import { lockWarnings } from '../lock-messages.js';
import { collectImageInfoList, locateImageFromOptions, type ImageInfo } from '@tsimg/image';
import type { CliIO, CommandRunner } from '../main.js';
import { CliExit } from '../exit.js';
import { getoptLong, type LongOption } from '../getopt.js';
import {
  expectOneFilename,
  FORMAT_OPTION,
  getoptExit,
  HELP_OPTION,
  IMAGE_SOURCE_OPTIONS,
  isJsonOutput,
  OUTPUT_OPTION,
  refuseFormatWithImageOpts,
} from '../command-options.js';
import {
  formatImageInfoJson,
  formatImageInfoListHuman,
  formatImageInfoListJson,
} from '../format-info.js';

const LONG_OPTIONS: readonly LongOption[] = [
  HELP_OPTION,
  FORMAT_OPTION,
  OUTPUT_OPTION,
  { name: 'backing-chain', hasArg: false, key: 'backing-chain' },
  ...IMAGE_SOURCE_OPTIONS,
];

const HELP =
  'usage: tsimg info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename\n\n' +
  "  '-f fmt' is the image format (probed when absent: qcow2 by its magic, else raw)\n" +
  "  '--output' takes 'human' (default) or 'json'\n" +
  "  '--backing-chain' reports every image of the backing chain\n" +
  "  '--image-opts' treats filename as a set of options (driver=qcow2,file.filename=x)\n" +
  "  '-U' opens the image in shared mode (tsimg takes no locks, so it is accepted and has no effect)\n";

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
export function parseImageOpts(text: string): { format?: string; filename: string; locking?: LockingMode } {
  try {
    const loc = locateImageFromOptions(splitImageOpts(text));
    return { format: loc.format, filename: loc.path, locking: loc.locking };
  } catch (err) {
    throw new CliExit(1, `Could not open '${text}': ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** Prints an error with qemu's optional hint line and turns it into exit status 1. */
function reportError(err: unknown, io: CliIO): number {
  if (!(err instanceof TsimgError)) throw err;
  io.stderr(`tsimg: ${err.message}\n`);
  const hint = (err as { hint?: unknown }).hint;
  if (typeof hint === 'string') io.stderr(`${hint}\n`);
  return 1;
}

export const run: CommandRunner = async (argv, io) => {
  const parsed = getoptLong(argv, ':f:hU', LONG_OPTIONS);
  if (parsed.error) getoptExit(parsed.error);
  let format: string | undefined;
  let output: string | undefined;
  let chain = false;
  let imageOpts = false;
  let forceShare = false;
  for (const o of parsed.options) {
    switch (o.key) {
      case 'h':
        io.stdout(HELP);
        return 0;
      case 'f':
        format = o.value;
        break;
      case 'output':
        output = o.value;
        break;
      case 'backing-chain':
        chain = true;
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'U':
        forceShare = true;
        break;
      default:
        // --object: info needs no secrets (it never decrypts).
        break;
    }
  }
  const filename = expectOneFilename(parsed.operands);
  const json = isJsonOutput(output);
  if (imageOpts) refuseFormatWithImageOpts(format);

  let list: ImageInfo[];
  try {
    list = await collectImageInfoList(filename, {
      format,
      blockOptions: imageOpts ? splitImageOpts(filename) : undefined,
      chain,
      forceShare,
      onWarning: lockWarnings(io, false),
      onWarnings: (warnings) => {
        for (const w of warnings) io.stderr(`tsimg: ${w}\n`);
        // qemu follows the bitmap warning with this line, without a newline of its own.
        if (warnings.some((w) => w.includes('bitmap'))) {
          io.stderr("Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.");
        }
      },
    });
  } catch (err) {
    return reportError(err, io);
  }
  if (json) {
    io.stdout(chain ? formatImageInfoListJson(list) : formatImageInfoJson(list[0]!));
  } else {
    io.stdout(formatImageInfoListHuman(list));
  }
  return 0;
};
