/**
 * GNU getopt_long as qemu-img uses it, so option handling matches to the letter: argument
 * permutation (options may follow file names), `--` ends options, clustered short options
 * (`-Uf qcow2`, `-fqcow2`), `--long=value` and `--long value`, and unambiguous abbreviations of
 * long options (`--out=json`).
 *
 * Errors are returned, not thrown, because qemu-img commands differ in how they report them:
 * most pass a leading ':' to getopt and print `unrecognized option '-x'` /
 * `missing argument for option '-s'` themselves, a few let getopt print its own messages.
 */

/** One long option: its name, whether it takes an argument, and the key it reports as. */
export interface LongOption {
  name: string;
  hasArg: boolean;
  /** The key this option reports as (a short option letter, or any name). */
  key: string;
}

/** One parsed option. */
export interface ParsedOption {
  key: string;
  value?: string;
}

/** A parse failure, with the texts both reporting styles need. */
export interface GetoptError {
  kind: 'unrecognized' | 'missing-argument' | 'ambiguous' | 'extra-argument';
  /** The command-line word qemu names in its own message (argv[optind - 1]). */
  word: string;
  /** The option as glibc's getopt names it in its message (`-x`, `--size`, `--o=json`). */
  option: string;
  /** Candidate long options, for `ambiguous`. */
  candidates?: string[];
}

/** Result of {@link getoptLong}: options in order, then the non-option arguments. */
export interface GetoptResult {
  options: ParsedOption[];
  operands: string[];
  error?: GetoptError;
}

/**
 * Parses `argv` against a short-option string (`"hf:s:l:U"`, a ':' after a letter marks a
 * required argument) and a long-option table. Stops at the first error. `argv0` is the word
 * before `argv` (the command's name), which qemu names for a bad letter inside a cluster
 * that is the first word (see {@link clusterErrorWord}).
 */
export function getoptLong(argv: readonly string[], shortSpec: string, longOptions: readonly LongOption[], argv0?: string): GetoptResult {
  const spec = shortSpec.replace(/^[:+]/, '');
  const takesArg = (c: string): boolean | undefined => {
    const i = spec.indexOf(c);
    if (c === ':' || i < 0) return undefined;
    return spec[i + 1] === ':';
  };
  const options: ParsedOption[] = [];
  const operands: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (word === '--') {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (word.startsWith('--')) {
      const eq = word.indexOf('=');
      const name = word.slice(2, eq < 0 ? undefined : eq);
      const exact = longOptions.find((o) => o.name === name);
      const matches = exact ? [exact] : longOptions.filter((o) => o.name.startsWith(name));
      // glibc: several prefix matches that all mean the same thing are not ambiguous.
      const distinct = matches.filter(
        (o, k) => matches.findIndex((p) => p.key === o.key && p.hasArg === o.hasArg) === k,
      );
      if (distinct.length === 0) {
        return { options, operands, error: { kind: 'unrecognized', word, option: word } };
      }
      if (distinct.length > 1) {
        return {
          options,
          operands,
          error: { kind: 'ambiguous', word, option: word, candidates: distinct.map((o) => `--${o.name}`) },
        };
      }
      const opt = distinct[0]!;
      if (!opt.hasArg) {
        if (eq >= 0) return { options, operands, error: { kind: 'extra-argument', word, option: `--${opt.name}` } };
        options.push({ key: opt.key });
      } else if (eq >= 0) {
        options.push({ key: opt.key, value: word.slice(eq + 1) });
      } else if (i + 1 < argv.length) {
        options.push({ key: opt.key, value: argv[++i]! });
      } else {
        return { options, operands, error: { kind: 'missing-argument', word, option: `--${opt.name}` } };
      }
      continue;
    }
    if (word.startsWith('-') && word.length > 1) {
      for (let k = 1; k < word.length; k++) {
        const c = word[k]!;
        const arg = takesArg(c);
        if (arg === undefined) {
          const named = k + 1 < word.length ? clusterErrorWord(argv, i, operands, argv0) : word;
          return { options, operands, error: { kind: 'unrecognized', word: named, option: `-${c}` } };
        }
        if (!arg) {
          options.push({ key: c });
          continue;
        }
        if (k + 1 < word.length) {
          options.push({ key: c, value: word.slice(k + 1) });
        } else if (i + 1 < argv.length) {
          options.push({ key: c, value: argv[++i]! });
        } else {
          return { options, operands, error: { kind: 'missing-argument', word, option: `-${c}` } };
        }
        break;
      }
      continue;
    }
    operands.push(word);
  }
  return { options, operands };
}

/**
 * The word qemu-img names (argv[optind - 1]) for a bad letter that is not the last of its
 * cluster: glibc has not moved past the cluster yet, so it is the word before it — after
 * glibc's permutation, the last non-option skipped so far, else the previous word, else the
 * command's own name (or, without one, the cluster itself).
 */
function clusterErrorWord(argv: readonly string[], i: number, operands: readonly string[], argv0: string | undefined): string {
  if (operands.length > 0) return operands[operands.length - 1]!;
  if (i > 0) return argv[i - 1]!;
  return argv0 ?? argv[i]!;
}

/** qemu-img's own wording of a getopt error (unrecognized_option / missing_argument). */
export function qemuGetoptMessage(error: GetoptError): string {
  if (error.kind === 'missing-argument') return `missing argument for option '${error.word}'`;
  return `unrecognized option '${error.word}'`;
}

/** glibc getopt's wording, prefixed with the program name (`measure: invalid option -- 'x'`). */
export function glibcGetoptMessage(prog: string, error: GetoptError): string {
  switch (error.kind) {
    case 'unrecognized':
      return error.option.startsWith('--')
        ? `${prog}: unrecognized option '${error.option}'`
        : `${prog}: invalid option -- '${error.option.slice(1)}'`;
    case 'missing-argument':
      return error.option.startsWith('--')
        ? `${prog}: option '${error.option}' requires an argument`
        : `${prog}: option requires an argument -- '${error.option.slice(1)}'`;
    case 'ambiguous':
      return `${prog}: option '${error.word}' is ambiguous; possibilities: ${(error.candidates ?? []).map((c) => `'${c}'`).join(' ')}`;
    case 'extra-argument':
      return `${prog}: option '${error.option}' doesn't allow an argument`;
  }
}
