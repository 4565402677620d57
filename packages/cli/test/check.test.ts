/**
 * `tsimg check` against qemu-img 7.2 on damaged images: qemu makes the image, a poke damages
 * it, then both programs check (and repair) their own copy. stdout, stderr (with `qemu-img:`
 * read as `tsimg:`) and the exit status must be identical; after a repair, qemu-img must judge
 * tsimg's result as it judges its own, and the guest data must be the same.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { asTsimg, describeQemu, must, qemuImg, qemuIo, tempDir, tsimg, type RunResult } from '../../../test-images/qemu.js';
import { poke, type Qcow2Poker } from '../../../test-images/mutate.js';
import { printf2, formatCheckHuman } from '../src/check-output.js';
import { emptyResult } from '../../qcow2/src/check/check.js';

describe('printf2 (glibc %0.2f)', () => {
  it('rounds exact ties to even, like glibc', () => {
    expect(printf2(0.125)).toBe('0.12');
    expect(printf2(0.375)).toBe('0.38');
    expect(printf2(12.5)).toBe('12.50');
    expect(printf2(100)).toBe('100.00');
    expect(printf2(0.49)).toBe('0.49');
    expect(printf2((5 * 100) / 1024)).toBe('0.49');
    expect(printf2(2.675)).toBe('2.67'); // binary value is below the tie
    expect(printf2(1 / 3)).toBe('0.33');
  });

  it('prints the report sections in qemu order', () => {
    const r = { ...emptyResult(), corruptions: 2, leaks: 1, checkErrors: 1, totalClusters: 8, allocatedClusters: 1, imageEndOffset: 512 };
    expect(formatCheckHuman(r)).toBe(
      '\n2 errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n' +
        '\n1 leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n' +
        '\n1 internal errors have occurred during the check.\n' +
        '1/8 = 12.50% allocated, 0.00% fragmented, 0.00% compressed clusters\nImage end offset: 512\n',
    );
  });
});

interface Scenario {
  name: string;
  create?: string[];
  /** qemu-io commands writing the guest data. */
  io?: string[];
  /** Extra preparation with qemu tools (snapshots, bitmaps). */
  prepare?: (path: string) => void;
  damage?: (p: Qcow2Poker) => void;
  /** Repair modes to compare besides a plain check. */
  repairs?: Array<'leaks' | 'all'>;
  /** Also compare --output=json. */
  json?: boolean;
}

const DATA_IO = ['write -P 0xab 0 256k', 'write -c -P 0x11 1M 64k', 'write -P 0xcd 2M 64k'];

