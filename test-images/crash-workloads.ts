/**
 * Crash-safety workloads (issue 3): small guest operation sequences over qemu-made images, and a
 * model of what a crash may leave behind — per 512-byte sector, the set of values it may read as.
 *
 * Every value a workload writes fills whole sectors with one byte, and the base images are built
 * the same way, so a sector of the result is right when it is uniform and its byte is one the
 * model allows. Sectors are the unit because the fault wrapper never tears a single write.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AmendOptions } from '@tsimg/qcow2';
import { qemuImg, qemuIo, type RunResult } from './qemu.js';

export const SECTOR = 512;

/** One guest operation. Offsets and lengths are multiples of 512. */
export type Step =
  | { op: 'write'; off: number; len: number; v: number }
  | { op: 'zero'; off: number; len: number; unmap?: boolean }
  | { op: 'discard'; off: number; len: number }
  /** writeCompressed of the whole cluster at `off` (cluster-aligned, unallocated). */
  | { op: 'compress'; off: number; v: number }
  /** A resize; growing may preallocate the new area (Qcow2Image.truncate's `preallocation`). */
  | { op: 'resize'; size: number; prealloc?: 'metadata' | 'falloc' | 'full' }
  | { op: 'flush' }
  /** Internal snapshots (qemu-img snapshot -c / -a / -d): names are unique within a workload. */
  | { op: 'snapshot-create'; name: string }
  | { op: 'snapshot-apply'; name: string }
  | { op: 'snapshot-delete'; name: string }
  /** qemu-img bitmap's operations (Qcow2Image.bitmapAction): the guest data stays as it is. */
  | { op: 'bitmap'; action: 'add'; name: string; granularity?: number }
  | { op: 'bitmap'; action: 'remove' | 'clear' | 'enable' | 'disable'; name: string }
  | { op: 'bitmap'; action: 'merge'; name: string; source: string }
  /** qemu-img amend's options on the open image (Qcow2Image.amend); guest content stays. */
  | { op: 'amend'; options: AmendOptions };

/** What a workload's base image looks like, as far as the test needs to know. */
export interface Workload {
  name: string;
  /** Builds `base.qcow2` (and `backing.qcow2` when `backing`) in `dir` with qemu-img / qemu-io. */
  prepare(dir: string): void;
  steps: Step[];
  clusterSize: number;
  /** The image has a backing file `backing.qcow2` (opened read-only, must never change). */
  backing?: boolean;
  /** lazy_refcounts=on: `qemu-img check -r all` must leave it clean (qemu's dirty-bit rule). */
  lazy?: boolean;
  /**
   * Snapshot operations change refcounts and the COPIED flags that mirror them in different
   * sectors: a crash between may leave flags qemu-img check counts as errors, which the test
   * then accepts only in the harmless direction (see onlyHarmlessCopiedFlags in crash.test.ts).
   */
  copiedWindow?: boolean;
  /** Header fields the fault-free run must change, to prove the workload reaches its path. */
  moves?: ('l1TableOffset' | 'refcountTableOffset')[];
}

function ok(r: RunResult, what: string): void {
  if (r.status !== 0) throw new Error(`${what} failed (${r.status}): ${r.stderr.trim()}`);
}

function create(dir: string, opts: string, size: string, extra: string[] = []): void {
  ok(qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, ...extra, 'base.qcow2', size], { cwd: dir }), 'qemu-img create');
}

