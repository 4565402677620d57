/** How the CLI prints image-lock warnings and the hint of a lock error, as qemu prints them. */
import { LockError, lockingAvailable } from '@tsimg/raw';
import type { CliIO } from './command.js';

/**
 * The lock warnings of one command, printed as qemu's warn_report prints (`tsimg: warning: `
 * and the text, further lines as they are), each text once however many files say it. Without
 * the native module nothing is locked: commands that write say so; read-only ones stay silent,
 * so their output stays qemu-img's (they cannot damage the image, only see it change).
 */
export function lockWarnings(io: CliIO, write: boolean, seen: Set<string> = new Set()): (message: string) => void {
  if (!write && !lockingAvailable()) return () => undefined;
  return (message) => {
    if (seen.has(message)) return;
    seen.add(message);
    io.stderr(`tsimg: warning: ${message}\n`);
  };
}

/**
 * `\n` and qemu's hint line (`Is another process using the image [X]?`) when `err` is or wraps
 * a LockError, else ''. For messages the CLI rewords itself (qemu-img keeps the hint there).
 */
export function lockHint(err: unknown): string {
  for (let e: unknown = err; e instanceof Error; e = (e as { cause?: unknown }).cause) {
    if (e instanceof LockError && e.hint) return `\n${e.hint}`;
  }
  return '';
}
