/** Crash safety of internal snapshots: create, apply, delete (see crash-harness.ts). */
import { describeCrashSuite } from './crash-harness.js';

describeCrashSuite('internal snapshots', (w) => w.name.startsWith('internal snapshots'), 100);
