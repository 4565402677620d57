/**
 * How the CLI ends: `CliExit` carries an exit status and an optional one-line message
 * (printed as `tsimg: <message>` on stderr), and `errorMessage` turns library errors into
 * qemu-img's wording.
 */
import { strerror, TsimgError } from '@tsimg/raw';

/** Thrown by command code to stop with `status`; `message` (if any) is printed after `tsimg: `. */
export class CliExit extends Error {
  readonly status: number;
  constructor(status: number, message?: string) {
    super(message ?? '');
    this.name = 'CliExit';
    this.status = status;
  }
}

/** The one-line text for any thrown value, as qemu-img would print it after `qemu-img: `. */
export function errorMessage(err: unknown): string {
  if (err instanceof TsimgError || err instanceof CliExit) return err.message;
  if (err && typeof err === 'object' && 'code' in err && 'message' in err) {
    // node:fs errors: qemu prints strerror text, e.g. "No such file or directory".
    return osErrorText(err as NodeJS.ErrnoException);
  }
  return String(err instanceof Error ? err.message : err);
}

/** strerror()-style text for a Node errno error, the way qemu words OS errors. */
export function osErrorText(err: NodeJS.ErrnoException): string {
  // strerror answers the code itself for codes it has no text for; Node's message is better.
  const text = err.code ? strerror(err.code) : undefined;
  return text !== undefined && text !== err.code ? text : err.message;
}
