import { beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { UnsupportedError, UsageError } from '@tsimg/raw';
import { compressCluster, type CompressionType } from '../src/compress/compress.js';
import { createCompressPool } from '../src/compress/compress-pool.js';
import type { CompressReply } from '../src/compress/compress-worker.js';
import { loadZstd } from '../src/compress/zstd.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const distPool = fileURLToPath(new URL('../dist/compress/compress-pool.js', import.meta.url));
const distCompress = fileURLToPath(new URL('../dist/compress/compress.js', import.meta.url));
const distWorker = new URL('../dist/compress/compress-worker.js', import.meta.url);

// Workers run the compiled compress-worker.js (Node cannot run a .ts worker), also when vitest
// runs the pool from source: build first, so the worker is never older than these sources.
// tsc emits even when another module of the package has type errors (that is the build's own
// failure to report); what matters here is that the worker's modules are fresh.
beforeAll(() => {
  const tsc = `${root}node_modules/typescript/bin/tsc`;
  const build = spawnSync(process.execPath, [tsc, '-b', 'packages/raw', 'packages/qcow2'], { cwd: root, encoding: 'utf8' });
  for (const name of ['compress-worker', 'compress', 'deflate', 'zstd', 'zstd-frame']) {
    const src = statSync(new URL(`../src/compress/${name}.ts`, import.meta.url)).mtimeMs;
    const dist = statSync(new URL(`../dist/compress/${name}.js`, import.meta.url), { throwIfNoEntry: false })?.mtimeMs ?? 0;
    if (dist < src) throw new Error(`dist/${name}.js was not rebuilt:\n${build.stdout}${build.stderr}`);
  }
}, 120_000);

/** Clusters of every kind in turn: text-like, runs, incompressible. */
function clusters(count: number, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    const c = randomFillSync(new Uint8Array(size));
    if (i % 3 === 0) for (let j = 0; j < size; j++) c[j] = 97 + (c[j]! & 3);
    if (i % 3 === 1) for (let j = 0; j < size; j++) c[j] = (j >> 9) & 0xff;
    out.push(c);
  }
  return out;
}

