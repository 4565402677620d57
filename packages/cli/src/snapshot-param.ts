/**
 * The `-l snapshot_param` of convert and measure: a snapshot named by ID or name, or
 * `snapshot.id=ID,snapshot.name=NAME` parsed like qemu's internal_snapshot_opts.
 */
import { CliExit } from './exit.js';
import { QemuOpts } from './options.js';

/** A snapshot chosen by ID and/or name (both must match when both are given). */
export interface SnapshotParam {
  id?: string;
  name?: string;
}

const SNAPSHOT_OPTS = [
  { name: 'snapshot.id', type: 'string' as const, help: 'snapshot id' },
  { name: 'snapshot.name', type: 'string' as const, help: 'snapshot name' },
];

/** Parses `snapshot.id=..,snapshot.name=..` with qemu's messages on failure. */
export function parseSnapshotParam(spec: string): SnapshotParam {
  const opts = new QemuOpts(SNAPSHOT_OPTS);
  try {
    opts.parse(spec);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new CliExit(1, `${msg}\ntsimg: Failed in parsing snapshot param '${spec}'`);
  }
  return { id: opts.getString('snapshot.id'), name: opts.getString('snapshot.name') };
}
