/** @tsimg/cli — the tsimg command as a library (for embedding and tests). */
export { main } from './main.js';
