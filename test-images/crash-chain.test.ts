/** Crash safety of commit and rebase over a backing chain (see crash-harness.ts). */
import { describeChainCrashSuite } from './crash-harness.js';

describeChainCrashSuite();
