/**
 * `tsimg compare`: whether two images have the same contents, with qemu-img 7.2's messages and
 * exit statuses (qemu-img.c img_compare): 0 identical, 1 different, 2 an image could not be
 * opened, 3 block status failed, 4 a read failed. The loop is `compareImages` of @tsimg/qcow2.
 */
import { compareImages } from '@tsimg/image';
import { strerror, TsimgError } from '@tsimg/raw';
import { errorMessage } from '../exit.js';
import { getoptLong } from '../getopt.js';
import { CACHE_MODES, getoptExit, HELP_OPTION, IMAGE_SOURCE_OPTIONS, notSupportedExit, usageExit } from '../command-options.js';
import { corruptionLine, openCommandImage as openImage } from '../image-open.js';
import type { CommandRunner } from '../command.js';
import { lockHint, lockWarnings } from '../lock-messages.js';
import { createProgress, PROGRESS_OPTION, progressMode } from '../progress.js';
import { addObject } from '../object-option.js';

const LONG = [HELP_OPTION, ...IMAGE_SOURCE_OPTIONS, PROGRESS_OPTION];


/** The strerror text qemu prints for a failed read. */
function readErrorText(cause: unknown): string {
  if (cause instanceof TsimgError && cause.errno !== undefined) return strerror(cause.errno);
  const code = (cause as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) return strerror(code);
  return errorMessage(cause);
}

export const run: CommandRunner = async (argv, io) => {
  const parsed = getoptLong(argv, ':hf:F:T:pqsU', LONG, 'compare');
  if (parsed.error) getoptExit(parsed.error);
  let fmt1: string | undefined;
  let fmt2: string | undefined;
  let cache = 'writeback';
  let progressWanted = false;
  let jsonProgress = false;
  let quiet = false;
  let strict = false;
  let imageOpts = false;
  const secrets = new Map<string, Uint8Array>();
  let forceShare = false;
  for (const { key, value } of parsed.options) {
    switch (key) {
      case 'h':
        io.stdout('usage: tsimg compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2\n');
        return 0;
      case 'f':
        fmt1 = value;
        break;
      case 'F':
        fmt2 = value;
        break;
      case 'T':
        cache = value!;
        break;
      case 'p':
        progressWanted = true;
        break;
      case 'progress':
        if (progressMode(value) === 'json') jsonProgress = true;
        else progressWanted = true;
        break;
      case 'q':
        quiet = true;
        break;
      case 's':
        strict = true;
        break;
      case 'U':
        forceShare = true;
        break;
      case 'object':
        addObject(value!, secrets, 2); // img_compare exits with 2 here
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      default:
        notSupportedExit(key);
    }
  }
  if (parsed.operands.length !== 2) usageExit('Expecting two image file names');
  const [filename1, filename2] = parsed.operands as [string, string];
  const say = (text: string): void => {
    if (!quiet) io.stdout(text);
  };
  const progress = createProgress(io, progressWanted && !quiet, 2.0, { json: jsonProgress });
  try {
    if (!CACHE_MODES.has(cache)) {
      io.stderr(`tsimg: Invalid source cache option: ${cache}\n`);
      return 2;
    }
    const open = async (name: string, format?: string) => {
      try {
        return await openImage(name, { format, readOnly: true, imageOpts, forceShare, secrets, onWarning: lockWarnings(io, false) });
      } catch (err) {
        io.stderr(`tsimg: ${errorMessage(err)}${lockHint(err)}\n`);
        return undefined;
      }
    };
    const image1 = await open(filename1, fmt1);
    if (!image1) return 2;
    try {
      const image2 = await open(filename2, fmt2);
      if (!image2) return 2;
      try {
        progress.print(0, 100);
        const result = await compareImages(image1, image2, {
          strict,
          onProgress: (bytes, base) => progress.advance(bytes, base),
          onSizeMismatch: () => say('Warning: Image size mismatch!\n'),
        });
        const names = { 1: filename1, 2: filename2 } as const;
        switch (result.kind) {
          case 'identical':
            say('Images are identical.\n');
            return 0;
          case 'strict-size':
            say('Strict mode: Image size mismatch!\n');
            return 1;
          case 'strict-status':
            say(`Strict mode: Offset ${result.offset} block status mismatch!\n`);
            return 1;
          case 'content':
            say(`Content mismatch at offset ${result.offset}!\n`);
            return 1;
          case 'status-error':
            io.stderr(corruptionLine(result.cause) ?? '');
            io.stderr(`tsimg: Sector allocation test failed for ${names[result.side]}\n`);
            return 3;
          case 'read-error':
            io.stderr(corruptionLine(result.cause) ?? '');
            io.stderr(
              `tsimg: Error while reading offset ${result.offset} of ${names[result.side]}: ${readErrorText(result.cause)}\n`,
            );
            return 4;
        }
      } finally {
        await image2.close();
      }
    } finally {
      await image1.close();
    }
  } finally {
    progress.end();
  }
};
