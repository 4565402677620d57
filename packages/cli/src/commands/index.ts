/**
 * The table of subcommands. Each entry loads its module only when that command runs.
 * Add a line here per command; keep the modules themselves independent.
 */
import { registerCommand } from '../main.js';

void registerCommand;
registerCommand('map', async () => (await import('./map.js')).run);
registerCommand('info', async () => (await import('./info.js')).run);
registerCommand('measure', async () => (await import('./measure.js')).run);
registerCommand('compare', async () => (await import('./compare.js')).run);
registerCommand('dd', async () => (await import('./dd.js')).run);
registerCommand('check', async () => (await import('./check.js')).run);
registerCommand('create', async () => (await import('./create.js')).run);
registerCommand('convert', async () => (await import('./convert.js')).run);
