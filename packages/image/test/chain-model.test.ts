/**
 * A model test of commit and rebase: random backing chains (1–3 qcow2 layers over a raw or
 * qcow2 base, mixed cluster sizes and layer sizes) with random data and zero writes at every
 * level (made by qemu-io), then a random commit (into any image below the top), safe rebase (onto
 * an image of the chain or a separate one) or flatten through @tsimg/image. A plain model of each
 * layer's guest view says what every image must read afterwards; every image must pass
 * `qemu-img check`, and qemu must read the top as the model says.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import fc from 'fast-check';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { changeBackingFile, commitImage, openImage, rebaseImage, type Image } from '../src/index.js';
import { describeQemu, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';

const K = 1024;

interface Write {
  off: number;
  len: number;
  /** 0: a zero write (qemu-io write -z), else the byte written. */
  v: number;
}

interface LayerSpec {
  size: number;
  clusterSize: number;
  writes: Write[];
}

type Op = { kind: 'commit'; depth: number } | { kind: 'rebase'; onto: number | 'other' | 'none' };

interface Scenario {
  baseRaw: boolean;
  layers: LayerSpec[]; // [0] is the base
  other: LayerSpec;
  op: Op;
}

const SECTOR = 512;

/** Sector-granular writes, and whole 64 KiB-aligned runs (so zero runs cover whole clusters too). */
const write = (size: number): fc.Arbitrary<Write> => {
  const per64k = (64 * K) / SECTOR;
  const start = fc.oneof(fc.integer({ min: 0, max: size / SECTOR - 1 }), fc.integer({ min: 0, max: size / (64 * K) - 1 }).map((c) => c * per64k));
  const count = fc.oneof(fc.integer({ min: 1, max: 160 }), fc.integer({ min: 1, max: 3 }).map((n) => n * per64k));
  return fc
    .record({ s: start, n: count, v: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 250 })) })
    .map(({ s, n, v }) => ({ off: s * SECTOR, len: Math.min(n, size / SECTOR - s) * SECTOR, v }));
};

const layer: fc.Arbitrary<LayerSpec> = fc
  .record({ size: fc.constantFrom(512 * K, 1024 * K, 1536 * K), clusterSize: fc.constantFrom(4 * K, 64 * K, 512) })
  .chain(({ size, clusterSize }) => fc.record({ size: fc.constant(size), clusterSize: fc.constant(clusterSize), writes: fc.array(write(size), { maxLength: 6 }) }));

const scenario: fc.Arbitrary<Scenario> = fc
  .record({ baseRaw: fc.boolean(), layers: fc.array(layer, { minLength: 2, maxLength: 4 }), other: layer })
  .chain((s) => {
    const above = s.layers.length - 1;
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.integer({ min: 1, max: above }).map((depth): Op => ({ kind: 'commit', depth })),
      fc.constantFrom<number | 'other' | 'none'>('other', 'none', ...Array.from({ length: above - 1 }, (_, i) => i + 1)).map((onto): Op => ({ kind: 'rebase', onto })),
    );
    return op.map((o) => ({ ...s, op: o }));
  });

function name(s: Scenario, i: number): string {
  return i === 0 && s.baseRaw ? 'l0.raw' : `l${i}.qcow2`;
}

function fmt(s: Scenario, i: number): string {
  return i === 0 && s.baseRaw ? 'raw' : 'qcow2';
}

function ok(r: { status: number; stderr: string; stdout: string }, what: string): void {
  if (r.status !== 0) throw new Error(`${what}: ${r.stdout}${r.stderr}`);
}

function applyWrites(view: Uint8Array, writes: readonly Write[]): void {
  for (const w of writes) view.fill(w.v, w.off, w.off + w.len);
}

