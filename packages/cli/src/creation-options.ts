/**
 * The command-line side of image creation (create, convert, measure): the target format looked
 * up among the formats @tsimg/image creates, `-o` parsed against its options plus the file
 * protocol's, qemu-img's print_block_option_help over them, and the creation with qemu's lines.
 */
import {
  type CreatableFormat, createImage, DEFAULT_FORMATS, FILE_OPTS, findCreatableFormat, mergeOptDescs, optionHelpLines, protocolPath, QemuOpts,
  uncreatableFormatMessage,
} from '@tsimg/image';
import type { Secrets } from '@tsimg/qcow2';
import type { CliIO } from './command.js';
import { lockWarnings } from './lock-messages.js';

/** The format `-f` / `-O` names, if tsimg creates it. */
export function creatableFormat(name: string): CreatableFormat | undefined {
  return findCreatableFormat(DEFAULT_FORMATS, name);
}

/** Empty QemuOpts for the format's creation options merged with the file protocol's. */
export function creationOpts(format: CreatableFormat): QemuOpts {
  return new QemuOpts(mergeOptDescs(format.creation.options, FILE_OPTS));
}

/** qemu-img's print_block_option_help. */
export function printOptionHelp(io: CliIO, filename: string | undefined, fmt: string): number {
  const format = creatableFormat(fmt);
  if (!format) {
    io.stderr(`tsimg: ${uncreatableFormatMessage(fmt)}\n`);
    return 1;
  }
  const descs = format.creation.options;
  if (filename !== undefined) {
    protocolPath(filename);
    io.stdout(`Supported options:\n${optionHelpLines(mergeOptDescs(descs, FILE_OPTS))}`);
  } else {
    io.stdout(
      `Supported ${fmt} options:\n${optionHelpLines(descs)}\n` +
        'The protocol level may support further options.\n' +
        'Specify the target filename to include those options.\n',
    );
  }
  return 0;
}

/**
 * Creates `format`'s image at `filename` from `opts` (createImage of @tsimg/image), with the
 * lock warnings and qemu's error_report lines on stderr.
 */
export function createImageFile(format: CreatableFormat, filename: string, opts: QemuOpts, secrets: Secrets, io: CliIO): Promise<void> {
  return createImage(format, filename, opts, { secrets, onWarning: lockWarnings(io, true), report: (line) => io.stderr(`tsimg: ${line}\n`) });
}
