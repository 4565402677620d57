/**
 * Random convert cross-check: fast-check makes sparse images with qemu-io (data, zero writes with
 * and without unmap, discards, compressed clusters; random cluster size, raw or qcow2) and
 * converts each through a random option set with qemu-img and with tsimg; the outputs must be
 * the same bytes (with -c: the same guest contents, a clean check and a size within 1%).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import fc from 'fast-check';
import { existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';
import { cmpFiles, inProcess, runAsync } from './convert-harness.js';

const KiB = 1024;

type Op =
  | { kind: 'write'; offset: number; length: number; pattern: number }
  | { kind: 'zero'; offset: number; length: number; unmap: boolean }
  | { kind: 'discard'; offset: number; length: number }
  | { kind: 'compressed'; cluster: number; pattern: number };

interface Source {
  format: 'raw' | 'qcow2';
  clusterBits: number;
  extendedL2: boolean;
  zstd: boolean;
  /** Virtual size in 512-byte sectors. */
  sectors: number;
  ops: Op[];
  /** A backing image under a qcow2 source (raw or qcow2, possibly shorter), with its own writes. */
  backing?: { format: 'raw' | 'qcow2'; sectors: number; ops: Op[] };
}

interface Target {
  /** flatten: the chain into one image; B: -B the source's backing; concat: source + backing. */
  mode: 'flatten' | 'B' | 'concat';
  format: 'raw' | 'qcow2';
  sparse?: string;
  compressed: boolean;
  options: string[];
}

const op = (size: number, clusterSize: number): fc.Arbitrary<Op> =>
  fc.oneof(
    fc.record({
      kind: fc.constant('write' as const),
      offset: fc.integer({ min: 0, max: size - 1 }),
      // Mostly small writes; sometimes megabytes, so that data runs cross qemu's 2 MiB chunks.
      length: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 160 * KiB }) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 * KiB * KiB }) }),
      pattern: fc.integer({ min: 0, max: 255 }),
    }),
    fc.record({
      kind: fc.constant('zero' as const),
      offset: fc.integer({ min: 0, max: size / 512 - 1 }).map((s) => s * 512),
      length: fc.integer({ min: 1, max: 256 }).map((s) => s * 512),
      unmap: fc.boolean(),
    }),
    fc.record({
      kind: fc.constant('discard' as const),
      offset: fc.integer({ min: 0, max: size / 512 - 1 }).map((s) => s * 512),
      length: fc.integer({ min: 1, max: 512 }).map((s) => s * 512),
    }),
    fc.record({
      kind: fc.constant('compressed' as const),
      cluster: fc.integer({ min: 0, max: Math.floor(size / clusterSize) - 1 }),
      pattern: fc.integer({ min: 1, max: 255 }),
    }),
  );

const source: fc.Arbitrary<Source> = fc
  .record({
    format: fc.constantFrom('raw' as const, 'qcow2' as const, 'qcow2' as const),
    clusterBits: fc.integer({ min: 9, max: 17 }),
    extendedL2: fc.boolean(),
    zstd: fc.boolean(),
    sectors: fc.integer({ min: 256, max: 12288 }),
  })
  .chain((s) => {
    const clusterBits = s.extendedL2 ? Math.max(s.clusterBits, 14) : s.clusterBits;
    const size = s.sectors * 512;
    const cs = 2 ** clusterBits;
    return fc.array(op(size, cs), { minLength: 1, maxLength: 12 }).map((ops) => {
      // qemu-io writes a compressed cluster only where nothing is allocated yet: those go first,
      // one per cluster, and only into qcow2.
      const seen = new Set<number>();
      const compressedOps = ops.filter(
        (o) => o.kind === 'compressed' && s.format === 'qcow2' && (o.cluster + 1) * cs <= size && !seen.has(o.cluster) && seen.add(o.cluster),
      );
      return { ...s, clusterBits, ops: [...compressedOps, ...ops.filter((o) => o.kind !== 'compressed')] };
    });
  })
  .chain((s) =>
    s.format === 'raw'
      ? fc.constant(s)
      : fc.option(
          fc.record({
            format: fc.constantFrom('raw' as const, 'qcow2' as const),
            sectors: fc.integer({ min: 128, max: s.sectors }),
          }).chain((b) =>
            fc
              .array(op(b.sectors * 512, 65536), { minLength: 1, maxLength: 6 })
              .map((ops) => ({ ...b, ops: ops.filter((o) => o.kind !== 'compressed') })),
          ),
          { nil: undefined },
        ).map((backing): Source => ({ ...s, backing })),
  );

