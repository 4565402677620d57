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
 */
import type { CliIO } from './command.js';

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
export function createProgress(io: CliIO, enabled: boolean, minSkip = 2.0): Progress {
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
    }
  };

  return {
    print,
    advance(bytes: number, total: number): void {
      // qemu: qemu_progress_print(((float) bytes / total) * 100, 100)
      print(f(f(f(bytes) / f(total)) * 100), 100);
    },
    end(): void {
      if (ended) return;
      ended = true;
      if (hasSignals) process.off('SIGUSR1', onSignal);
      if (enabled) io.stdout('\n');
    },
  };
}
