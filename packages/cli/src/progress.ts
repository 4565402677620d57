/**
 * qemu-img's `-p` progress line (util/qemu-progress.c): `    (NN.NN/100%)\r` on stdout, redrawn
 * in place, and a newline at the end. Like qemu it is written whether or not stdout is a
 * terminal, and only when the value moved by more than `minSkip` percent (or hit 0 or 100).
 *
 * Without `-p`, qemu still answers SIGUSR1 with one `    (NN.NN/100%)` line on stderr at the
 * next update; so does this (it also keeps Node from treating SIGUSR1 as "start the
 * debugger" while the command runs).
 *
 * qemu keeps the value in a C `float`; the arithmetic is repeated in single precision
 * (Math.fround) so the printed figures are the same to the last digit.
 *
 * `--progress=json` (tsimg's own) adds machine-readable progress beside that: one JSON object
 * per line on stderr, `{"done":…,"total":…,"percent":…,"rate":…}` (bytes, bytes, percent,
 * bytes per second since the start), at the same steps the text line is redrawn and once at the
 * end. It goes to stderr because stdout may carry the command's result or an image (`convert
 * … -`), and it is not silenced by `-q`, which is about qemu's text.
 */
import type { CliIO } from './command.js';
import { CliExit } from './exit.js';
import type { LongOption } from './getopt.js';

/** `--progress=json` (or `human`, the same as `-p`), for the commands that report progress. */
export const PROGRESS_OPTION: LongOption = { name: 'progress', hasArg: true, key: 'progress' };

/** The mode `--progress=` names: `json` for JSON lines, `human` for qemu's `-p` text. */
export function progressMode(value: string | undefined): 'json' | 'human' {
  if (value === 'json' || value === 'human') return value;
  throw new CliExit(1, '--progress must be used with human or json as argument.');
}

/** A progress reporter; see {@link createProgress}. */
export interface Progress {
  /**
   * qemu_progress_print: with `max` 0, `delta` is the new absolute percentage; otherwise the
   * value grows by `delta` percent of `max` percent.
   */
  print(delta: number, max: number): void;
  /** Adds `bytes` of `total` as progress (the common "relative" call with max = 100). */
  advance(bytes: number, total: number): void;
  /** Ends the line (a newline when enabled). Call once, also on failure paths. */
  end(): void;
  /** The bytes 100 % stands for, in the JSON lines (0 until set). */
  setTotal(bytes: number): void;
}

/** Options of {@link createProgress}. */
export interface ProgressOptions {
  /** Print JSON progress lines on stderr (`--progress=json`). */
  json?: boolean;
  /** The clock of the rate, in ms (tests may fix it); default performance.now. */
  now?: () => number;
}

const f = Math.fround;

/** Formats a float like C's `%3.2f` (round half to even on exact ties, as glibc does). */
export function formatPercent(value: number): string {
  const t = value * 1000; // exact: a float has 24 significant bits
  if (Number.isInteger(t) && Math.abs(t) % 10 === 5) {
    let n = (Math.abs(t) - 5) / 10; // hundredths, rounded down
    if (n % 2 === 1) n += 1;
    const s = `${Math.floor(n / 100)}.${String(n % 100).padStart(2, '0')}`;
    return (value < 0 ? '-' : '') + s.padStart(3, ' ');
  }
  return value.toFixed(2).padStart(3, ' ');
}

/**
 * Creates qemu's progress state for one command. `enabled` is the command's `-p` (already
 * cleared by `-q`); `minSkip` is the step in percent below which updates are not drawn
 * (qemu-img uses 2.0 for compare, convert, rebase and commit).
 */
export function createProgress(io: CliIO, enabled: boolean, minSkip = 2.0, options: ProgressOptions = {}): Progress {
  const now = options.now ?? (() => performance.now());
  const started = now();
  let total = 0;
  let exactDone: number | undefined;
  let lastJson: number | undefined;
  const json = (): void => {
    // Nothing to say before the command knows its total (the 0 % line of a convert comes first).
    if (!options.json || (total === 0 && current === 0)) return;
    const done = exactDone ?? Math.round((current / 100) * total);
    if (done === lastJson) return;
    lastJson = done;
    const seconds = (now() - started) / 1000;
    const rate = seconds > 0 ? Math.round(done / seconds) : 0;
    io.stderr(`{"done":${done},"total":${total},"percent":${formatPercent(current).trim()},"rate":${rate}}\n`);
  };
  let current = f(0);
  let lastPrint = f(0);
  const skip = f(minSkip);
  let pending = false;
  let ended = false;

  const onSignal = (): void => {
    pending = true;
  };
  const hasSignals = !enabled && typeof process !== 'undefined' && process.platform !== 'win32';
  if (hasSignals) process.on('SIGUSR1', onSignal);

  const draw = (): void => {
    if (enabled) io.stdout(`    (${formatPercent(current)}/100%)\r`);
    else if (pending) {
      io.stderr(`    (${formatPercent(current)}/100%)\n`);
      pending = false;
    }
  };

  const print = (delta: number, max: number): void => {
    let value = max === 0 ? f(delta) : f(current + f(f(f(delta) / 100) * max));
    if (value > 100) value = f(100);
    current = value;
    if (value > f(lastPrint + skip) || value < f(lastPrint - skip) || value === 100 || value === 0) {
      lastPrint = current;
      draw();
      json();
    }
  };

  return {
    print,
    advance(bytes: number, of: number): void {
      exactDone = (exactDone ?? 0) + bytes;
      if (total === 0) total = of;
      // qemu: qemu_progress_print(((float) bytes / total) * 100, 100)
      print(f(f(f(bytes) / f(of)) * 100), 100);
    },
    setTotal(bytes: number): void {
      total = bytes;
    },
    end(): void {
      if (ended) return;
      ended = true;
      json();
      if (hasSignals) process.off('SIGUSR1', onSignal);
      if (enabled) io.stdout('\n');
    },
  };
}