function same(a: Uint8Array | undefined, b: Uint8Array | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

describe('createCompressPool', () => {
  for (const type of ['zlib', 'zstd'] as CompressionType[]) {
    it(`${type}: gives exactly compressCluster's bytes, in the caller's order, from 3 workers`, async () => {
      const input = clusters(60, 65536);
      const pool = createCompressPool(type, { threads: 3 });
      try {
        // All in flight at once: workers finish out of order, the promises keep the order.
        const results = await Promise.all(input.map((c) => pool.compress(c)));
        const expected = await Promise.all(input.map((c) => compressCluster(type, c)));
        expect(results.map((r) => r?.length)).toEqual(expected.map((r) => r?.length));
        expect(results.every((r, i) => same(r, expected[i]))).toBe(true);
        expect(results.filter((r) => r === undefined).length).toBe(20); // the random third
      } finally {
        await pool.close();
      }
    });

    it(`${type}: the same cluster gives the same bytes whichever worker compressed it`, async () => {
      const [cluster] = clusters(1, 4096);
      const pool = createCompressPool(type, { threads: 4 });
      try {
        const results = await Promise.all(Array.from({ length: 16 }, () => pool.compress(cluster!)));
        expect(results[0]).toBeDefined();
        expect(results.every((r) => same(r, results[0]))).toBe(true);
      } finally {
        await pool.close();
      }
    });
  }

  for (const type of ['zlib', 'zstd'] as CompressionType[]) {
    it(`${type}: threads 0 compresses on the calling thread, with exactly the workers' bytes`, async () => {
      const input = clusters(30, 65536);
      const inThread = createCompressPool(type, { threads: 0 });
      const workers = createCompressPool(type, { threads: 2 });
      try {
        expect(inThread.threads).toBe(0);
        const a = await Promise.all(input.map((c) => inThread.compress(c)));
        const b = await Promise.all(input.map((c) => workers.compress(c)));
        expect(a.every((r, i) => same(r, b[i]))).toBe(true);
        expect(a.filter((r) => r === undefined).length).toBe(10); // the random third
        await expect(inThread.compress(new Uint8Array(100))).rejects.toBeInstanceOf(UsageError);
      } finally {
        await inThread.close();
        await workers.close();
      }
      await expect(inThread.compress(new Uint8Array(65536))).rejects.toBeInstanceOf(UsageError);
    });
  }

  it('copies the cluster, so the caller may reuse its buffer and views of big buffers work', async () => {
    const big = new Uint8Array(8 << 20).fill(0x41);
    const pool = createCompressPool('zlib', { threads: 2 });
    try {
      const view = big.subarray(65536, 2 * 65536);
      const pending = pool.compress(view);
      big.fill(0x42, 65536, 2 * 65536); // after posting: must not change the result
      const result = await pending;
      expect(same(result, await compressCluster('zlib', new Uint8Array(65536).fill(0x41)))).toBe(true);
      expect(big.buffer.byteLength).toBe(8 << 20); // not transferred away from the caller
    } finally {
      await pool.close();
    }
  });

  it('close() lets the clusters in flight finish; the pool then refuses work', async () => {
    const pool = createCompressPool('zstd', { threads: 2 });
    const pending = clusters(10, 65536).map((c) => pool.compress(c));
    await pool.close();
    const results = await Promise.all(pending);
    expect(results.filter((r) => r !== undefined).length).toBeGreaterThan(0);
    await expect(pool.compress(new Uint8Array(65536))).rejects.toBeInstanceOf(UsageError);
    await pool.close(); // twice is fine
    await createCompressPool('zlib').close(); // never used: no workers were started
  });

  it('validates its arguments like compressCluster', async () => {
    expect(() => createCompressPool('lz4' as CompressionType)).toThrow(UnsupportedError);
    expect(() => createCompressPool('zlib', { threads: -1 })).toThrow(UsageError);
    expect(() => createCompressPool('zlib', { threads: 1.5 })).toThrow(UsageError);
    const pool = createCompressPool('zlib', { threads: 1 });
    await expect(pool.compress(new Uint8Array(100))).rejects.toBeInstanceOf(UsageError);
    await pool.close();
  });

  it('runs from the built package, and idle workers do not keep the process alive', () => {
    const script = `
      import { createCompressPool } from ${JSON.stringify(distPool)};
      const pool = createCompressPool('zstd', { threads: 2 });
      const r = await pool.compress(new Uint8Array(65536).fill(7));
      console.log(r.length);
      // no close(): the process must still end
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(Number(r.stdout.trim())).toBeGreaterThan(0);
  });

  it('loads neither node:zlib nor a zstd library until a cluster needs one', () => {
    const script = `
      import { createRequire } from 'node:module';
      const require = createRequire(import.meta.url);
      const loaded = () => [
        process.moduleLoadList.includes('NativeModule zlib') ? 'zlib' : '',
        Object.keys(require.cache).some((k) => k.includes('zstd')) ? 'zstd' : '',
      ].join(' ').trim();
      const { compressCluster, decompressCluster } = await import(${JSON.stringify(distCompress)});
      const { createCompressPool } = await import(${JSON.stringify(distPool)});
      createCompressPool('zstd');
      console.log('imported:', loaded());
      await decompressCluster('zlib', (await compressCluster('zlib', new Uint8Array(4096)))!, 4096);
      console.log('zlib used:', loaded());
      await decompressCluster('zstd', (await compressCluster('zstd', new Uint8Array(4096)))!, 4096);
      console.log('zstd used:', loaded());
    `.replaceAll(')!', ')');
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n').map((l) => l.trim())).toEqual(['imported:', 'zlib used: zlib', 'zstd used: zlib zstd']);
  });

  it('a worker uses the zstd backend the pool names, whatever it could load itself', async () => {
    const [cluster] = clusters(1, 65536);
    const worker = new Worker(distWorker, { workerData: { type: 'zstd', zstdBackend: 'zstd-wasm' } });
    try {
      const reply = await new Promise<CompressReply>((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
        worker.postMessage({ id: 7, cluster });
      });
      const wasm = (await loadZstd('zstd-wasm')).compress(cluster!, 65535);
      expect(reply.id).toBe(7);
      expect(reply.ok && same(reply.result, wasm)).toBe(true);
    } finally {
      await worker.terminate();
    }
  });

  it('the worker file refuses to run outside a worker thread', () => {
    const r = spawnSync(process.execPath, [fileURLToPath(distWorker)], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('runs only as a worker thread');
  });
});
