/**
 * Entry point of the `tsimg` command: picks the subcommand, runs it, and turns whatever it
 * throws into one `tsimg: ...` line and qemu-img's exit status — never a stack trace.
 *
 * Each subcommand lives in `commands/<name>.ts` and is loaded lazily, so `tsimg info` does not
 * pay for the modules of `convert`.
 */
import { CliExit, errorMessage } from './exit.js';

/** A subcommand: gets its own argv (without the name), returns the exit status. */
export type CommandRunner = (argv: string[], io: CliIO) => Promise<number>;

/** Where a command writes; tests may capture it. */
export interface CliIO {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /** True when stdout is a terminal (progress lines are redrawn in place). */
  isTTY: boolean;
}

const COMMANDS: Record<string, () => Promise<CommandRunner>> = {};

/** Registers a lazily loaded subcommand (called from commands/index.ts). */
export function registerCommand(name: string, load: () => Promise<CommandRunner>): void {
  COMMANDS[name] = load;
}

const defaultIO: CliIO = {
  stdout: (t) => void process.stdout.write(t),
  stderr: (t) => void process.stderr.write(t),
  isTTY: Boolean(process.stdout.isTTY),
};

/** Runs `tsimg <argv>`; resolves to the exit status. */
export async function main(argv: string[], io: CliIO = defaultIO): Promise<number> {
  await import('./commands/index.js');
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
