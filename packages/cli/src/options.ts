/**
 * The command-line side of qemu's option parsing: qemu-img's `cvtnum` for size arguments and
 * `accumulate_options` for repeated `-o`, which end the command with qemu's messages. The
 * QemuOpts parser itself (`-o` lists against a format's option table, sizes, the help table)
 * is @tsimg/image's, re-exported here for the commands.
 */
import { isValidOptionList, strtosz } from '@tsimg/image';
import { CliExit } from './exit.js';

export {
  hasHelpOption, isValidOptionList, mergeOptDescs, optionHelpLines, type OptDesc, type OptEntry, type OptType, parseOptValue, QemuOpts,
  splitOptionList, strtosz, type StrtoszResult, strtou64Auto,
} from '@tsimg/image';

const INT64_MAX = (1n << 63n) - 1n;

/**
 * qemu-img's cvtnum_full: a size argument in [min, max], or CliExit(1) with qemu's message
 * (two lines for a malformed value, one for a value out of range).
 */
export function cvtnum(
  name: string,
  text: string,
  min = 0n,
  max = INT64_MAX,
  warn?: (message: string) => void,
): bigint {
  const r = strtosz(text, warn);
  if (r === 'invalid') {
    throw new CliExit(
      1,
      `Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for\n` +
        'tsimg: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.',
    );
  }
  if (r === 'range' || r > max || r < min) {
    throw new CliExit(1, `Invalid ${name} specified. Must be between ${min} and ${max}.`);
  }
  return r;
}

/** qemu's accumulate_options for repeated `-o`: validates and joins with ','. */
export function accumulateOptions(previous: string | undefined, list: string): string {
  if (!isValidOptionList(list)) throw new CliExit(1, `Invalid option list: ${list}`);
  return previous === undefined ? list : `${previous},${list}`;
}
