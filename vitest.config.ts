import { defineConfig } from 'vitest/config';
import { fileURLToPath } from 'node:url';

// This machine kind sets NODE_EXTRA_CA_CERTS for every program, and each Node start then parses
// 200 KB of certificates (~60-100 ms per tsimg run; the suite starts thousands). No test trusts
// a public CA (the https tests use self-signed certificates and say so per request), so the
// workers and every process they spawn run without it.
delete process.env.NODE_EXTRA_CA_CERTS;

// Tests import the packages' TypeScript sources directly, so a test run never waits for tsc
// (the CLI tests that spawn bin/tsimg.js rely on `npm test` building first).
const src = (p: string) => fileURLToPath(new URL(`./packages/${p}/src/index.ts`, import.meta.url));

export default defineConfig({
  resolve: {
    alias: {
      '@tsimg/raw': src('raw'),
      '@tsimg/qcow2': src('qcow2'),
      '@tsimg/image': src('image'),
      '@tsimg/cli': src('cli'),
    },
  },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'test-images/**/*.test.ts', 'web/test/**/*.test.ts'],
    // Corpus loops run hundreds of qemu-img and tsimg processes one after another: ~40-75 s on
    // this 2-core machine with three test files side by side, more under load.
    testTimeout: 180_000,
    hookTimeout: 300_000,
    pool: 'forks',
    // Most tests wait on child processes (qemu-img, tsimg) and files, not on this process's
    // CPU: vitest's default of cores - 1 (one worker on a 2-core machine) leaves a core idle.
    maxWorkers: 3,
  },
});