/** Builds the chain with qemu-img and qemu-io; returns each layer's guest view. */
function build(dir: string, s: Scenario): Uint8Array[] {
  const views: Uint8Array[] = [];
  for (const [i, l] of s.layers.entries()) {
    const backing = i === 0 ? [] : ['-b', name(s, i - 1), '-F', fmt(s, i - 1)];
    const opts = fmt(s, i) === 'raw' ? [] : ['-o', `cluster_size=${l.clusterSize}`];
    ok(qemuImg(['create', '-q', '-f', fmt(s, i), ...opts, ...backing, name(s, i), String(l.size)], { cwd: dir }), 'create');
    const view = new Uint8Array(l.size);
    if (i > 0) view.set(views[i - 1]!.subarray(0, Math.min(l.size, views[i - 1]!.length)));
    applyWrites(view, l.writes);
    views.push(view);
    const cmds = l.writes.flatMap((w) => ['-c', w.v === 0 ? `write -z ${w.off} ${w.len}` : `write -P ${w.v} ${w.off} ${w.len}`]);
    if (cmds.length > 0) ok(qemuIo(['-f', fmt(s, i), ...cmds, join(dir, name(s, i))]), 'qemu-io');
  }
  ok(qemuImg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${s.other.clusterSize}`, 'other.qcow2', String(s.other.size)], { cwd: dir }), 'create');
  const cmds = s.other.writes.flatMap((w) => ['-c', w.v === 0 ? `write -z ${w.off} ${w.len}` : `write -P ${w.v} ${w.off} ${w.len}`]);
  if (cmds.length > 0) ok(qemuIo(['-f', 'qcow2', ...cmds, join(dir, 'other.qcow2')]), 'qemu-io');
  return views;
}

async function readAll(path: string): Promise<Uint8Array> {
  const img = await openImage(path);
  try {
    const out = new Uint8Array(img.size());
    await img.read(0, out);
    return out;
  } finally {
    await img.close();
  }
}

function below(top: Image, depth: number): Image {
  let cur: Image | undefined = top;
  for (let d = 0; d < depth; d++) cur = cur?.backing;
  if (cur === undefined) throw new Error(`no image ${depth} below the top`);
  return cur;
}

/** Runs the scenario's operation; returns the expected guest view of every layer afterwards. */
async function operate(dir: string, s: Scenario, views: Uint8Array[]): Promise<Uint8Array[]> {
  const top = s.layers.length - 1;
  const topPath = join(dir, name(s, top));
  const expected = views.map((v) => v.slice());
  if (s.op.kind === 'commit') {
    const depth = s.op.depth;
    const grow = views[top - depth]!.length < views[top]!.length;
    const img = await openImage(topPath, { readOnly: false, writableBacking: { depth, resize: grow }, unmap: true });
    try {
      await commitImage(img, below(img, depth), { drop: depth > 1 });
    } finally {
      await img.close();
    }
    // The base holds the top's view (grown to its size when smaller); the rest of the chain reads as before.
    const b = top - depth;
    const grown = new Uint8Array(Math.max(views[b]!.length, views[top]!.length));
    grown.set(views[b]!);
    grown.set(views[top]!);
    expected[b] = grown;
    for (let i = b + 1; i < top; i++) {
      // An image between reads its own data over the one below (zeroes past its end).
      const v = new Uint8Array(views[i]!.length);
      v.set(expected[i - 1]!.subarray(0, Math.min(v.length, expected[i - 1]!.length)));
      applyWrites(v, s.layers[i]!.writes);
      expected[i] = v;
    }
    return expected;
  }
  const onto = s.op.onto;
  const img = await openImage(topPath, { readOnly: false });
  let other: Image | undefined;
  try {
    let newBacking: Image | undefined;
    let newName: string | undefined;
    let newFormat: string | undefined;
    if (onto === 'other') {
      other = await openImage(join(dir, 'other.qcow2'));
      newBacking = other;
      [newName, newFormat] = ['other.qcow2', 'qcow2'];
    } else if (onto !== 'none') {
      newBacking = below(img, top - onto);
      [newName, newFormat] = [name(s, onto), fmt(s, onto)];
    }
    await rebaseImage(img, { newBacking, inChain: typeof onto === 'number' });
    await changeBackingFile(img, newName, newFormat);
  } finally {
    await other?.close();
    await img.close();
  }
  return expected; // every view stays as it was
}

describeQemu('commit and rebase against a model of the guest view', () => {
  let work: { dir: string; cleanup: () => void };
  beforeAll(() => {
    work = tempDir('tsimg-chain-model-');
  });
  afterAll(() => work.cleanup());

  it('random chains, writes and commit / rebase / flatten', { timeout: 120_000 }, async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(scenario, async (s) => {
        const dir = join(work.dir, String(run++));
        mkdirSync(dir);
        const views = build(dir, s);
        const expected = await operate(dir, s, views);
        for (let i = 0; i < s.layers.length; i++) {
          const path = join(dir, name(s, i));
          const got = await readAll(path);
          expect(Buffer.from(got).equals(Buffer.from(expected[i]!)), `${name(s, i)} reads as the model says`).toBe(true);
          if (fmt(s, i) === 'qcow2') {
            const check = qemuImg(['check', path]);
            expect(check.status, `${name(s, i)}: ${check.stdout}${check.stderr}`).toBe(0);
          }
        }
        const topPath = join(dir, name(s, s.layers.length - 1));
        const raw = join(dir, 'top.raw');
        ok(qemuImg(['convert', '-O', 'raw', topPath, raw]), 'convert');
        expect(readFileSync(raw).equals(Buffer.from(expected.at(-1)!)), 'qemu reads the top as the model says').toBe(true);
      }),
      { numRuns: 14, seed: Number(process.env.FC_SEED ?? 1203) },
    );
  });
});
