/**
 * Random resize cross-check: fast-check makes a qcow2 image (random cluster size, refcount
 * width, extended L2, compat, maybe a persistent bitmap) and runs a random sequence of grows (with a random preallocation
 * mode), shrinks and qemu-io writes on two copies of it — every resize through qemu-img on one
 * copy and through tsimg on the other, every write through qemu-io on both. After each resize
 * the output, exit status and files must be the same. Needs `npm run build` first.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuIo } from '../../../test-images/qemu.js';
import { ResizeBench, expectSameFiles, expectSameResizeIn } from './resize-harness.js';

const KiB = 1024;

type Step =
  | { kind: 'write'; at: number; length: number; pattern: number }
  | { kind: 'grow'; by: number; prealloc: 'off' | 'metadata' | 'falloc' | 'full' }
  | { kind: 'shrink'; by: number };

interface Case {
  clusterSize: number;
  refcountBits: number;
  extendedL2: boolean;
  compat: '0.10' | '1.1';
  /** A persistent bitmap (v3 only), which qemu-io's writes mark dirty and resizes carry over. */
  bitmap: boolean;
  /** Initial virtual size in 512-byte sectors. */
  sectors: number;
  steps: Step[];
}

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    kind: fc.constant('write' as const),
    // A fraction of the image size at the time, so writes always land inside it.
    at: fc.double({ min: 0, max: 0.99, noNaN: true }),
    length: fc.integer({ min: 1, max: 200 * KiB }),
    pattern: fc.integer({ min: 1, max: 255 }),
  }),
  fc.record({
    kind: fc.constant('grow' as const),
    by: fc.integer({ min: 0, max: 4096 }).map((s) => s * 512),
    prealloc: fc.constantFrom('off' as const, 'metadata' as const, 'falloc' as const, 'full' as const),
  }),
  fc.record({ kind: fc.constant('shrink' as const), by: fc.integer({ min: 1, max: 4096 }).map((s) => s * 512) }),
);

const testCase: fc.Arbitrary<Case> = fc.record({
  clusterSize: fc.constantFrom(512, 4096, 65536),
  refcountBits: fc.constantFrom(1, 16, 64),
  extendedL2: fc.boolean(),
  compat: fc.constantFrom('0.10' as const, '1.1' as const),
  bitmap: fc.boolean(),
  sectors: fc.integer({ min: 1, max: 4096 }),
  steps: fc.array(step, { minLength: 1, maxLength: 5 }),
});

let bench: ResizeBench;

/** Plays one case; returns the label of the last step for failure messages. */
function play(c: Case): void {
  const l2 = c.extendedL2 && c.compat === '1.1' && c.clusterSize >= 16384 ? ',extended_l2=on' : '';
  const opts = `cluster_size=${c.clusterSize},refcount_bits=${c.compat === '0.10' ? 16 : c.refcountBits},compat=${c.compat}${l2}`;
  const bitmap = c.bitmap && c.compat === '1.1' ? ' && qemu-img bitmap --add -g 4096 a.qcow2 b0' : '';
  const src = bench.fixture(`qemu-img create -q -f qcow2 -o ${opts} a.qcow2 ${c.sectors * 512}${bitmap}`);
  const dirs = bench.copies(src);
  let size = c.sectors * 512;
  for (const s of c.steps) {
    if (s.kind === 'write') {
      const at = Math.floor(size * s.at);
      const length = Math.min(s.length, size - at);
      const cmd = `write -P ${s.pattern} ${at} ${length}`;
      for (const cwd of [dirs.qemu, dirs.tsimg]) expect(qemuIo(['-c', cmd, 'a.qcow2'], { cwd }).status, cmd).toBe(0);
      expectSameFiles(dirs, `after ${cmd} (${opts})`);
      continue;
    }
    const args =
      s.kind === 'grow'
        ? [...(s.prealloc === 'off' ? [] : [`--preallocation=${s.prealloc}`]), 'a.qcow2', `+${s.by}`]
        : ['--shrink', 'a.qcow2', `-${s.by}`];
    expectSameResizeIn(dirs, args, `resize ${args.join(' ')} (${opts}, ${size} bytes)`);
    const next = s.kind === 'grow' ? size + s.by : size - s.by;
    const refused = next <= 0 || (s.kind === 'grow' && s.by === 0 && s.prealloc !== 'off');
    if (!refused) size = next;
  }
}

describeQemu('tsimg resize vs qemu-img resize: random sequences', () => {
  beforeAll(() => {
    bench = new ResizeBench('tsimg-resize-fuzz-');
  });
  afterAll(() => bench.cleanup());

  it('leaves the same bytes as qemu-img after random grows, shrinks and writes', { timeout: 120_000 }, () => {
    fc.assert(
      fc.property(testCase, (c) => {
        play(c);
      }),
      { numRuns: 12, seed: 20261203 },
    );
  });
});
