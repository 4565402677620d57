/**
 * What a subcommand is: the function main.ts calls with the command's own argv, and the
 * output channels it writes to. Every command module and the shared modules that print
 * (progress) import these types from here, so none of them imports main.ts.
 */
import type { Interrupts } from './interrupt.js';

/** A subcommand: gets its own argv (without the name), returns the exit status. */
export type CommandRunner = (argv: string[], io: CliIO) => Promise<number>;

/** Where a command writes; tests may capture it. */
export interface CliIO {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** True when stdout is a terminal (progress lines are redrawn in place). */
  isTTY: boolean;
  /**
   * The process's SIGINT/SIGTERM handling (interrupt.ts), which writing commands hold while
   * they write; absent for in-process callers, whose commands are never interrupted.
   */
  interrupts?: Interrupts;
}
