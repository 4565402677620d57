/**
 * The table of subcommands: each name maps to a loader that imports its module only when that
 * command runs, so `tsimg info` does not pay for the modules of `convert`. A plain object with
 * no registration step: main.ts reads it, and nothing imports main.ts back.
 * Add a line here per command; the command modules themselves never import one another.
 */
import type { CommandRunner } from './command.js';

/** Subcommand name → its lazily loaded runner. */
export const COMMANDS: Readonly<Record<string, () => Promise<CommandRunner>>> = {
  bench: async () => (await import('./commands/bench.js')).run,
  map: async () => (await import('./commands/map.js')).run,
  info: async () => (await import('./commands/info.js')).run,
  measure: async () => (await import('./commands/measure.js')).run,
  compare: async () => (await import('./commands/compare.js')).run,
  dd: async () => (await import('./commands/dd.js')).run,
  checksum: async () => (await import('./commands/checksum.js')).run,
  check: async () => (await import('./commands/check.js')).run,
  create: async () => (await import('./commands/create.js')).run,
  convert: async () => (await import('./commands/convert.js')).run,
  resize: async () => (await import('./commands/resize.js')).run,
  snapshot: async () => (await import('./commands/snapshot.js')).run,
  commit: async () => (await import('./commands/commit.js')).run,
  rebase: async () => (await import('./commands/rebase.js')).run,
  bitmap: async () => (await import('./commands/bitmap.js')).run,
  amend: async () => (await import('./commands/amend.js')).run,
};