function io(dir: string, file: string, ...cmds: string[]): void {
  ok(qemuIo(['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), join(dir, file)]), `qemu-io ${cmds.join('; ')}`);
}

/** backing.qcow2 in `dir`: 4 MiB whose sector `s` holds `value(s)`. */
function backingImage(dir: string, value: (s: number) => number): void {
  writeFileSync(join(dir, 'backing.raw'), sectors(4 * M, value));
  ok(qemuImg(['convert', '-q', '-f', 'raw', '-O', 'qcow2', 'backing.raw', 'backing.qcow2'], { cwd: dir }), 'convert backing');
}

/** A raw buffer whose sector `s` is filled with `value(s)`. */
function sectors(bytes: number, value: (s: number) => number): Uint8Array {
  const b = new Uint8Array(bytes);
  for (let s = 0; s < bytes / SECTOR; s++) b.fill(value(s), s * SECTOR, (s + 1) * SECTOR);
  return b;
}

const K = 1024;
const M = 1024 * K;
/** A snapshot name of 100 bytes. */
const LONG_NAME = 'n'.repeat(100);

export const WORKLOADS: Workload[] = [
  {
    name: 'allocating writes (4 KiB clusters, two L2 tables)',
    clusterSize: 4 * K,
    prepare: (dir) => create(dir, 'cluster_size=4096', '4M'),
    steps: [
      { op: 'write', off: 0, len: 8 * K, v: 1 },
      { op: 'write', off: 12 * K, len: 4 * K, v: 2 },
      { op: 'flush' },
      { op: 'write', off: 2 * M - 4 * K, len: 8 * K, v: 3 },
      { op: 'write', off: 0, len: 4 * K, v: 4 },
      { op: 'flush' },
      { op: 'write', off: 1 * M, len: 64 * K, v: 5 },
      { op: 'write', off: 3 * M + 512, len: K, v: 6 },
    ],
  },
  {
    name: 'COW over a backing file (partial clusters)',
    clusterSize: 4 * K,
    backing: true,
    prepare: (dir) => {
      backingImage(dir, (s) => (s % 250) + 3);
      create(dir, 'cluster_size=4096', '4M', ['-b', 'backing.qcow2', '-F', 'qcow2']);
    },
    steps: [
      { op: 'write', off: K, len: 512, v: 1 },
      { op: 'write', off: 5 * K, len: 5 * K, v: 2 },
      { op: 'flush' },
      { op: 'write', off: 2 * M - K, len: 2 * K, v: 3 },
      { op: 'write', off: 2 * K, len: K, v: 4 },
      { op: 'flush' },
      { op: 'write', off: 64 * K + 512, len: 127 * K, v: 5 },
      { op: 'write', off: 3 * M + 3 * K, len: 512, v: 6 },
    ],
  },
  {
    name: 'refcount table growth (512 B clusters, refcount_bits=64)',
    clusterSize: 512,
    moves: ['refcountTableOffset'],
    prepare: (dir) => {
      create(dir, 'cluster_size=512,refcount_bits=64', '4M');
      // Fill the host file close to the 2 MiB the first refcount table cluster covers
      // (64 refcount blocks x 64 clusters x 512 B), so the workload needs a bigger table.
      io(dir, 'base.qcow2', 'write -P 7 0 1900k');
    },
    steps: [
      { op: 'write', off: 1900 * K, len: 16 * K, v: 1 },
      { op: 'flush' },
      { op: 'write', off: 2 * M, len: 64 * K, v: 2 },
      { op: 'write', off: 3 * M, len: 8 * K, v: 3 },
      { op: 'flush' },
      { op: 'write', off: 3 * M + 64 * K, len: 4 * K, v: 4 },
    ],
  },
  {
    name: 'L2 allocation and L1 growth (resize up, then write far)',
    clusterSize: 512,
    moves: ['l1TableOffset'],
    prepare: (dir) => {
      create(dir, 'cluster_size=512', '1M');
      io(dir, 'base.qcow2', 'write -P 9 0 8k');
    },
    steps: [
      { op: 'write', off: 64 * K, len: K, v: 1 },
      { op: 'resize', size: 8 * M },
      { op: 'write', off: 8 * M - K, len: K, v: 2 },
      { op: 'flush' },
      { op: 'write', off: 4 * M + 512, len: 40 * K, v: 3 },
      { op: 'write', off: 0, len: 512, v: 4 },
    ],
  },
  {
    name: 'preallocated growth (metadata) with L1 growth across a cluster, then plain growth',
    clusterSize: 512,
    moves: ['l1TableOffset'],
    prepare: (dir) => {
      // 512-byte clusters: one L1 cluster (64 entries) maps 2 MiB, so growing past it moves
      // the L1 table into two clusters.
      create(dir, 'cluster_size=512', `${2 * M - 32 * K}`);
      io(dir, 'base.qcow2', 'write -P 9 0 16k', 'write -P 8 1980k 4k');
    },
    steps: [
      { op: 'write', off: 100 * K, len: K, v: 1 },
      { op: 'resize', size: 2 * M + 24 * K, prealloc: 'metadata' },
      { op: 'write', off: 2 * M + 512, len: 2 * K, v: 2 },
      { op: 'flush' },
      { op: 'resize', size: 2 * M + 64 * K },
      { op: 'write', off: 0, len: 512, v: 3 },
    ],
  },
  {
    name: 'preallocated growth (falloc, full): new refcount table, data area after it',
    clusterSize: 512,
    moves: ['refcountTableOffset'],
    prepare: (dir) => {
      create(dir, 'cluster_size=512,refcount_bits=64', '64k');
      io(dir, 'base.qcow2', 'write -P 7 0 20k');
    },
    steps: [
      { op: 'resize', size: 100 * K, prealloc: 'falloc' },
      { op: 'write', off: 80 * K, len: K, v: 1 },
      { op: 'flush' },
      { op: 'resize', size: 120 * K + 512, prealloc: 'full' },
      { op: 'write', off: 110 * K, len: K, v: 2 },
    ],
  },
  {
    name: 'resizes of an image with persistent bitmaps (marked in use at the open, resized with the image, stored at the close)',
    clusterSize: 4 * K,
    prepare: (dir) => {
      create(dir, 'cluster_size=4096', '1M');
      ok(qemuImg(['bitmap', '--add', 'base.qcow2', 'b0'], { cwd: dir }), 'bitmap --add');
      io(dir, 'base.qcow2', 'write -P 4 0 64k', 'write -P 5 512k 8k');
    },
    steps: [
      { op: 'resize', size: 2 * M },
      { op: 'write', off: 1 * M + 512 * K, len: 4 * K, v: 1 },
      { op: 'flush' },
      { op: 'resize', size: 768 * K },
      { op: 'write', off: 4 * K, len: K, v: 2 },
    ],
  },
  {
    // The open marks the bitmaps in use in place; a remove writes a new directory at once; the
    // close stores every bitmap anew (data, tables, directory, header, then the old ones freed).
    name: 'persistent bitmaps: add, merge, clear, remove, and the store at close',
    clusterSize: 4 * K,
    prepare: (dir) => {
      create(dir, 'cluster_size=4096', '1M');
      ok(qemuImg(['bitmap', '--add', '-g', '4k', 'base.qcow2', 'b0'], { cwd: dir }), 'bitmap --add');
      ok(qemuImg(['bitmap', '--add', '-g', '512', '--disable', 'base.qcow2', 'b1'], { cwd: dir }), 'bitmap --add');
      io(dir, 'base.qcow2', 'write -P 4 0 64k', 'write -P 5 512k 8k');
    },
    steps: [
      { op: 'write', off: 0, len: 8 * K, v: 1 },
      { op: 'bitmap', action: 'add', name: 'n1', granularity: 512 },
      { op: 'write', off: 64 * K, len: 4 * K, v: 2 },
      { op: 'bitmap', action: 'merge', name: 'n1', source: 'b1' },
      { op: 'flush' },
      { op: 'bitmap', action: 'remove', name: 'b1' },
      { op: 'bitmap', action: 'clear', name: 'b0' },
      { op: 'write', off: 128 * K, len: 4 * K, v: 3 },
    ],
  },
  {
    name: 'zero writes (v3 zero flag) and discards',
    clusterSize: 4 * K,
    prepare: (dir) => {
      create(dir, 'cluster_size=4096', '4M');
      io(dir, 'base.qcow2', 'write -P 5 0 1M');
    },
    steps: [
      { op: 'zero', off: 0, len: 16 * K },
      { op: 'zero', off: 16 * K, len: 16 * K, unmap: true },
      { op: 'discard', off: 64 * K, len: 64 * K },
      { op: 'flush' },
      { op: 'zero', off: 200 * K + 512, len: K },
      { op: 'write', off: 4 * K, len: 8 * K, v: 9 },
      { op: 'write', off: 20 * K, len: 4 * K, v: 10 },
      { op: 'flush' },
      { op: 'discard', off: 0, len: 512 * K },
      { op: 'zero', off: 2 * M, len: 8 * K, unmap: true },
      { op: 'write', off: 8 * K, len: 4 * K, v: 11 },
    ],
  },
  {
    name: 'discard and zero-unmap, then writes that reuse the freed clusters',
    clusterSize: 4 * K,
    prepare: (dir) => {
      create(dir, 'cluster_size=4096', '4M');
      io(dir, 'base.qcow2', 'write -P 5 0 64k');
    },
    steps: [
      { op: 'discard', off: 0, len: 8 * K },
      { op: 'write', off: 1 * M, len: 4 * K, v: 1 },
      { op: 'zero', off: 16 * K, len: 4 * K, unmap: true },
      { op: 'write', off: 1 * M + 64 * K, len: 8 * K, v: 2 },
      { op: 'flush' },
      { op: 'write', off: 32 * K + 512, len: K, v: 3 },
    ],
  },
  {
    name: 'writes over compressed clusters',
    clusterSize: 4 * K,
    prepare: (dir) => {
      writeFileSync(join(dir, 'data.raw'), sectors(1 * M, (s) => (s % 200) + 20));
      ok(
        qemuImg(['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', 'data.raw', 'base.qcow2'], { cwd: dir }),
        'convert -c',
      );
      ok(qemuImg(['resize', '-q', 'base.qcow2', '4M'], { cwd: dir }), 'resize');
    },
    steps: [
      { op: 'write', off: 4 * K + 512, len: K, v: 1 },
      { op: 'write', off: 16 * K, len: 4 * K, v: 2 },
      { op: 'flush' },
      { op: 'zero', off: 32 * K, len: 8 * K, unmap: true },
      { op: 'discard', off: 48 * K, len: 8 * K },
      { op: 'compress', off: 2 * M, v: 3 },
      { op: 'flush' },
      { op: 'write', off: 2 * M + 512, len: 512, v: 4 },
      { op: 'write', off: 100 * K, len: 12 * K, v: 5 },
    ],
  },
  {
    name: 'shrinking resize (discard, L1 and refcount table shrink, file truncation), then growing again',
    clusterSize: 4 * K,
    prepare: (dir) => {
      create(dir, 'cluster_size=4096', '4M');
      io(dir, 'base.qcow2', 'write -P 6 0 256k', 'write -P 7 3M 512k');
    },
    steps: [
      { op: 'write', off: 3 * M + 768 * K, len: 64 * K, v: 1 },
      { op: 'flush' },
      { op: 'resize', size: 2 * M },
      { op: 'write', off: 1 * M + 512, len: K, v: 2 },
      { op: 'flush' },
      { op: 'resize', size: 4 * M },
      { op: 'write', off: 3 * M, len: 4 * K, v: 3 },
    ],
  },
  {
    name: 'extended L2 entries (subclusters) over a backing file',
    clusterSize: 16 * K,
    backing: true,
    prepare: (dir) => {
      backingImage(dir, (s) => (s % 240) + 10);
      create(dir, 'cluster_size=16384,extended_l2=on', '4M', ['-b', 'backing.qcow2', '-F', 'qcow2']);
    },
    steps: [
      { op: 'write', off: K, len: 512, v: 1 },
      { op: 'zero', off: 4 * K, len: 4 * K },
      { op: 'write', off: 16 * K + K, len: 2 * K, v: 2 },
      { op: 'flush' },
      { op: 'discard', off: 32 * K, len: 16 * K },
      { op: 'zero', off: 64 * K, len: 32 * K, unmap: true },
      { op: 'write', off: 100 * K, len: 20 * K, v: 3 },
      { op: 'flush' },
      { op: 'write', off: 2 * M - K, len: 2 * K, v: 4 },
      { op: 'zero', off: 2 * K, len: 512 },
    ],
  },
  {
    name: 'internal snapshots: create, write, apply, delete (4 KiB clusters)',
    copiedWindow: true,
    clusterSize: 4 * K,
    prepare: (dir) => {
      create(dir, 'cluster_size=4096', '4M');
      io(dir, 'base.qcow2', 'write -P 5 0 64k', 'write -P 6 2M 16k');
    },
    steps: [
      { op: 'snapshot-create', name: 's1' },
      { op: 'write', off: 4 * K, len: 8 * K, v: 1 },
      { op: 'snapshot-create', name: 's2' },
      { op: 'write', off: 4 * K + 512, len: 512, v: 3 },
      { op: 'zero', off: 16 * K, len: 8 * K, unmap: true },
      { op: 'snapshot-apply', name: 's1' },
      { op: 'write', off: 2 * M, len: 4 * K, v: 4 },
      { op: 'snapshot-delete', name: 's2' },
      { op: 'snapshot-delete', name: 's1' },
    ],
  },
  {
    name: 'internal snapshots: extended L2 over a backing file, compressed clusters',
    copiedWindow: true,
    clusterSize: 16 * K,
    backing: true,
    prepare: (dir) => {
      backingImage(dir, (s) => (s % 240) + 10);
      create(dir, 'cluster_size=16384,extended_l2=on', '4M', ['-b', 'backing.qcow2', '-F', 'qcow2']);
      io(dir, 'base.qcow2', 'write -P 7 0 8k', 'write -P 8 1M 64k');
    },
    steps: [
      { op: 'compress', off: 2 * M, v: 1 },
      { op: 'snapshot-create', name: 'a' },
      { op: 'write', off: K, len: 512, v: 2 },
      { op: 'write', off: 2 * M + 512, len: 512, v: 3 },
      { op: 'discard', off: 1 * M, len: 32 * K },
      { op: 'snapshot-apply', name: 'a' },
      { op: 'write', off: 1 * M + 512, len: K, v: 4 },
      { op: 'snapshot-delete', name: 'a' },
    ],
  },
  {
    name: 'internal snapshots: the snapshot table outgrows a cluster (512 B clusters, v2)',
    copiedWindow: true,
    clusterSize: 512,
    prepare: (dir) => {
      create(dir, 'cluster_size=512,compat=0.10', '1M');
      io(dir, 'base.qcow2', 'write -P 9 0 16k');
    },
    // Entries of about 170 bytes: the fourth takes the table into a second cluster.
    steps: [
      { op: 'snapshot-create', name: `first-${LONG_NAME}` },
      { op: 'snapshot-create', name: `second-${LONG_NAME}` },
      { op: 'write', off: 2 * K, len: 2 * K, v: 1 },
      { op: 'snapshot-create', name: `third-${LONG_NAME}` },
      { op: 'snapshot-create', name: `fourth-${LONG_NAME}` },
      { op: 'snapshot-delete', name: `second-${LONG_NAME}` },
      { op: 'snapshot-apply', name: `first-${LONG_NAME}` },
    ],
  },
  {
    name: 'lazy_refcounts=on',
    clusterSize: 4 * K,
    lazy: true,
    prepare: (dir) => {
      create(dir, 'cluster_size=4096,lazy_refcounts=on', '4M');
      io(dir, 'base.qcow2', 'write -P 8 0 256k');
    },
    steps: [
      { op: 'write', off: 1 * M, len: 16 * K, v: 1 },
      { op: 'write', off: 4 * K, len: 4 * K, v: 2 },
      { op: 'flush' },
      { op: 'discard', off: 64 * K, len: 16 * K },
      { op: 'write', off: 2 * M + 512, len: 2 * K, v: 3 },
      { op: 'zero', off: 128 * K, len: 8 * K, unmap: true },
      { op: 'flush' },
      { op: 'write', off: 3 * M, len: 32 * K, v: 4 },
    ],
  },
  {
    name: 'amend: compat=0.10 over a backing file (zero clusters expanded, a snapshot), then compat=1.1',
    clusterSize: 4 * K,
    backing: true,
    copiedWindow: true,
    prepare: (dir) => {
      backingImage(dir, (s) => (s % 200) + 20);
      create(dir, 'cluster_size=4096', '1M', ['-b', 'backing.qcow2', '-F', 'qcow2']);
      io(dir, 'base.qcow2', 'write -P 5 0 16k', 'write -z 64k 8k', 'write -z -u 4k 4k');
    },
    steps: [
      { op: 'snapshot-create', name: 's' },
      { op: 'zero', off: 8 * K, len: 4 * K },
      { op: 'amend', options: { compat: '0.10' } },
      { op: 'write', off: 200 * K, len: K, v: 1 },
      { op: 'amend', options: { compat: '1.1' } },
      { op: 'write', off: 300 * K, len: K, v: 2 },
    ],
  },
  {
    name: 'amend: lazy_refcounts off on a dirty image, then on again',
    clusterSize: 4 * K,
    lazy: true,
    prepare: (dir) => {
      create(dir, 'cluster_size=4096,lazy_refcounts=on', '1M');
      io(dir, 'base.qcow2', 'write -P 8 0 32k');
    },
    steps: [
      { op: 'write', off: 256 * K, len: 8 * K, v: 1 },
      { op: 'write', off: 4 * K, len: K, v: 2 },
      { op: 'amend', options: { lazyRefcounts: false } },
      { op: 'write', off: 512 * K, len: 4 * K, v: 3 },
      { op: 'amend', options: { lazyRefcounts: true } },
      { op: 'write', off: 768 * K, len: 4 * K, v: 4 },
    ],
  },
  {
    name: 'amend: refcount_bits 16 → 2 → 64, with a snapshot between',
    clusterSize: 4 * K,
    copiedWindow: true,
    moves: ['refcountTableOffset'],
    prepare: (dir) => {
      create(dir, 'cluster_size=4096', '1M');
      io(dir, 'base.qcow2', 'write -P 6 0 16k', 'write -P 7 512k 8k');
    },
    steps: [
      { op: 'amend', options: { refcountBits: 2 } },
      { op: 'write', off: 100 * K, len: K, v: 1 },
      { op: 'snapshot-create', name: 's' },
      { op: 'write', off: 0, len: K, v: 2 },
      { op: 'amend', options: { refcountBits: 64 } },
      { op: 'write', off: 600 * K, len: K, v: 3 },
    ],
  },
];

/**
 * What each sector may read as. `mem`: if everything done so far reached the disk (after a
 * completed flush or close); `disk`: what a crash now may leave (anything since the last
 * completed flush). Each is a definite value per sector plus, sparsely, other values allowed
 * (a failed operation may or may not have happened; unflushed ones may or may not be there).
 */
export class SectorModel {
  readonly clusterSize: number;
  #mem: Uint8Array;
  #memExtra = new Map<number, Set<number>>();
  #disk: Uint8Array;
  #diskExtra = new Map<number, Set<number>>();
  #memSizes: Set<number>;
  #diskSizes: Set<number>;
  #size: number;

  /** `base`: the guest content of the base image (uniform sectors); `maxSize` covers resizes. */
  constructor(base: Uint8Array, maxSize: number, clusterSize: number) {
    this.clusterSize = clusterSize;
    this.#size = base.length;
    this.#mem = new Uint8Array(maxSize / SECTOR);
    for (let s = 0; s < base.length / SECTOR; s++) {
      const v = base[s * SECTOR]!;
      const sec = base.subarray(s * SECTOR, (s + 1) * SECTOR);
      if (!sec.every((b) => b === v)) throw new Error(`base image sector ${s} is not uniform`);
      this.#mem[s] = v;
    }
    this.#disk = this.#mem.slice();
    this.#memSizes = new Set([this.#size]);
    this.#diskSizes = new Set([this.#size]);
  }

  /** Applies `step`; `failed` steps may or may not have happened. */
  apply(step: Step, failed: boolean): void {
    if (step.op === 'bitmap') return;
    if (step.op === 'flush') {
      if (!failed) this.flushed();
      return;
    }
    if (step.op === 'amend') return; // amend changes how the image stores data, not what it reads as
    if (step.op === 'snapshot-create' || step.op === 'snapshot-apply' || step.op === 'snapshot-delete') {
      this.#applySnapshotStep(step.op, step.name, failed);
      return;
    }
    if (step.op === 'resize') {
      // Growing: the new part reads as zeroes, which the model already holds (a shrink zeroes
      // what it cuts off, below). The size itself is one of the sizes so far when it failed.
      if (failed) this.#memSizes.add(step.size);
      else this.#memSizes = new Set([step.size]);
      this.#diskSizes.add(step.size);
      const old = this.#size;
      this.#size = step.size;
      for (let s = step.size / SECTOR; s < old / SECTOR; s++) this.#set(s, 0, failed);
      return;
    }
    const cs = this.clusterSize;
    let from: number;
    let to: number;
    let v: number;
    if (step.op === 'write') [from, to, v] = [step.off, step.off + step.len, step.v];
    else if (step.op === 'zero') [from, to, v] = [step.off, step.off + step.len, 0];
    else if (step.op === 'compress') [from, to, v] = [step.off, Math.min(step.off + cs, this.#size), step.v];
    else {
      // qcow2 discards whole clusters only (to the image end for the last one); v3 reads zeroes.
      from = Math.ceil(step.off / cs) * cs;
      to = step.off + step.len === this.#size ? this.#size : Math.floor((step.off + step.len) / cs) * cs;
      v = 0;
    }
    for (let s = from / SECTOR; s < to / SECTOR; s++) this.#set(s, v, failed);
  }

  /**
   * Snapshots: a create copies what the active layer may read as now; an apply makes the active
   * layer read as the snapshot (a failed one: either, sector by sector); a delete drops it. A
   * failed create or delete leaves the snapshot's existence open. Each completed operation
   * syncs everything before it returns (qemu flushes the image in all three), so the active
   * layer is durable then too.
   */
  #applySnapshotStep(op: 'snapshot-create' | 'snapshot-apply' | 'snapshot-delete', name: string, failed: boolean): void {
    if (op === 'snapshot-create') {
      const content = this.clone();
      content.#snapshots = new Map();
      content.flushed();
      this.#snapshots.set(name, { model: content, certain: !failed });
    } else if (op === 'snapshot-delete') {
      const sn = this.#snapshots.get(name);
      if (sn !== undefined && failed) sn.certain = false;
      else this.#snapshots.delete(name);
    } else {
      const sn = this.#snapshots.get(name);
      if (sn === undefined) throw new Error(`workload applies snapshot ${name}, which it never created`);
      const src = sn.model;
      for (let s = 0; s < this.#size / SECTOR; s++) {
        const values = [src.#mem[s]!, ...(src.#memExtra.get(s) ?? [])];
        if (!failed) {
          this.#mem[s] = values[0]!;
          this.#memExtra.delete(s);
          for (const v of values.slice(1)) addExtra(this.#memExtra, this.#mem, s, v);
        } else {
          for (const v of values) addExtra(this.#memExtra, this.#mem, s, v);
        }
        for (const v of values) addExtra(this.#diskExtra, this.#disk, s, v);
      }
    }
    if (!failed) this.flushed();
  }

  /** The snapshots the workload made: what each reads as, and whether it must exist. */
  snapshots(): { name: string; certain: boolean; model: SectorModel }[] {
    return [...this.#snapshots].map(([name, sn]) => ({ name, certain: sn.certain, model: sn.model }));
  }

  #snapshots = new Map<string, { model: SectorModel; certain: boolean }>();

  #set(s: number, v: number, failed: boolean): void {
    if (failed) addExtra(this.#memExtra, this.#mem, s, v);
    else {
      this.#mem[s] = v;
      this.#memExtra.delete(s);
    }
    addExtra(this.#diskExtra, this.#disk, s, v);
  }

  /** An independent copy (to judge a crash at some point of a run later). */
  clone(): SectorModel {
    const c = new SectorModel(new Uint8Array(0), 0, this.clusterSize);
    c.#mem = this.#mem.slice();
    c.#memExtra = copyExtra(this.#memExtra);
    c.#disk = this.#disk.slice();
    c.#diskExtra = copyExtra(this.#diskExtra);
    c.#memSizes = new Set(this.#memSizes);
    c.#diskSizes = new Set(this.#diskSizes);
    c.#size = this.#size;
    // A snapshot's content never changes once taken: the copies may share it.
    c.#snapshots = new Map([...this.#snapshots].map(([name, sn]) => [name, { ...sn }]));
    return c;
  }

  /** A flush completed: everything so far is on disk. */
  flushed(): void {
    this.#disk = this.#mem.slice();
    this.#diskExtra = copyExtra(this.#memExtra);
    this.#diskSizes = new Set(this.#memSizes);
  }

  /**
   * Compares `raw` (the guest content read back) with what is allowed: `durable` after a
   * completed close, otherwise what a crash may leave. Returns the first problems found.
   */
  mismatches(raw: Uint8Array, durable: boolean, limit = 5): string[] {
    const val = durable ? this.#mem : this.#disk;
    const extra = durable ? this.#memExtra : this.#diskExtra;
    const sizes = durable ? this.#memSizes : this.#diskSizes;
    const out: string[] = [];
    if (!sizes.has(raw.length)) out.push(`virtual size ${raw.length}, expected one of ${[...sizes].join(', ')}`);
    const n = Math.min(raw.length, val.length * SECTOR) / SECTOR;
    for (let s = 0; s < n && out.length < limit; s++) {
      const sec = raw.subarray(s * SECTOR, (s + 1) * SECTOR);
      const first = sec[0]!;
      const more = extra.get(s);
      if (first === val[s] && more === undefined && Buffer.compare(sec, FILLED[first]!) === 0) continue;
      const want = [val[s]!, ...(more ?? [])];
      if (Buffer.compare(sec, FILLED[first]!) !== 0) {
        out.push(`sector ${s} (offset 0x${(s * SECTOR).toString(16)}) is not uniform, expected ${want.join('|')}`);
      } else if (!want.includes(first)) {
        out.push(`sector ${s} (offset 0x${(s * SECTOR).toString(16)}) reads ${first}, expected ${want.join('|')}`);
      }
    }
    return out;
  }
}

/** One sector filled with each byte value, for native comparisons. */
const FILLED: readonly Buffer[] = Array.from({ length: 256 }, (_, v) => Buffer.alloc(SECTOR, v));

function copyExtra(extra: Map<number, Set<number>>): Map<number, Set<number>> {
  return new Map([...extra].map(([s, set]) => [s, new Set(set)]));
}

function addExtra(extra: Map<number, Set<number>>, val: Uint8Array, s: number, v: number): void {
  if (val[s] === v) return;
  let set = extra.get(s);
  if (set === undefined) extra.set(s, (set = new Set()));
  set.add(v);
}

/** The largest virtual size a workload reaches. */
export function maxSize(base: number, steps: readonly Step[]): number {
  return Math.max(base, ...steps.map((s) => (s.op === 'resize' ? s.size : 0)));
}

/**
 * A workload on a backing chain (issue 10): a whole `qemu-img commit` or safe `qemu-img rebase`
 * through @tsimg/image, with the faults counted over every file it writes together (one power
 * supply). `prepare` builds `top.qcow2` over `base.qcow2` (and `new.qcow2`, a rebase's new
 * backing file) in `dir`; the top's guest view must read the same after any fault, and every
 * image of the chain must stay check-clean.
 */
export interface ChainWorkload {
  name: string;
  prepare(dir: string): void;
  /** commit: top into base, then the top emptied; rebase: onto new.qcow2, or none (flatten). */
  op: { kind: 'commit' } | { kind: 'rebase'; onto: 'new.qcow2' | undefined };
}

function chainImage(dir: string, file: string, opts: string, size: string, backing?: string, ...writes: string[]): void {
  const b = backing === undefined ? [] : ['-b', backing, '-F', 'qcow2'];
  ok(qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, ...b, file, size], { cwd: dir }), `qemu-img create ${file}`);
  if (writes.length > 0) io(dir, file, ...writes);
}

export const CHAIN_WORKLOADS: ChainWorkload[] = [
  {
    name: 'commit: 4 KiB clusters, a larger top (the base grows), compressed and zero clusters, then the top emptied',
    op: { kind: 'commit' },
    prepare: (dir) => {
      chainImage(dir, 'base.qcow2', 'cluster_size=4096', '2M', undefined, 'write -P 1 0 256k', 'write -c -P 2 512k 4k', 'write -P 3 1M 64k');
      chainImage(dir, 'top.qcow2', 'cluster_size=4096', '3M', 'base.qcow2', 'write -P 4 4k 8k', 'write -z 64k 16k', 'write -c -P 5 512k 4k', 'write -P 6 2M 100k', 'write -P 7 1M 4k');
    },
  },
  {
    name: 'commit: 64 KiB clusters, data over compressed base clusters, zero runs, extended L2 top',
    op: { kind: 'commit' },
    prepare: (dir) => {
      writeFileSync(join(dir, 'data.raw'), sectors(1 * M, (s) => (s % 200) + 20));
      ok(qemuImg(['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', 'data.raw', 'base.qcow2'], { cwd: dir }), 'convert -c');
      chainImage(dir, 'top.qcow2', 'extended_l2=on', '1M', 'base.qcow2', 'write -P 4 0 64k', 'write -z 128k 128k', 'write -P 6 300k 6k', 'write -P 7 900k 100k');
    },
  },
  {
    name: 'safe rebase onto another image (clusters that differ copied into the top), then the header',
    op: { kind: 'rebase', onto: 'new.qcow2' },
    prepare: (dir) => {
      chainImage(dir, 'base.qcow2', 'cluster_size=4096', '2M', undefined, 'write -P 1 0 512k', 'write -P 2 1M 128k');
      chainImage(dir, 'new.qcow2', 'cluster_size=4096', '1M', undefined, 'write -P 1 0 256k', 'write -P 3 300k 8k');
      chainImage(dir, 'top.qcow2', 'cluster_size=4096', '2M', 'base.qcow2', 'write -P 4 8k 4k', 'write -P 5 1M 2k');
    },
  },
  {
    name: 'safe rebase into 512 B clusters: many L2 tables and refcount blocks allocated, then the header',
    op: { kind: 'rebase', onto: 'new.qcow2' },
    prepare: (dir) => {
      chainImage(dir, 'base.qcow2', 'cluster_size=4096', '1M', undefined, 'write -P 1 0 200k', 'write -P 2 600k 100k');
      chainImage(dir, 'new.qcow2', 'cluster_size=4096', '1M', undefined, 'write -P 1 0 100k', 'write -P 3 650k 8k', 'write -P 9 900k 20k');
      chainImage(dir, 'top.qcow2', 'cluster_size=512,refcount_bits=64', '1M', 'base.qcow2', 'write -P 4 8k 4k', 'write -P 5 620k 2k');
    },
  },
  {
    name: 'rebase -b "": the top flattened',
    op: { kind: 'rebase', onto: undefined },
    prepare: (dir) => {
      chainImage(dir, 'base.qcow2', 'cluster_size=4096', '1M', undefined, 'write -P 1 0 300k', 'write -z 400k 8k');
      chainImage(dir, 'top.qcow2', 'cluster_size=4096', '1M', 'base.qcow2', 'write -P 4 100k 5k');
    },
  },
];
