/** @tsimg/cli — the tsimg command as a library (for embedding and tests). */
export { main } from './main.js';
export type { CliIO, CommandRunner } from './command.js';
