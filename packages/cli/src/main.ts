/**
 * Entry point of the `tsimg` command: picks the subcommand, runs it, and turns whatever it
 * throws into one `tsimg: ...` line and qemu-img's exit status — never a stack trace.
 *
 * Each subcommand lives in `commands/<name>.ts` and is loaded lazily through the table in
 * command-table.ts, so `tsimg info` does not pay for the modules of `convert`.
 */
import { writeSync } from 'node:fs';
import type { CliIO } from './command.js';
import { COMMANDS } from './command-table.js';
import { CliExit, errorMessage } from './exit.js';
import { getoptLong, qemuGetoptMessage, type LongOption } from './getopt.js';
import { helpText } from './help.js';
import { InterruptedError, processInterrupts } from './interrupt.js';
import { traceOption } from './trace-option.js';

export type { CliIO, CommandRunner } from './command.js';

/**
 * The process's output: text goes straight to fds 1 and 2 with writeSync — what Node's stdout
 * and stderr do on Linux for files, pipes and terminals, without building those streams, which
 * costs a short command like `info` 2–20 ms of its start here. Where a direct write cannot be
 * made (a non-blocking pipe answering EAGAIN, or an error such as EPIPE) that text and all that
 * follows go through Node's stream as before, which keeps the order and Node's error handling.
 */
function processIO(): CliIO {
  const viaStream = { 1: false, 2: false };
  const write = (fd: 1 | 2, text: string): void => {
    let rest = Buffer.from(text);
    if (!viaStream[fd]) {
      try {
        while (rest.length > 0) rest = rest.subarray(writeSync(fd, rest));
        return;
      } catch {
        viaStream[fd] = true;
      }
    }
    (fd === 1 ? process.stdout : process.stderr).write(rest);
  };
  return {
    stdout: (t) => write(1, t),
    stderr: (t) => write(2, t),
    // Looked at only where needed: it builds process.stdout.
    get isTTY() {
      return Boolean(process.stdout.isTTY);
    },
  };
}
const defaultIO: CliIO = processIO();

const VERSION = 'tsimg version 0.1.0 (qemu-img 7.2 compatible)';
const TRY_HELP = "Try 'tsimg --help' for more information\n";

const GLOBAL_OPTIONS: readonly LongOption[] = [
  { name: 'help', hasArg: false, key: 'h' },
  { name: 'version', hasArg: false, key: 'V' },
  { name: 'trace', hasArg: true, key: 'T' },
];

/**
 * Where the standard options end: qemu-img's getopt "+:hVT:" stops at the first word that is
 * not an option (or after `--`); an option's argument is part of it.
 */
function commandIndex(argv: readonly string[]): number {
  let i = 0;
  while (i < argv.length) {
    const w = argv[i]!;
    if (w === '--') return i + 1;
    if (w === '-' || !w.startsWith('-')) return i;
    const long = w.startsWith('--') && !w.includes('=') && 'trace'.startsWith(w.slice(2));
    const short = !w.startsWith('--') && /^-[hV]*T$/.test(w);
    i += long || short ? 2 : 1;
  }
  return argv.length;
}

/** Runs `tsimg <argv>`; resolves to the exit status. */
export async function main(argv: string[], io: CliIO = defaultIO): Promise<number> {
  if (argv.length === 0) {
    io.stderr(`tsimg: Not enough arguments\n${TRY_HELP}`);
    return 1;
  }
  const at = commandIndex(argv);
  const parsed = getoptLong(argv.slice(0, at), ':hVT:', GLOBAL_OPTIONS, 'tsimg');
  for (const o of parsed.options) {
    if (o.key === 'h') {
      io.stdout(helpText(Object.keys(COMMANDS), VERSION));
      return 0;
    }
    if (o.key === 'V') {
      io.stdout(`${VERSION}\n`);
      return 0;
    }
    const traced = traceOption(o.value!, io);
    if (traced !== 0) return traced;
  }
  if (parsed.error) {
    io.stderr(`tsimg: ${qemuGetoptMessage(parsed.error)}\n${TRY_HELP}`);
    return 1;
  }
  const [name, ...rest] = argv.slice(at);
  if (name === undefined) return 0;
  const load = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!load) {
    io.stderr(`tsimg: Command not found: ${name}\n${TRY_HELP}`);
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
  const code = await main(argv, Object.assign(processIO(), { interrupts }));
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
