/**
 * What qemu-img's commands spell alike on their command lines: the long option entries they
 * share, error_exit's "Try --help" usage failure, and the --output human|json check. Which
 * options a command accepts, and in which order its table lists them, stays in the command.
 */
import { CliExit } from './exit.js';
import { qemuGetoptMessage, type GetoptError, type LongOption } from './getopt.js';

/** `--help`, reported as `-h`. */
export const HELP_OPTION: LongOption = { name: 'help', hasArg: false, key: 'h' };
/** `--format=fmt`, reported as `-f`. */
export const FORMAT_OPTION: LongOption = { name: 'format', hasArg: true, key: 'f' };
/** `--output=human|json`. */
export const OUTPUT_OPTION: LongOption = { name: 'output', hasArg: true, key: 'output' };
/** `--object objectdef` (tsimg needs no secrets or other objects, so commands ignore or refuse it). */
export const OBJECT_OPTION: LongOption = { name: 'object', hasArg: true, key: 'object' };
/** `--image-opts`: the filename is a set of options. */
export const IMAGE_OPTS_OPTION: LongOption = { name: 'image-opts', hasArg: false, key: 'image-opts' };
/** `--force-share`, reported as `-U`. */
export const FORCE_SHARE_OPTION: LongOption = { name: 'force-share', hasArg: false, key: 'U' };

/** `--object`, `--image-opts`, `--force-share`: in this order in most of qemu-img's tables. */
export const IMAGE_SOURCE_OPTIONS: readonly LongOption[] = [OBJECT_OPTION, IMAGE_OPTS_OPTION, FORCE_SHARE_OPTION];

/** The cache modes bdrv_parse_cache_mode takes (`-t`, `-T`). */
export const CACHE_MODES: ReadonlySet<string> = new Set(['none', 'off', 'writeback', 'writethrough', 'directsync', 'unsafe']);

/** The line qemu-img's error_exit adds after a usage error. */
export const TRY_HELP = "\nTry 'tsimg --help' for more information";

/** Usage errors end like qemu-img's error_exit: the message, then a pointer to --help (status 1). */
export function usageExit(message: string): never {
  throw new CliExit(1, message + TRY_HELP);
}

/** A getopt error in qemu-img's own wording, as a usage error. */
export function getoptExit(error: GetoptError): never {
  usageExit(qemuGetoptMessage(error));
}

/**
 * Whether `--output` asks for JSON: absent or "human" is false, "json" true, anything else
 * qemu-img's error.
 */
export function isJsonOutput(output: string | undefined): boolean {
  if (output === undefined || output === 'human') return false;
  if (output === 'json') return true;
  throw new CliExit(1, '--output must be used with human or json as argument.');
}

/** An option tsimg accepts on the command line but does not implement (`--object`), refused. */
export function notSupportedExit(key: string): never {
  throw new CliExit(1, `--${key} is not supported`);
}

/** img_open_opts' first check: with `--image-opts` the options name the format, so `-f` is refused. */
export function refuseFormatWithImageOpts(format: string | undefined): void {
  if (format !== undefined) throw new CliExit(1, '--image-opts and --format are mutually exclusive');
}

/** The one image file name info, check and map take, or their usage error. */
export function expectOneFilename(operands: readonly string[]): string {
  if (operands.length !== 1) usageExit('Expecting one image file name');
  return operands[0]!;
}
