/**
 * `tsimg checksum [-f fmt] [-p] [--progress=json] [--image-opts] [--object objectdef]
 * [-T src_cache] [-U] filename`: the blkhash digest of the image's guest bytes (checksumImage
 * of @tsimg/image), printed as blksum prints it: `<hex>  <filename>`. Not a qemu-img 7.2
 * command; its options and messages follow qemu-img's other read-only commands.
 */
import { checksumImage } from '@tsimg/image';
import { errorMessage } from '../exit.js';
import { getoptLong } from '../getopt.js';
import {
  CACHE_MODES, expectOneFilename, FORMAT_OPTION, getoptExit, HELP_OPTION, IMAGE_SOURCE_OPTIONS, usageExit,
} from '../command-options.js';
import { corruptionLine, openCommandImage as openImage } from '../image-open.js';
import type { CommandRunner } from '../command.js';
import { lockHint, lockWarnings } from '../lock-messages.js';
import { createProgress, PROGRESS_OPTION, progressMode } from '../progress.js';

const LONG = [HELP_OPTION, FORMAT_OPTION, PROGRESS_OPTION, ...IMAGE_SOURCE_OPTIONS];
const USAGE =
  'usage: tsimg checksum [--object objectdef] [--image-opts] [-f fmt] [-T src_cache] [-p] [--progress=json] [-U] filename\n';

export const run: CommandRunner = async (argv, io) => {
  const parsed = getoptLong(argv, ':hf:T:pU', LONG, 'checksum');
  if (parsed.error) getoptExit(parsed.error);
  let format: string | undefined;
  let cache = 'writeback';
  let text = false;
  let json = false;
  let imageOpts = false;
  let forceShare = false;
  for (const { key, value } of parsed.options) {
    switch (key) {
      case 'h':
        io.stdout(USAGE);
        return 0;
      case 'f':
        format = value;
        break;
      case 'T':
        cache = value!;
        break;
      case 'p':
        text = true;
        break;
      case 'progress':
        if (progressMode(value) === 'json') json = true;
        else text = true;
        break;
      case 'U':
        forceShare = true;
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'object':
        break; // checksum needs no secrets
      default:
        usageExit(`unknown option ${key}`);
    }
  }
  const filename = expectOneFilename(parsed.operands);
  if (!CACHE_MODES.has(cache)) {
    io.stderr(`tsimg: Invalid source cache option: ${cache}\n`);
    return 1;
  }
  let image;
  try {
    image = await openImage(filename, { format, readOnly: true, imageOpts, forceShare, onWarning: lockWarnings(io, false) });
  } catch (err) {
    io.stderr(`tsimg: ${errorMessage(err)}${lockHint(err)}\n`);
    return 1;
  }
  const progress = createProgress(io, text, 1.0, { json });
  try {
    progress.setTotal(image.size());
    progress.print(0, 100);
    const hex = await checksumImage(image, {
      onProgress: (done, total) => progress.print(Math.fround(Math.fround(done / total) * 100), 0),
    });
    progress.print(100, 0);
    progress.end();
    io.stdout(`${hex}  ${filename}\n`);
    return 0;
  } catch (err) {
    progress.end();
    io.stderr(corruptionLine(err) ?? '');
    io.stderr(`tsimg: Error while computing the checksum of ${filename}: ${errorMessage(err)}\n`);
    return 1;
  } finally {
    await image.close();
  }
};