const SCENARIOS: Scenario[] = [
  { name: 'clean image', repairs: ['all'], json: true },
  { name: 'clean, refcount_bits=1', create: ['-o', 'refcount_bits=1'] },
  { name: 'clean, refcount_bits=64', create: ['-o', 'refcount_bits=64'] },
  { name: 'clean, v2 (compat=0.10)', create: ['-o', 'compat=0.10'] },
  { name: 'clean, 512-byte clusters', create: ['-o', 'cluster_size=512'] },
  { name: 'clean, 2 MiB clusters', create: ['-o', 'cluster_size=2M'], io: ['write -P 0xab 0 256k', 'write -c -P 0x11 4M 2M'] },
  { name: 'clean, extended L2', create: ['-o', 'extended_l2=on'] },
  {
    name: 'clean, snapshot and bitmap',
    prepare: (f) => {
      must('qemu-img', ['snapshot', '-c', 'snap1', f]);
      must('qemu-io', ['-c', 'write -P 0xee 0 64k', f]);
      must('qemu-img', ['bitmap', '--add', f, 'bm0']);
    },
  },
  { name: 'leaked cluster', damage: (p) => p.setL2Entry(0, 1, 0n), repairs: ['leaks', 'all'], json: true },
  { name: 'refcount too low (0)', damage: (p) => p.setRefcount(p.dataOffset(0, 0) / p.clusterSize, 0), repairs: ['leaks', 'all'] },
  { name: 'refcount too high (2)', damage: (p) => p.setRefcount(p.dataOffset(0, 0) / p.clusterSize, 2), repairs: ['leaks', 'all'] },
  {
    name: 'refcount too low, 8-bit refcounts',
    create: ['-o', 'refcount_bits=8'],
    damage: (p) => p.setRefcount(p.dataOffset(0, 1) / p.clusterSize, 0),
    repairs: ['all'],
  },
  {
    name: 'OFLAG_COPIED missing on a data cluster',
    damage: (p) => p.setL2Entry(0, 0, p.l2Entry(0, 0) & ~(1n << 63n)),
    repairs: ['leaks', 'all'],
    json: true,
  },
  {
    name: 'OFLAG_COPIED missing on an L2 table',
    damage: (p) => p.setL1Entry(0, p.l1Entry(0) & ~(1n << 63n)),
    repairs: ['all'],
  },
  { name: 'L2 entry beyond the end of the file', damage: (p) => p.setL2Entry(0, 2, 0x8000_0000_fff0_0000n), repairs: ['all'] },
  { name: 'misaligned data cluster', damage: (p) => p.setL2Entry(0, 3, p.l2Entry(0, 3) + 0x200n), repairs: ['all'] },
  {
    name: 'misaligned preallocated zero cluster',
    damage: (p) => p.setL2Entry(0, 3, (p.l2Entry(0, 3) + 0x200n) | 1n),
    repairs: ['leaks', 'all'],
  },
  { name: 'L2 entry pointing at the L1 table', damage: (p) => p.setL2Entry(0, 3, (1n << 63n) | BigInt(p.l1Offset)), repairs: ['all'] },
  { name: 'L2 entry with reserved bits', damage: (p) => p.setL2Entry(0, 2, p.l2Entry(0, 2) | 0x0100_0000_0000_0000n) },
  { name: 'L1 entry with reserved bits', damage: (p) => p.setL1Entry(0, p.l1Entry(0) | 0x0200_0000_0000_0000n) },
  {
    name: 'compressed cluster with COPIED',
    damage: (p) => p.setL2Entry(0, 16, p.l2Entry(0, 16) | (1n << 63n)),
  },
  { name: 'refcount table entry zeroed', damage: (p) => p.setReftableEntry(0, 0n), repairs: ['leaks', 'all'] },
  { name: 'refcount table entry unaligned', damage: (p) => p.setReftableEntry(0, p.reftableEntry(0) | 0x100n), repairs: ['all'] },
  { name: 'refcount block outside the image', damage: (p) => p.setReftableEntry(1, 0x1000_0000n), repairs: ['all'] },
  {
    name: 'leak in an image with a snapshot',
    prepare: (f) => {
      must('qemu-img', ['snapshot', '-c', 'snap1', f]);
      must('qemu-io', ['-c', 'write -P 0xee 0 128k', f]);
    },
    damage: (p) => p.setL2Entry(0, 1, 0n),
    repairs: ['leaks', 'all'],
  },
  ...(
    [
      ['snapshot entry with too much extra data', (p: Qcow2Poker) => p.setU32(p.snapshotsOffset + 36, 2000)],
      ['snapshot entry without extra data (incomplete)', (p: Qcow2Poker) => p.setU32(p.snapshotsOffset + 36, 0)],
      ['nb_snapshots beyond the table', (p: Qcow2Poker) => p.setU32(60, 3)],
      ['nb_snapshots beyond the limit', (p: Qcow2Poker) => p.setU32(60, 70000)],
      ['snapshot L1 table unaligned', (p: Qcow2Poker) => p.setU64(p.snapshotsOffset, p.u64(p.snapshotsOffset) + 0x100n)],
    ] as const
  ).map(
    ([name, damage]): Scenario => ({
      name,
      prepare: (f) => {
        must('qemu-img', ['snapshot', '-c', 'one', f]);
        must('qemu-io', ['-c', 'write -P 0x22 0 64k', f]);
        must('qemu-img', ['snapshot', '-c', 'two', f]);
      },
      damage,
      // qemu-img itself takes seconds to rewrite a table of 65536 snapshots: plain check only
      repairs: name.includes('limit') ? [] : ['all'],
    }),
  ),
  {
    name: 'dirty lazy-refcounts image',
    create: ['-o', 'lazy_refcounts=on'],
    prepare: (f) => {
      // qemu-io's abort leaves the dirty bit set and the refcounts stale
      qemuIo(['-c', 'write -P 0x77 4M 128k', '-c', 'write -P 0x78 0 64k', '-c', 'abort', f]);
    },
    repairs: ['leaks', 'all'],
  },
];

function same(t: RunResult, q: RunResult, tFile: string, qFile: string): void {
  const norm = (s: string, f: string): string => s.replaceAll(f, 'IMG');
  expect({ status: t.status, stdout: norm(t.stdout, tFile), stderr: norm(t.stderr, tFile) }).toEqual({
    status: q.status,
    stdout: norm(q.stdout, qFile),
    stderr: norm(asTsimg(q.stderr).replaceAll("'qemu-img --help'", "'tsimg --help'"), qFile),
  });
}