const target: fc.Arbitrary<Target> = fc
  .record({
    mode: fc.constantFrom('flatten' as const, 'flatten' as const, 'B' as const, 'concat' as const),
    format: fc.constantFrom('raw' as const, 'qcow2' as const, 'qcow2' as const),
    sparse: fc.option(fc.constantFrom('0', '512', '4k', '8k', '64k', '1M'), { nil: undefined }),
    compressed: fc.boolean(),
    clusterSize: fc.option(fc.constantFrom('512', '4k', '16k', '64k', '256k'), { nil: undefined }),
    compat: fc.option(fc.constantFrom('0.10', '1.1'), { nil: undefined }),
    refcountBits: fc.option(fc.constantFrom('1', '4', '16', '64'), { nil: undefined }),
    extendedL2: fc.boolean(),
    zstd: fc.boolean(),
    prealloc: fc.option(fc.constantFrom('metadata', 'falloc'), { nil: undefined }),
  })
  .map((t): Target => {
    const o: string[] = [];
    if (t.format === 'qcow2') {
      const v2 = t.compat === '0.10';
      if (t.clusterSize) o.push(`cluster_size=${t.clusterSize}`);
      if (t.compat) o.push(`compat=${t.compat}`);
      if (t.refcountBits && !v2) o.push(`refcount_bits=${t.refcountBits}`);
      if (t.extendedL2 && !v2 && t.clusterSize !== '512') o.push('extended_l2=on');
      if (t.zstd && !v2) o.push('compression_type=zstd');
      if (t.prealloc && !t.compressed) o.push(`preallocation=${t.prealloc}`);
    }
    const compressed = t.compressed && t.format === 'qcow2';
    // -S 0 with -c is left out: @tsimg/qcow2's convertCopy writes data uncompressed under -S 0
    // where qemu compresses every cluster (zero ones included) — a known difference, reported;
    // convert.test.ts has the row.
    const sparse = compressed && t.sparse === '0' ? undefined : t.sparse;
    return { mode: t.mode, format: t.format, sparse, compressed, options: o };
  });

function opCommand(o: Op, cs: number): string {
  switch (o.kind) {
    case 'write':
      return `write -P ${o.pattern} ${o.offset} ${o.length}`;
    case 'zero':
      return `write -z${o.unmap ? ' -u' : ''} ${o.offset} ${o.length}`;
    case 'discard':
      return `discard ${o.offset} ${o.length}`;
    case 'compressed':
      return `write -c -P ${o.pattern} ${o.cluster * cs} ${cs}`;
  }
}

/** Runs the ops on an image with qemu-io (writes past the end cut to the image); returns them as text. */
function writeOps(file: string, format: string, size: number, ops: Op[], cs: number): string[] {
  const cmds = ops
    .map((o) => (o.kind === 'write' || o.kind === 'zero' || o.kind === 'discard' ? { ...o, length: Math.min(o.length, size - o.offset) } : o))
    .filter((o) => o.kind === 'compressed' || o.length > 0)
    .map((o) => opCommand(o, cs));
  const io = qemuIo(['-f', format, ...cmds.flatMap((c) => ['-c', c]), file]);
  expect(io.status, io.stderr).toBe(0);
  return cmds;
}

