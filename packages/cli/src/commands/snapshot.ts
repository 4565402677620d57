/**
 * `tsimg snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot |
 * -d snapshot] [-f fmt] filename` — qemu-img 7.2's img_snapshot: list, create, apply or delete an
 * internal snapshot, with its messages and exit statuses. `-f` is what later qemu-img added
 * (7.2 refuses it); everything else is 7.2's. The work is the image's (Image.createSnapshot …).
 */
import { constants as osConstants } from 'node:os';
import { TsimgError, UnsupportedError, strerror } from '@tsimg/raw';
import type { Image } from '@tsimg/image';
import type { CliIO, CommandRunner } from '../command.js';
import { getoptLong, type LongOption } from '../getopt.js';
import {
  expectOneFilename,
  FORMAT_OPTION,
  getoptExit,
  HELP_OPTION,
  IMAGE_SOURCE_OPTIONS,
  usageExit,
} from '../command-options.js';
import { corruptionLine, openCommandImage, repairLog } from '../image-open.js';
import { interruptsOf } from '../interrupt.js';
import { probedRaw, probedRawWarning } from '../raw-probe-warning.js';
import { lockWarnings } from '../lock-messages.js';
import { snapshotHeaderLine, snapshotLine } from '../info-output.js';
import { addObject } from '../object-option.js';

const LONG_OPTIONS: readonly LongOption[] = [HELP_OPTION, FORMAT_OPTION, ...IMAGE_SOURCE_OPTIONS];

const HELP =
  'usage: tsimg snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] [-f fmt] filename\n\n' +
  "  '-l' lists all snapshots in the given image\n" +
  "  '-a' applies a snapshot (revert disk to saved state)\n" +
  "  '-c' creates a snapshot\n" +
  "  '-d' deletes a snapshot\n";

/** What the command line asks for. */
type Action = { kind: 'list' } | { kind: 'create' | 'apply' | 'delete'; name: string };

/** The negative errno qemu-img prints for a failed create, and its text. */
function errnoText(err: TsimgError): string {
  const name = err.errno ?? 'EIO';
  const n = (osConstants.errno as Record<string, number | undefined>)[name] ?? 5;
  return `-${n} (${strerror(name)})`;
}

/** A snapshot error's line of its own, printed before the command's (qemu's error_report_err). */
function reportLines(err: unknown, io: CliIO): void {
  const corrupt = corruptionLine(err);
  if (corrupt !== undefined) io.stderr(corrupt);
  for (let e: unknown = err; e instanceof Error; e = (e as { cause?: unknown }).cause) {
    const report = (e as { report?: unknown }).report;
    if (typeof report === 'string') {
      io.stderr(`tsimg: ${report}\n`);
      return;
    }
  }
}

/** dump_snapshots: nothing at all when the image has no snapshots (or the format none). */
function listSnapshots(img: Image, io: CliIO): void {
  const list = img.listSnapshots?.() ?? [];
  if (list.length === 0) return;
  io.stdout(`Snapshot list:\n${snapshotHeaderLine()}\n${list.map((sn) => snapshotLine(sn) + '\n').join('')}`);
}

/**
 * Runs one snapshot operation: 0 when it succeeds; when it fails with a library error, qemu's
 * lines (the driver's own report, then "Could not <what> snapshot 'name': <reason>") and 1.
 */
async function attempt(io: CliIO, what: string, name: string, op: () => Promise<unknown>, reason: (err: TsimgError) => string): Promise<number> {
  try {
    await op();
    return 0;
  } catch (err) {
    if (!(err instanceof TsimgError)) throw err;
    reportLines(err, io);
    io.stderr(`tsimg: Could not ${what} snapshot '${name}': ${reason(err)}\n`);
    return 1;
  }
}

/** bdrv_snapshot_create; qemu-img prints the errno ("-95 (Operation not supported)"). */
function createSnapshot(img: Image, name: string, io: CliIO): Promise<number> {
  return attempt(io, 'create', name, async () => {
    if (img.createSnapshot === undefined) throw new UnsupportedError('Operation not supported', { errno: 'ENOTSUP' });
    await img.createSnapshot({ name });
  }, errnoText);
}