describeQemu('tsimg check vs qemu-img check', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-check-'));
  });
  afterAll(() => cleanup());

  for (const sc of SCENARIOS) {
    describe(sc.name, () => {
      let src: string;
      beforeAll(() => {
        src = join(dir, `${sc.name.replace(/[^a-z0-9]+/gi, '_')}.qcow2`);
        must('qemu-img', ['create', '-f', 'qcow2', ...(sc.create ?? []), src, '64M']);
        for (const c of sc.io ?? DATA_IO) must('qemu-io', ['-c', c, src]);
        sc.prepare?.(src);
        if (sc.damage) poke(src, sc.damage);
      });

      const modes: Array<{ label: string; args: string[]; repair: boolean }> = [
        { label: 'check', args: [], repair: false },
        ...(sc.json ? [{ label: 'check --output=json', args: ['--output=json'], repair: false }] : []),
        ...(sc.repairs ?? []).map((r) => ({ label: `check -r ${r}`, args: ['-r', r], repair: true })),
        ...(sc.json && sc.repairs?.includes('all')
          ? [{ label: 'check -r all --output=json', args: ['-r', 'all', '--output=json'], repair: true }]
          : []),
      ];
      for (const m of modes) {
        it(m.label, () => {
          const q = join(dir, 'q.qcow2');
          const t = join(dir, 't.qcow2');
          copyFileSync(src, q);
          copyFileSync(src, t);
          const qr = qemuImg(['check', ...m.args, q]);
          const tr = tsimg(['check', ...m.args, t]);
          same(tr, qr, t, q);
          if (!m.repair) {
            expect(readFileSync(t).equals(readFileSync(src))).toBe(true); // a check without -r writes nothing
            return;
          }
          // qemu-img judges both repaired files alike, and they hold the same guest data
          const qAfter = qemuImg(['check', q]);
          const tAfter = qemuImg(['check', t]);
          same({ ...tAfter, stderr: asTsimg(tAfter.stderr) }, qAfter, t, q);
          const qRaw = join(dir, 'q.raw');
          const tRaw = join(dir, 't.raw');
          const qc = qemuImg(['convert', '-O', 'raw', q, qRaw]);
          const tc = qemuImg(['convert', '-O', 'raw', t, tRaw]);
          expect(tc.status).toBe(qc.status);
          if (qc.status === 0) expect(readFileSync(tRaw).equals(readFileSync(qRaw))).toBe(true);
        });
      }
    });
  }

  describe('command line', () => {
    it('raw images have no checks (63), with or without -f', () => {
      const f = join(dir, 'plain.raw');
      writeFileSync(f, Buffer.alloc(65536, 7));
      for (const args of [['check', f], ['check', '-f', 'raw', f]]) {
        const q = qemuImg(args);
        const t = tsimg(args);
        expect(t.status).toBe(63);
        same(t, q, f, f);
      }
    });

    it('usage errors and open errors match qemu-img', () => {
      const img = join(dir, 'cl.qcow2');
      must('qemu-img', ['create', '-f', 'qcow2', img, '1M']);
      const cases = [
        ['check'],
        ['check', '-r', 'foo', img],
        ['check', '--output=xml', img],
        ['check', '-T', 'bogus', img],
        ['check', '-x', img],
        ['check', join(dir, 'missing.qcow2')],
        ['check', '-f', 'nosuchfmt', img],
        ['check', '-q', img],
        ['check', '-U', '--output', 'json', img],
        ['check', '-T', 'none', img, '-q'],
      ];
      for (const args of cases) same(tsimg(args), qemuImg(args), img, img);
    });

    it('opens backing files and external data files as qemu-img does', () => {
      const base = join(dir, 'chain-base.qcow2');
      const top = join(dir, 'chain-top.qcow2');
      must('qemu-img', ['create', '-f', 'qcow2', base, '4M']);
      must('qemu-img', ['create', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
      must('qemu-io', ['-c', 'write -P 9 0 64k', top]);
      const withData = join(dir, 'with-data.qcow2');
      const data = join(dir, 'with-data.raw');
      must('qemu-img', ['create', '-f', 'qcow2', '-o', `data_file=${data}`, withData, '4M']);
      must('qemu-io', ['-c', 'write -P 3 0 1M', withData]);
      same(tsimg(['check', top]), qemuImg(['check', top]), top, top);
      same(tsimg(['check', withData]), qemuImg(['check', withData]), withData, withData);
      must('mv', [base, `${base}.away`]);
      must('mv', [data, `${data}.away`]);
      same(tsimg(['check', top]), qemuImg(['check', top]), top, top);
      same(tsimg(['check', withData]), qemuImg(['check', withData]), withData, withData);
    });
  });
});