describeQemu('random sparse images through random convert options', () => {
  let work: { dir: string; cleanup: () => void };
  beforeAll(() => {
    work = tempDir('tsimg-convert-fuzz-');
  });
  afterAll(() => work.cleanup());

  it('tsimg convert writes what qemu-img convert writes (20 random cases)', async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(source, target, async (s, t) => {
        const dir = join(work.dir, String(run++));
        const started = Date.now();
        mkdirSync(join(dir, 'q'), { recursive: true });
        mkdirSync(join(dir, 't'), { recursive: true });
        try {
          const src = join(dir, `src.${s.format}`);
          const size = s.sectors * 512;
          const cs = 2 ** s.clusterBits;
          const create = ['create', '-f', s.format];
          if (s.format === 'qcow2') {
            const o = [`cluster_size=${cs}`];
            if (s.extendedL2) o.push('extended_l2=on');
            if (s.zstd) o.push('compression_type=zstd');
            create.push('-o', o.join(','));
          }
          const base = s.backing && join(dir, `base.${s.backing.format}`);
          if (s.backing && base) {
            const b = qemuImg(['create', '-f', s.backing.format, base, String(s.backing.sectors * 512)]);
            expect(b.status, b.stderr).toBe(0);
            writeOps(base, s.backing.format, s.backing.sectors * 512, s.backing.ops, 65536);
            create.push('-b', base, '-F', s.backing.format);
          }
          const made = qemuImg([...create, src, String(size)]);
          expect(made.status, made.stderr).toBe(0);
          const cmds = writeOps(src, s.format, size, s.ops, cs);

          // Concatenation: no -f (it would apply to both), so both are probed (a raw one with
          // qemu's probing warning).
          const args = t.mode === 'concat' && base ? [src, base] : ['-f', s.format, src];
          if (t.mode === 'B' && base) args.push('-B', base, '-F', s.backing!.format);
          args.push('-O', t.format);
          if (t.sparse !== undefined) args.push('-S', t.sparse);
          if (t.compressed) args.push('-c');
          if (t.options.length) args.push('-o', t.options.join(','));
          args.push('out');
          const [q, ts] = await Promise.all([runAsync('qemu-img', ['convert', ...args], join(dir, 'q')), inProcess(args, join(dir, 't'))]);
          const what = `qemu-img convert ${args.join(' ')} (source: ${cmds.join('; ')})`;
          expect({ status: ts.status, stderr: ts.stderr }, what).toEqual({ status: q.status, stderr: q.stderr.replaceAll('qemu-img:', 'tsimg:') });
          const qo = join(dir, 'q', 'out');
          const to = join(dir, 't', 'out');
          if (!existsSync(qo)) return;
          if (!t.compressed) {
            expect(cmpFiles(qo, to), what).toBeUndefined();
            return;
          }
          const cmp = qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', qo, to]);
          expect(cmp.status, `${what}: ${cmp.stdout}${cmp.stderr}`).toBe(0);
          const chk = qemuImg(['check', to]);
          expect(chk.status, `${what}: ${chk.stdout}${chk.stderr}`).toBe(0);
          const sq = statSync(qo).size;
          expect(Math.abs(statSync(to).size - sq), what).toBeLessThanOrEqual(sq * 0.01);
        } finally {
          if (process.env.FUZZ_TIMES) console.log(`${Date.now() - started} ms`, JSON.stringify(s).slice(0, 120), JSON.stringify(t));
          rmSync(dir, { recursive: true, force: true });
        }
      }),
      // No shrinking: each case runs two converts, and shrinking a failure took CI past the
      // timeout, which then hid the counterexample (every case is printed as it fails).
      { numRuns: Number(process.env.FUZZ_RUNS ?? 20), seed: process.env.FC_SEED ? Number(process.env.FC_SEED) : undefined, endOnFailure: true },
    );
  }, 120_000);
});