/** bdrv_snapshot_goto; `warnAgain` repeats the open's warnings where qemu reopens the image. */
function applySnapshot(img: Image, name: string, io: CliIO, warnAgain: () => void): Promise<number> {
  return attempt(io, 'apply', name, async () => {
    if (img.applySnapshot === undefined) {
      // bdrv_snapshot_goto falls back to the file below a raw image: it closes and reopens the
      // raw node around that (repeating the open's warning), and the file has no snapshots.
      warnAgain();
      throw new UnsupportedError('Block driver does not support snapshots', { errno: 'ENOTSUP' });
    }
    await img.applySnapshot(name);
  }, (err) => err.message);
}

/** bdrv_snapshot_find by name, then bdrv_snapshot_delete of what it found. */
function deleteSnapshot(img: Image, name: string, io: CliIO): Promise<number> {
  // bdrv_snapshot_find (7.2): the first snapshot with this name — by name only, not by ID.
  const sn = img.listSnapshots?.().find((s) => s.name === name);
  if (sn === undefined || img.deleteSnapshot === undefined) {
    io.stderr(`tsimg: Could not delete snapshot '${name}': snapshot not found\n`);
    return Promise.resolve(1);
  }
  const del = img.deleteSnapshot.bind(img);
  return attempt(io, 'delete', name, () => del({ id: sn.id, name: sn.name }), (err) => err.message);
}

/** img_snapshot's option loop: one action at most, qemu's usage errors. */
function parseArgs(argv: string[]): { action?: Action; format?: string; quiet: boolean; imageOpts: boolean; forceShare: boolean; secrets: Map<string, Uint8Array>; filename?: string; help?: boolean } {
  const parsed = getoptLong(argv, ':la:c:d:hqUf:', LONG_OPTIONS, 'snapshot');
  if (parsed.error) getoptExit(parsed.error);
  let action: Action | undefined;
  let format: string | undefined;
  let quiet = false;
  let imageOpts = false;
  let forceShare = false;
  const secrets = new Map<string, Uint8Array>();
  const set = (a: Action): void => {
    if (action !== undefined) usageExit("Cannot mix '-l', '-a', '-c', '-d'");
    action = a;
  };
  for (const o of parsed.options) {
    switch (o.key) {
      case 'h':
        return { quiet, imageOpts, forceShare, secrets, help: true };
      case 'l':
        set({ kind: 'list' });
        break;
      case 'a':
        set({ kind: 'apply', name: o.value! });
        break;
      case 'c':
        set({ kind: 'create', name: o.value! });
        break;
      case 'd':
        set({ kind: 'delete', name: o.value! });
        break;
      case 'f':
        format = o.value;
        break;
      case 'q':
        quiet = true;
        break;
      case 'image-opts':
        imageOpts = true;
        break;
      case 'U':
        forceShare = true;
        break;
      case 'object':
        addObject(o.value!, secrets);
        break;
      default:
        break;
    }
  }
  return { action, format, quiet, imageOpts, forceShare, secrets, filename: expectOneFilename(parsed.operands) };
}

/** Creates, applies or deletes a snapshot; resolves to the exit status. */
function change(img: Image, action: Exclude<Action, { kind: 'list' }>, io: CliIO, warnAgain: () => void): Promise<number> {
  if (action.kind === 'create') return createSnapshot(img, action.name, io);
  if (action.kind === 'apply') return applySnapshot(img, action.name, io, warnAgain);
  return deleteSnapshot(img, action.name, io);
}

export const run: CommandRunner = async (argv, io) => {
  const args = parseArgs(argv);
  if (args.help) {
    io.stdout(HELP);
    return 0;
  }
  const { action, format, imageOpts, forceShare, secrets } = args;
  const filename = args.filename!;
  // Only -l opens read-only (and so only -l may share the image with writers, -U).
  const write = action?.kind !== 'list';
  // An open failure (lock conflicts with their hint line included) is main's to print.
  const img = await openCommandImage(filename, { format, readOnly: !write, imageOpts, forceShare, secrets, log: write ? repairLog(io) : undefined, onWarning: lockWarnings(io, write) });
  const warnRaw = write && probedRaw(img, { filename, format, imageOpts });
  if (warnRaw) io.stderr(probedRawWarning(img.filename));
  let status = 0;
  try {
    if (action?.kind === 'list') listSnapshots(img, io);
    else if (action !== undefined) {
      // SIGINT/SIGTERM wait until the snapshot table and refcounts are consistent (interrupt.ts).
      status = await interruptsOf(io).hold(() => change(img, action, io, () => warnRaw && io.stderr(probedRawWarning(img.filename))));
    }
  } finally {
    await img.close();
  }
  return status;
};
