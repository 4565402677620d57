/**
 * `tsimg map`: the image's extents as qemu-img 7.2 prints them (qemu-img.c img_map,
 * dump_map_entry), over the generic walker `mapImage` of @tsimg/image.
 */
import { mapImage, type MapEntry } from '@tsimg/image';
import { strerror, TsimgError } from '@tsimg/raw';
import { CliExit } from '../exit.js';
import { getoptLong } from '../getopt.js';
import {
  expectOneFilename,
  FORMAT_OPTION,
  getoptExit,
  HELP_OPTION,
  IMAGE_SOURCE_OPTIONS,
  isJsonOutput,
  notSupportedExit,
  OUTPUT_OPTION,
} from '../command-options.js';
import { cvtnum } from '../options.js';
import { corruptionLine, openCommandImage as openImage } from '../image-open.js';
import type { CommandRunner } from '../command.js';
import { lockWarnings } from '../lock-messages.js';
import { addObject } from '../object-option.js';

const LONG = [
  HELP_OPTION,
  FORMAT_OPTION,
  OUTPUT_OPTION,
  ...IMAGE_SOURCE_OPTIONS,
  { name: 'start-offset', hasArg: true, key: 's' },
  { name: 'max-length', hasArg: true, key: 'l' },
];

/** `%#-16lx`: "0x…" (plain "0" for zero), left-justified in 16 columns. */
function hex16(n: number): string {
  return (n === 0 ? '0' : `0x${n.toString(16)}`).padEnd(16, ' ');
}

function jsonEntry(e: MapEntry): string {
  let s =
    `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth},` +
    ` "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}`;
  if (e.offset !== undefined) s += `, "offset": ${e.offset}`;
  return `${s}}`;
}

export const run: CommandRunner = async (argv, io) => {
  const parsed = getoptLong(argv, ':hf:s:l:U', LONG, 'map');
  if (parsed.error) getoptExit(parsed.error);
  let format: string | undefined;
  let output: string | undefined;
  let imageOpts = false;
  const secrets = new Map<string, Uint8Array>();
  let forceShare = false;
  let startOffset = 0;
  let maxLength: number | undefined;
  for (const { key, value } of parsed.options) {
    switch (key) {
      case 'h':
        io.stdout('usage: tsimg map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename\n');
        return 0;
      case 'f':
        format = value;
        break;
      case 'output':
        output = value;
        break;
      case 's':
        startOffset = Number(cvtnum('start offset', value!));
        break;
      case 'l':
        maxLength = Number(cvtnum('max length', value!));
        break;
      case 'U':
        forceShare = true;
        break;
      case 'object':
        addObject(value!, secrets);
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      default:
        notSupportedExit(key);
    }
  }
  const filename = expectOneFilename(parsed.operands);
  const json = isJsonOutput(output);

  const image = await openImage(filename, { format, readOnly: true, imageOpts, forceShare, secrets, onWarning: lockWarnings(io, false) });
  try {
    // Lines are collected and written in batches: one write per entry is slow for big maps.
    let out = json ? '[' : `${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`;
    const flush = (): void => {
      if (out) io.stdout(out);
      out = '';
    };
    let prev: MapEntry | undefined;
    const emit = (e: MapEntry, last: boolean): void => {
      if (json) {
        out += jsonEntry(e) + (last ? '' : ',\n');
      } else {
        if (e.data && e.offset === undefined) {
          flush();
          throw new CliExit(1, 'File contains external, encrypted or compressed clusters.');
        }
        if (e.data && !e.zero) out += `${hex16(e.start)}${hex16(e.length)}${hex16(e.offset ?? 0)}${e.filename ?? ''}\n`;
      }
      if (out.length > 1 << 16) flush();
    };
    // qemu dumps an entry once the next one is known, so only the last is dumped "without next".
    try {
      for await (const e of mapImage(image, { startOffset, maxLength, coalesceZeroes: !json })) {
        if (prev) emit(prev, false);
        prev = { ...e };
      }
    } catch (err) {
      if (err instanceof CliExit) throw err;
      // mapImage yielded `prev` once the entry after it was known: qemu dumped it then (with the
      // separator), before the query that failed.
      if (prev) emit(prev, false);
      flush(); // what qemu printed before the failing query stays printed
      const corrupt = corruptionLine(err);
      if (corrupt) io.stderr(corrupt);
      const errno = err instanceof TsimgError && err.errno !== undefined ? err.errno : 'EIO';
      throw new CliExit(1, `Could not read file metadata: ${strerror(errno)}`);
    }
    if (prev) emit(prev, true);
    if (json) out += ']\n';
    flush();
  } finally {
    await image.close();
  }
  return 0;
};
