/**
 * Entry point of the `tsimg` command: picks the subcommand, runs it, and turns whatever it
 * throws into one `tsimg: ...` line and qemu-img's exit status — never a stack trace.
 *
 * Each subcommand lives in `commands/<name>.ts` and is loaded lazily through the table in
 * command-table.ts, so `tsimg info` does not pay for the modules of `convert`.
 */
import type { CliIO } from './command.js';
import { COMMANDS } from './command-table.js';
import { CliExit, errorMessage } from './exit.js';
import { InterruptedError, processInterrupts } from './interrupt.js';

export type { CliIO, CommandRunner } from './command.js';

const defaultIO: CliIO = {
  stdout: (t) => void process.stdout.write(t),
  stderr: (t) => void process.stderr.write(t),
  isTTY: Boolean(process.stdout.isTTY),
};

/** Runs `tsimg <argv>`; resolves to the exit status. */
export async function main(argv: string[], io: CliIO = defaultIO): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    io.stderr("tsimg: Not enough arguments\nTry 'tsimg --help' for more information\n");
    return 1;
  }
  if (name === '-h' || name === '--help' || name === 'help') {
    io.stdout(helpText());
    return 0;
  }
  if (name === '-V' || name === '--version') {
    io.stdout('tsimg version 0.1.0 (qemu-img 7.2 compatible)\n');
    return 0;
  }
  const load = COMMANDS[name];
  if (!load) {
    io.stderr(`tsimg: Command not found: ${name}\n`);
    return 1;
  }
  try {
    const run = await load();
    return await run(rest, io);
  } catch (err) {
    // A deferred signal: qemu-img would have died of it silently; runProcess does so now.
    if (err instanceof InterruptedError || io.interrupts?.received !== undefined) return 1;
    const status = err instanceof CliExit ? err.status : 1;
    const msg = errorMessage(err);
    if (msg) io.stderr(`tsimg: ${msg}\n`);
    const hint = hintOf(err);
    if (hint) io.stderr(`${hint}\n`);
    if (process.env.TSIMG_DEBUG && err instanceof Error) io.stderr(`${err.stack}\n`);
    return status;
  }
}

/**
 * Runs `tsimg <argv>` as the process (bin/tsimg.js): with SIGINT/SIGTERM deferred while a
 * command writes an image, and ended by that signal afterwards, as qemu-img is ended by it.
 */
export async function runProcess(argv: string[]): Promise<void> {
  const { interrupts, finish } = processInterrupts();
  const code = await main(argv, { ...defaultIO, interrupts });
  finish();
  process.exitCode = code;
}

/**
 * qemu's error_append_hint: a second line some errors carry (e.g. how to repair), printed
 * after the message without the program name. Found on the error or anything it wraps.
 */
function hintOf(err: unknown): string | undefined {
  for (let e: unknown = err; e instanceof Error; e = (e as { cause?: unknown }).cause) {
    const hint = (e as { hint?: unknown }).hint;
    if (typeof hint === 'string' && hint) return hint;
  }
  return undefined;
}

function helpText(): string {
  return (
    'tsimg — qemu-img in TypeScript\n' +
    'usage: tsimg [standard options] command [command options]\n\n' +
    'Commands:\n' +
    Object.keys(COMMANDS)
      .sort()
      .map((c) => `  ${c}\n`)
      .join('')
  );
}
