/** Crash safety of the single-image workloads other than internal snapshots (see crash-harness.ts). */
import { describeCrashSuite } from './crash-harness.js';

describeCrashSuite('writes, zeroes, discards, compression, resizes', (w) => !w.name.startsWith('internal snapshots'), 100);
