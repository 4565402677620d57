/**
 * Entry point of the `tsimg-nbd` command, qemu-nbd's serving side: parses qemu-nbd's options
 * (nbd-options.ts), listens, opens the image as qemu-nbd does (read-write unless -r, -s
 * overlay, -l snapshot, locked like qemu), serves it with @tsimg/image's NbdServer until the
 * last client leaves (or, with -t, until SIGTERM/SIGINT), and prints qemu-nbd's messages with
 * `tsimg-nbd:` and its exit statuses.
 */
import { spawn } from 'node:child_process';
import { closeSync, writeFileSync, writeSync } from 'node:fs';
import {
  DEFAULT_FORMATS, findFormat, imageBitmapContext, type Image, type NbdExport, type NbdListenAddress, NbdServer, openTemporaryOverlay,
} from '@tsimg/image';
import type { CliIO } from './command.js';
import { CliExit, errorMessage } from './exit.js';
import { openCommandImage } from './image-open.js';
import { NBD_HELP, type NbdServeConfig, parseNbdArgs } from './nbd-options.js';

const VERSION = 'tsimg-nbd version 0.1.0 (qemu-nbd 7.2 compatible)\n';
/** Set in the server process a `--fork` parent starts: the fd its start-up errors go to. */
const DAEMON_FD_ENV = 'TSIMG_NBD_STARTUP_FD';

/** A running tsimg-nbd: its server, and how to stop it cleanly. */
export interface RunningNbd {
  server: NbdServer;
  address: NbdListenAddress;
  /** Resolves when the server has stopped and the image is closed. */
  finished: Promise<void>;
}

/** qemu-nbd's -p port text: a number or a service name; tsimg-nbd takes numbers. */
function portNumber(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n > 65535) throw new CliExit(1, `Failed to find an available port: Servname not supported for ai_socktype`);
  return n;
}

/** The image as qemu-nbd opens it: errors worded "Failed to blk_new_open 'NAME': …". */
async function openServedImage(c: NbdServeConfig, onWarning: (m: string) => void): Promise<Image> {
  const snapshot = c.loadSnapshot;
  let image: Image;
  try {
    image = await openCommandImage(c.filename, {
      format: c.format,
      imageOpts: c.imageOpts,
      readOnly: c.readOnly || c.snapshot,
      snapshot,
      noFlush: c.cache === 'unsafe',
      unmap: c.discard === 'unmap',
      onWarning,
    });
  } catch (err) {
    if (err instanceof CliExit) throw err;
    const msg = errorMessage(err);
    if (msg.startsWith('Failed to load snapshot')) throw err;
    const prefix = `Could not open '${c.filename}': `;
    const inner = msg.startsWith(prefix) ? msg.slice(prefix.length) : msg;
    throw Object.assign(new CliExit(1, `Failed to blk_new_open '${c.filename}': ${inner}`), { cause: err });
  }
  if (!c.snapshot) return image;
  try {
    if (c.imageOpts) throw new CliExit(1, '--snapshot with --image-opts is not supported');
    return await openTemporaryOverlay(image, c.filename, { onWarning });
  } finally {
    await image.close();
  }
}

/** The export qemu-nbd's blk_exp_add makes of the options. */
async function makeExport(c: NbdServeConfig, image: Image): Promise<NbdExport> {
  const bitmaps = [];
  for (const name of c.bitmaps) bitmaps.push(await imageBitmapContext(image, name));
  return {
    name: c.exportName,
    description: c.description,
    image,
    readOnly: c.readOnly,
    multiConn: c.shared !== 1,
    allocationDepth: c.allocationDepth,
    bitmaps,
    // qcow2 zeroes clusters in its metadata; raw would have to write (or punch) the file.
    fastZero: findFormat(DEFAULT_FORMATS, image.format)?.fastZeroes === true,
    unmap: c.discard === 'unmap',
    detectZeroes: c.detectZeroes,
    writethrough: c.cache === 'writethrough' || c.cache === 'directsync',
  };
}

/**
 * Starts serving as `tsimg-nbd <argv>` would (no --fork handling, no signals): for the CLI and
 * for tests that run a server in-process. Throws CliExit / TsimgError on start-up failures.
 */
