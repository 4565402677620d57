/**
 * `tsimg info [-f fmt] [--output=human|json] [--backing-chain] [--image-opts] [-U] [--object ...]
 * filename` — qemu-img 7.2's img_info: same options, same text and JSON, same messages and exit
 * statuses. The gathering lives in @tsimg/image (info.ts); the printing in ../info-output.ts.
 */
import { TsimgError } from '@tsimg/raw';
import { lockWarnings } from '../lock-messages.js';
import { collectImageInfoList, type ImageInfo, locateImage, locateImageFromOptions } from '@tsimg/image';
import { type QValue, toQemuJsonLine } from '../qobject-output.js';
import type { CliIO, CommandRunner } from '../command.js';
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
} from '../info-output.js';
import { splitImageOpts } from '../image-opts.js';
import { addObject } from '../object-option.js';

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

/** Prints an error with qemu's optional hint line and turns it into exit status 1. */
function reportError(err: unknown, io: CliIO): number {
  if (!(err instanceof TsimgError)) throw err;
  io.stderr(`tsimg: ${err.message}\n`);
  const hint = (err as { hint?: unknown }).hint;
  if (typeof hint === 'string') io.stderr(`${hint}\n`);
  return 1;
}

/**
 * bdrv_refresh_filename for an image opened with its key secret: the secret is a strong
 * runtime option of qcow2 (`encrypt.key-secret`) and luks (`key-secret`), so qemu names the
 * image by a json: filename of its options; undefined when no key secret was given.
 */
function keySecretName(blockOptions: ReadonlyMap<string, string> | undefined, name: string, info: ImageInfo): string | undefined {
  let loc;
  try {
    loc = blockOptions !== undefined ? locateImageFromOptions(blockOptions) : name.startsWith('json:') ? locateImage(name) : undefined;
  } catch {
    return undefined;
  }
  if (loc?.keySecret === undefined || loc.backingKeySecrets !== undefined) return undefined;
  const key = info.format === 'luks' ? 'key-secret' : 'encrypt.key-secret';
  const dict: Record<string, QValue> = { driver: info.format, [key]: loc.keySecret, file: { driver: 'file', filename: loc.path } };
  return `json:${toQemuJsonLine(dict)}`;
}

export const run: CommandRunner = async (argv, io) => {
  const parsed = getoptLong(argv, ':f:hU', LONG_OPTIONS, 'info');
  if (parsed.error) getoptExit(parsed.error);
  let format: string | undefined;
  let output: string | undefined;
  let chain = false;
  let imageOpts = false;
  let forceShare = false;
  const secrets = new Map<string, Uint8Array>();
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
      case 'object':
        addObject(o.value!, secrets);
        break;
      default:
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
      secrets,
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
  const named = keySecretName(imageOpts ? splitImageOpts(filename) : undefined, filename, list[0]!);
  if (named !== undefined) list[0] = { ...list[0]!, filename: named };
  if (json) {
    io.stdout(chain ? formatImageInfoListJson(list) : formatImageInfoJson(list[0]!));
  } else {
    io.stdout(formatImageInfoListHuman(list));
  }
  return 0;
};