export async function startNbd(c: NbdServeConfig, io: CliIO): Promise<RunningNbd> {
  const exports: NbdExport[] = [];
  const server = new NbdServer(exports, {
    shared: c.shared,
    persistent: c.persistent,
    onError: (line) => io.stderr(`tsimg-nbd: ${line}\n`),
  });
  const address = await server.listen(c.socket !== undefined ? { kind: 'unix', path: c.socket } : { kind: 'inet', host: c.bind, port: portNumber(c.port) });
  let image: Image;
  try {
    image = await openServedImage(c, (m) => io.stderr(`tsimg-nbd: warning: ${m}\n`));
    try {
      exports.push(await makeExport(c, image));
    } catch (err) {
      await image.close().catch(() => undefined);
      throw err;
    }
  } catch (err) {
    await server.close();
    throw err;
  }
  const finished = server.done.then(() => image.close());
  return { server, address, finished };
}

function report(io: CliIO, err: unknown): number {
  const status = err instanceof CliExit ? err.status : 1;
  const msg = errorMessage(err);
  if (msg) io.stderr(`tsimg-nbd: ${msg}\n`);
  for (let e: unknown = err; e instanceof Error; e = (e as { cause?: unknown }).cause) {
    const hint = (e as { hint?: unknown }).hint;
    if (typeof hint === 'string' && hint) {
      io.stderr(`${hint}\n`);
      break;
    }
  }
  if (process.env.TSIMG_DEBUG && err instanceof Error) io.stderr(`${err.stack}\n`);
  return status;
}

/**
 * --fork: runs the server in a detached process and waits until it is serving (it closes its
 * start-up channel) or failed; its start-up errors are printed here, and the status is 1 if
 * there were any (qemu-nbd's parent does the same with its child's stderr pipe).
 */
async function forkServer(argv: readonly string[], io: CliIO): Promise<number> {
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...argv], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, [DAEMON_FD_ENV]: '3' },
  });
  let errors = false;
  const channel = child.stdio[3] as NodeJS.ReadableStream;
  channel.on('data', (chunk: Buffer) => {
    errors = true;
    io.stderr(chunk.toString());
  });
  await new Promise<void>((resolve) => channel.on('end', resolve).on('close', resolve));
  child.unref();
  return errors ? 1 : 0;
}

/** Runs `tsimg-nbd <argv>`; resolves to the exit status when the server has stopped. */
export async function nbdMain(argv: string[], io: CliIO): Promise<number> {
  let c: NbdServeConfig;
  try {
    c = parseNbdArgs(argv);
  } catch (err) {
    return report(io, err);
  }
  if (c.action === 'help') {
    io.stdout(NBD_HELP);
    return 0;
  }
  if (c.action === 'version') {
    io.stdout(VERSION);
    return 0;
  }
  const startupFd = process.env[DAEMON_FD_ENV] !== undefined ? Number(process.env[DAEMON_FD_ENV]) : undefined;
  if (c.fork && startupFd === undefined) return forkServer(argv, io);
  // In a forked server, start-up errors go to the parent; afterwards nothing is printed.
  let open = startupFd !== undefined;
  const out: CliIO = open ? { ...io, stdout: () => undefined, stderr: (t) => void (open && writeSync(startupFd!, t)) } : io;
  const started = (): void => {
    if (open) closeSync(startupFd!);
    open = false;
  };
  let running: RunningNbd;
  try {
    running = await startNbd(c, out);
    if (c.pidFile !== undefined) writePidFile(c.pidFile);
  } catch (err) {
    const status = report(out, err);
    started();
    return status;
  }
  started();
  try {
    return await serveUntilDone(running);
  } catch (err) {
    return report(out, err);
  }
}

/** qemu_write_pidfile: the process id and a newline. */
function writePidFile(path: string): void {
  try {
    writeFileSync(path, `${process.pid}\n`);
  } catch (err) {
    throw new CliExit(1, `Cannot open pid file: ${errorMessage(err)}`);
  }
}

/** Serves until the server is done; SIGTERM / SIGINT stop it cleanly (status 0, as qemu-nbd). */
async function serveUntilDone(running: RunningNbd): Promise<number> {
  const stop = (): void => void running.server.close();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  try {
    await running.finished;
    return 0;
  } finally {
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
  }
}

/** Runs `tsimg-nbd` as the process (bin/tsimg-nbd.js). */
export async function runNbdProcess(argv: string[]): Promise<void> {
  const io: CliIO = {
    stdout: (t) => void process.stdout.write(t),
    stderr: (t) => void process.stderr.write(t),
    isTTY: Boolean(process.stdout.isTTY),
  };
  process.exitCode = await nbdMain(argv, io);
}
