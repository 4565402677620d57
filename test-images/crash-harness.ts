/**
 * The crash-safety harness, run by crash.test.ts, crash-snapshots.test.ts and crash-chain.test.ts.
 *
 * Crash safety (issue 3): every workload in crash-workloads.ts runs once to count its writes and
 * flushes, then once per fault point on a fresh copy of its base image through faultyDevice —
 * power lost after each write, each write failing with EIO, each flush failing with EIO (the
 * workload then carries on, as a guest would, and closes the image). What is left must pass the
 * real `qemu-img check` (leaks are fine, corruptions are not; lazy refcount images must come out
 * of `check -r all` clean), read back (qemu-img convert) as the model allows — everything a
 * completed flush covered is there — open again with tsimg, and leave the backing file untouched.
 * Internal snapshots must each read as when they were taken, and exist unless their create or
 * delete was cut short.
 *
 * faultyDevice drops every unflushed change at a power loss; a real disk cache may keep any of
 * them, in any order. So each power-loss case is also checked with all unflushed changes
 * replayed, and with only the last one — which catches a missing flush between dependent
 * writes. CRASH_DEEP=1 adds crashes at every later flush point after each EIO, and EIO on
 * every read of the image file (slow).
 */
import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { faultyDevice, FileDevice, IoError, type BlockDevice, type BlockStatus, type FaultPlan, type FaultyDevice, type WriteZeroesOptions } from '@tsimg/raw';
import { changeBackingFile, commitImage, openImage, rebaseImage, type Image } from '@tsimg/image';
import { loadHeader, Qcow2Image } from '@tsimg/qcow2';
import { INCOMPAT_DIRTY } from '../packages/qcow2/src/format/types.js';
import { describeQemu, qemuImg } from './qemu.js';
import { CHAIN_WORKLOADS, maxSize, SectorModel, WORKLOADS, type ChainWorkload, type Step, type Workload } from './crash-workloads.js';

async function applyStep(img: Qcow2Image, step: Step, clusterSize: number): Promise<void> {
  switch (step.op) {
    case 'write':
      return img.write(step.off, new Uint8Array(step.len).fill(step.v));
    case 'zero':
      return img.writeZeroes(step.off, step.len, { mayUnmap: step.unmap === true });
    case 'discard':
      return img.discard(step.off, step.len);
    case 'compress':
      return img.writeCompressed(step.off, new Uint8Array(Math.min(clusterSize, img.size() - step.off)).fill(step.v));
    case 'resize':
      return step.prealloc === undefined ? img.resize(step.size) : img.truncate(step.size, { preallocation: step.prealloc });
    case 'flush':
      return img.flush();
    case 'snapshot-create':
      await img.createSnapshot({ name: step.name });
      return;
    case 'snapshot-apply':
      return img.applySnapshot(step.name);
    case 'snapshot-delete':
      return img.deleteSnapshot({ name: step.name });
    case 'bitmap':
      if (step.action !== 'merge') return img.bitmapAction(step.action === 'add' ? { op: 'add', name: step.name, granularity: step.granularity } : { op: step.action, name: step.name });
      return img.bitmapAction({ op: 'merge', name: step.name, source: await img.readBitmap(step.source), sourceName: step.source });
    case 'amend':
      return img.amend(step.options);
  }
}

function describePlan(plan: FaultPlan): string {
  if (plan.powerLossAfterWrite !== undefined) return `power loss after write #${plan.powerLossAfterWrite}`;
  if (plan.failWrite !== undefined) return `EIO on write #${String(plan.failWrite)}`;
  if (plan.failFlush !== undefined) return `EIO on flush #${String(plan.failFlush)}`;
  if (plan.failRead !== undefined) return `EIO on read #${String(plan.failRead)}`;
  return 'no fault';
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** One change a device accepted. */
type Change =
  | { op: 'write'; offset: number; data: Uint8Array }
  | { op: 'writeZeroes'; offset: number; length: number; options?: WriteZeroesOptions }
  | { op: 'discard'; offset: number; length: number }
  | { op: 'resize'; size: number };

/**
 * Sits between the engine and the faulty device and remembers the changes no completed flush
 * covers yet. faultyDevice drops all of them at a power loss; a real disk cache may keep any of
 * them, in any order — the test replays some of them to see whether the engine relied on an
 * order it never flushed for.
 */
class UnflushedLog implements BlockDevice {
  readonly inner: BlockDevice;
  changes: Change[] = [];
  /** Called after every completed flush. */
  onFlushed: (() => void) | undefined;
  /** Called when a flush fails. */
  onFailedFlush: (() => void) | undefined;

  constructor(inner: BlockDevice) {
    this.inner = inner;
  }

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  size(): number {
    return this.inner.size();
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    return this.inner.read(offset, into);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.inner.write(offset, data);
    this.changes.push({ op: 'write', offset, data: data.slice() });
  }

  /** A vectored write is one write here too (as it is for the faulty device below). */
  async writev(offset: number, parts: readonly Uint8Array[]): Promise<void> {
    const data = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      data.set(p, at);
      at += p.length;
    }
    await this.write(offset, data);
  }

  async writeZeroes(offset: number, length: number, options?: WriteZeroesOptions): Promise<void> {
    await this.inner.writeZeroes(offset, length, options);
    this.changes.push({ op: 'writeZeroes', offset, length, options: { ...options } });
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.inner.discard(offset, length);
    this.changes.push({ op: 'discard', offset, length });
  }

  async resize(size: number): Promise<void> {
    await this.inner.resize(size);
    this.changes.push({ op: 'resize', size });
  }

  async flush(): Promise<void> {
    // A flush covers the changes made before it was called.
    const covered = this.changes.length;
    try {
      await this.inner.flush();
    } catch (err) {
      this.onFailedFlush?.();
      throw err;
    }
    this.changes.splice(0, covered);
    this.onFlushed?.();
  }

  blockStatus(offset: number, length: number): Promise<BlockStatus> {
    return this.inner.blockStatus(offset, length);
  }

  allocatedSize(): Promise<number | undefined> {
    return this.inner.allocatedSize();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Copies `from` to `to` and applies `changes` to the copy. */
async function replay(from: string, to: string, changes: readonly Change[]): Promise<void> {
  copyFileSync(from, to);
  const dev = await FileDevice.open(to);
  try {
    for (const c of changes) {
      if (c.op === 'write') await dev.write(c.offset, c.data);
      else if (c.op === 'writeZeroes') await dev.writeZeroes(c.offset, c.length, c.options);
      else if (c.op === 'discard') await dev.discard(c.offset, c.length);
      else await dev.resize(c.size);
    }
  } finally {
    await dev.close();
  }
}

interface RunOutcome {
  writes: number;
  flushes: number;
  reads: number;
  /** The image was closed cleanly: everything done must be durable. */
  durable: boolean;
  /** Steps that failed, with their errors. */
  failed: string[];
  model: SectorModel;
  /** Changes the device accepted that no completed flush covered (lost at a power loss). */
  unflushed: Change[];
  /** With `snapshots`: the file after each completed flush once the fault hit, and the model then. */
  snapshots: { label: string; bytes: Buffer; model: SectorModel }[];
  /**
   * With `snapshots` and a failed flush: the writes made between it and the next completed
   * flush, which a disk may persist in any order (the failed flush ordered nothing).
   */
  afterFailedFlush: number[];
}

/** Runs `w` on a copy of its base image at `path` through a faulty device following `plan`. */
async function runWorkload(
  w: Workload,
  dir: string,
  path: string,
  plan: FaultPlan,
  base: Uint8Array,
  snapshots = false,
): Promise<RunOutcome> {
  copyFileSync(join(dir, 'base.qcow2'), path);
  const model = new SectorModel(base, maxSize(base.length, w.steps), w.clusterSize);
  const fd = await FileDevice.open(path);
  const dev = faultyDevice(fd, plan);
  const log = new UnflushedLog(dev);
  let writesAtFault = 0;
  const failed: string[] = [];
  const snaps: RunOutcome['snapshots'] = [];
  let current: { index: number; step: Step } | undefined;
  const afterFailedFlush: number[] = [];
  if (snapshots) {
    const at = (v: FaultPlan['failWrite']): number => (typeof v === 'number' ? v : Infinity);
    let flushedAfterFailure = false;
    log.onFailedFlush = () => {
      if (writesAtFault === 0) writesAtFault = dev.writes;
    };
    log.onFlushed = () => {
      if (dev.flushes >= at(plan.failFlush) && !flushedAfterFailure) {
        // The first completed flush after the failed one (flush numbers count failures too).
        flushedAfterFailure = true;
        for (let m = writesAtFault + 1; m <= dev.writes; m++) afterFailedFlush.push(m);
      }
      if (dev.writes < at(plan.failWrite) && dev.flushes < at(plan.failFlush) && dev.reads < at(plan.failRead)) return;
      // A crash now: the step under way may be partly done.
      const m = model.clone();
      if (current !== undefined) m.apply(current.step, true);
      const where = current === undefined ? 'at close' : `in step ${current.index} (${current.step.op})`;
      snaps.push({ label: `then power loss after flush #${dev.flushes} ${where}`, bytes: readFileSync(path), model: m });
    };
  }
  let backing: Image | undefined;
  let img: Qcow2Image | undefined;
  let durable = false;
  try {
    if (w.backing) backing = await openImage(join(dir, 'backing.qcow2'));
    img = await Qcow2Image.open(log, { filename: path, readOnly: false, backing });
  } catch (err) {
    failed.push(`open: ${message(err)}`);
  }
  if (img !== undefined) {
    for (const [i, step] of w.steps.entries()) {
      current = { index: i, step };
      try {
        await applyStep(img, step, w.clusterSize);
        model.apply(step, false);
      } catch (err) {
        failed.push(`step ${i} (${step.op}): ${message(err)}`);
        model.apply(step, true);
        // After a power loss nothing more can happen; after EIO the guest carries on.
        if (dev.powerLost) break;
      }
    }
    current = undefined;
    try {
      await img.close();
      durable = true;
    } catch (err) {
      failed.push(`close: ${message(err)}`);
    }
  } else {
    await backing?.close();
    await dev.close().catch(() => undefined);
  }
  // After a power loss the wrapper lets go of the file without closing it.
  await fd.close().catch(() => undefined);
  return { writes: dev.writes, flushes: dev.flushes, reads: dev.reads, durable, failed, model, unflushed: dev.powerLost ? log.changes : [], snapshots: snaps, afterFailedFlush };
}

/** What the checks found on one distinct image file (the model comparison aside). */
interface Verdict {
  checkStatus: number;
  checkOutput: string;
  /** The guest content as qemu-img convert reads it. */
  raw?: Buffer;
  /** The header's dirty bit (lazy refcounts) was set. */
  dirty: boolean;
  /** Problems found by qemu-img convert or by opening the image with tsimg. */
  problems: string[];
  /** Each internal snapshot's name and guest content (read with tsimg; qemu-img check vouches for the metadata). */
  snapshots: Map<string, Uint8Array>;
}

/**
 * Runs qemu-img check (`-r all` for lazy refcount images) and convert on `path`, then reads and
 * reopens it with tsimg. Cached by file content: crashes between the same two flushes leave
 * the same file.
 */
async function verdictOf(w: Workload, dir: string, path: string, cache: Map<string, Verdict>): Promise<Verdict> {
  const key = createHash('sha1').update(readFileSync(path)).digest('hex');
  const hit = cache.get(key);
  if (hit !== undefined) return hit;
  const problems: string[] = [];
  const dirty = ((await headerOf(path)).incompatibleFeatures & INCOMPAT_DIRTY) !== 0n;
  if (w.lazy && !dirty) {
    // Without the dirty bit the refcounts must be right as they are: only a dirty image may
    // leave them to `check -r all`.
    const plain = qemuImg(['check', path]);
    if (plain.status !== 0 && plain.status !== 3) {
      problems.push(`qemu-img check of a clean lazy-refcount image exit ${plain.status}: ${(plain.stdout + plain.stderr).trim().replaceAll('\n', ' | ')}`);
    }
  }
  const check = qemuImg(w.lazy ? ['check', '-r', 'all', path] : ['check', path]);
  const v: Verdict = {
    checkStatus: check.status,
    checkOutput: (check.stdout + check.stderr).trim().replaceAll('\n', ' | '),
    dirty,
    problems,
    snapshots: new Map(),
  };
  const rawPath = join(dir, 'case.raw');
  const conv = qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', path, rawPath]);
  if (conv.status === 0) v.raw = readFileSync(rawPath);
  else v.problems.push(`qemu-img convert failed: ${conv.stderr.trim()}`);
  rmSync(rawPath, { force: true });
  try {
    const ro = await openImage(path);
    try {
      const mine = new Uint8Array(ro.size());
      await ro.read(0, mine);
      if (v.raw !== undefined && !v.raw.equals(mine)) v.problems.push('tsimg reads other bytes than qemu-img convert');
    } finally {
      await ro.close();
    }
    const rw = await openImage(path, { readOnly: false });
    const names = rw.listSnapshots?.().map((sn) => sn.name) ?? [];
    await rw.close();
    for (const name of names) {
      const sn = await openImage(path, { snapshot: { name } });
      try {
        const bytes = new Uint8Array(sn.size());
        await sn.read(0, bytes);
        v.snapshots.set(name, bytes);
      } finally {
        await sn.close();
      }
    }
  } catch (err) {
    v.problems.push(`tsimg cannot open it again: ${message(err)}`);
  }
  cache.set(key, v);
  return v;
}

/**
 * True when every corruption qemu-img check reports is a COPIED flag that disagrees with a
 * refcount in the harmless direction: cleared on a cluster whose refcount is 1 (the next write
 * only copies needlessly), or set on one whose extra references are all leaks (nothing else
 * uses it, so a write in place hurts no one). A COPIED flag and the refcount it mirrors live in
 * different sectors, so an operation that changes both (snapshot create, apply, delete) has a
 * window where a crash leaves one of these; qemu's `check -r all` repairs them.
 */
function onlyHarmlessCopiedFlags(output: string, clusterSize: number): boolean {
  const lines = output.split(' | ');
  const errors = Number(/(\d+) errors were found on the image/.exec(output)?.[1] ?? '0');
  const leaks = new Map<number, { refcount: number; reference: number }>();
  for (const l of lines) {
    const m = /^Leaked cluster (\d+) refcount=(\d+) reference=(\d+)$/.exec(l);
    if (m) leaks.set(Number(m[1]), { refcount: Number(m[2]), reference: Number(m[3]) });
  }
  let copied = 0;
  for (const l of lines) {
    if (!l.includes('ERROR')) continue;
    const m = /^ERROR OFLAG_COPIED (?:L2|data) cluster: (?:l1_index=\d+ l1_entry|l2_entry)=([0-9a-f]+) refcount=(\d+)$/.exec(l);
    if (!m) return false;
    const entry = BigInt(`0x${m[1]}`);
    const refcount = Number(m[2]);
    const cluster = Number((entry & 0x00ff_ffff_ffff_fe00n) / BigInt(clusterSize));
    const set = (entry & (1n << 63n)) !== 0n;
    const leak = leaks.get(cluster);
    if (set ? leak === undefined || leak.refcount !== refcount || leak.reference !== 1 : refcount !== 1) return false;
    copied++;
  }
  return copied > 0 && copied === errors;
}

/** Everything a case must satisfy; returns the problems found. */
async function verify(w: Workload, dir: string, path: string, out: RunOutcome, backingBytes: Buffer | undefined, cache: Map<string, Verdict>): Promise<string[]> {
  const problems: string[] = [];
  if (backingBytes !== undefined && !readFileSync(join(dir, 'backing.qcow2')).equals(backingBytes)) {
    problems.push('the backing file changed');
    writeFileSync(join(dir, 'backing.qcow2'), backingBytes);
  }
  const v = await verdictOf(w, dir, path, cache);
  const checkOk = w.lazy
    ? v.checkStatus === 0
    : v.checkStatus === 0 || v.checkStatus === 3 || (w.copiedWindow === true && v.checkStatus === 2 && onlyHarmlessCopiedFlags(v.checkOutput, w.clusterSize));
  if (!checkOk) problems.push(`qemu-img check${w.lazy ? ' -r all' : ''} exit ${v.checkStatus}: ${v.checkOutput}`);
  problems.push(...v.problems);
  if (out.durable && v.dirty) problems.push('the image was closed cleanly but its dirty bit is set');
  if (v.raw !== undefined) problems.push(...out.model.mismatches(v.raw, out.durable).map((m) => `qemu reads: ${m}`));
  // Every snapshot is there (or, when its create or delete failed, may be) and reads as taken.
  const expected = out.model.snapshots();
  for (const name of v.snapshots.keys()) {
    if (!expected.some((sn) => sn.name === name)) problems.push(`snapshot ${name} should not exist`);
  }
  for (const sn of expected) {
    const bytes = v.snapshots.get(sn.name);
    if (bytes === undefined) {
      if (sn.certain) problems.push(`snapshot ${sn.name} is missing`);
      continue;
    }
    problems.push(...sn.model.mismatches(bytes, true).map((m) => `snapshot ${sn.name} reads: ${m}`));
  }
  return problems;
}

/**
 * A scratch directory, in memory when the machine has /dev/shm: every case syncs a file a few
 * dozen times, which on a real disk costs most of the run.
 */
function scratchDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'tsimg-crash-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

async function headerOf(path: string): Promise<{ l1TableOffset: number; refcountTableOffset: number; incompatibleFeatures: bigint }> {
  const fd = await FileDevice.open(path, { readOnly: true });
  try {
    const h = (await loadHeader(fd)).header;
    return { l1TableOffset: h.l1TableOffset, refcountTableOffset: h.refcountTableOffset, incompatibleFeatures: h.incompatibleFeatures };
  } finally {
    await fd.close();
  }
}

/**
 * CRASH_DEEP=1 adds EIO on every read of the image file, and for every EIO case a power loss at
 * every completed flush after the error (an engine that forgets an ordering rule after a failure
 * shows only then). Thousands of extra images: minutes, so not part of the default run.
 */
const DEEP = process.env.CRASH_DEEP === '1';

/**
 * The crash tests of the single-image workloads `select` picks (the suite is split over a few
 * test files so that vitest runs them side by side); `minCases` is the least number of fault
 * cases they must come to.
 */
export function describeCrashSuite(title: string, select: (w: Workload) => boolean, minCases: number): void {
  describeQemu(`crash safety: power loss and EIO at every write and flush (${title})`, () => crashSuite(WORKLOADS.filter(select), minCases));
}

function crashSuite(workloads: readonly Workload[], minCases: number): void {
  const totals = { cases: 0, failures: 0 };

  for (const w of workloads) {
    it(w.name, { timeout: 300_000 }, async () => {
      const { dir, cleanup } = scratchDir();
      try {
        w.prepare(dir);
        const baseRaw = join(dir, 'base.raw');
        const conv = qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', join(dir, 'base.qcow2'), baseRaw]);
        expect(conv.status, conv.stderr).toBe(0);
        const base = new Uint8Array(readFileSync(baseRaw));
        rmSync(baseRaw);
        const backingBytes = w.backing ? readFileSync(join(dir, 'backing.qcow2')) : undefined;
        const path = join(dir, 'case.qcow2');
        const cache = new Map<string, Verdict>();

        // The fault-free run: counts the fault points and proves the workload and model agree.
        const probe = await runWorkload(w, dir, path, {}, base);
        expect(probe.failed).toEqual([]);
        expect(probe.durable).toBe(true);
        for (const field of w.moves ?? []) {
          const before = await headerOf(join(dir, 'base.qcow2'));
          const after = await headerOf(path);
          expect(after[field], `the workload must move the ${field}`).not.toBe(before[field]);
        }
        expect(await verify(w, dir, path, probe, backingBytes, cache)).toEqual([]);
        if (w.steps.some((s) => s.op === 'bitmap')) {
          // The close stored every bitmap: none is left in use, the operations all took effect.
          const info = JSON.parse(qemuImg(['info', '--output=json', path]).stdout) as { 'format-specific': { data: { bitmaps?: { name: string; flags: string[] }[] } } };
          expect(info['format-specific'].data.bitmaps).toEqual([
            { name: 'b0', flags: ['auto'], granularity: 4096 },
            { name: 'n1', flags: ['auto'], granularity: 512 },
          ]);
        }

        const plans: FaultPlan[] = [];
        for (let n = 1; n <= probe.writes; n++) plans.push({ powerLossAfterWrite: n });
        for (let n = 1; n <= probe.writes; n++) plans.push({ failWrite: n });
        for (let n = 1; n <= probe.flushes; n++) plans.push({ failFlush: n });
        if (DEEP) for (let n = 1; n <= probe.reads; n++) plans.push({ failRead: n });

        const failures: string[] = [];
        let deepCases = 0;
        /**
         * Checks what a run left, and after a power loss also what the disk cache may have
         * kept: all unflushed changes, or only the last one (written before the earlier ones).
         */
        const checkRun = async (label: string, out: RunOutcome): Promise<void> => {
          const why = out.failed.length > 0 ? ` [after: ${out.failed.join('; ')}]` : '';
          const u = out.unflushed;
          const variants: [string, Change[] | undefined][] = [['', undefined]];
          if (u.length > 0) variants.push([`, ${u.length} unflushed changes kept`, u]);
          if (u.length > 1) variants.push([', only the last unflushed change kept', u.slice(-1)]);
          for (const [suffix, changes] of variants) {
            let file = path;
            if (changes !== undefined) {
              file = join(dir, 'replay.qcow2');
              await replay(path, file, changes);
            }
            const problems = await verify(w, dir, file, out, backingBytes, cache);
            if (problems.length > 0) failures.push(`${label}${suffix}: ${problems.join('; ')}${why}`);
          }
        };

        for (const plan of plans) {
          await checkRun(describePlan(plan), await runWorkload(w, dir, path, plan, base));
          if (!DEEP || plan.powerLossAfterWrite !== undefined) continue;
          // EIO, the guest carries on, then the power goes at a later completed flush ...
          const deep = await runWorkload(w, dir, path, plan, base, true);
          const copy = join(dir, 'snapshot.qcow2');
          for (const snap of deep.snapshots) {
            writeFileSync(copy, snap.bytes);
            const problems = await verify(w, dir, copy, { ...deep, durable: false, model: snap.model }, backingBytes, cache);
            if (problems.length > 0) failures.push(`${describePlan(plan)}, ${snap.label}: ${problems.join('; ')}`);
          }
          deepCases += deep.snapshots.length;
          // ... or, after a failed flush, before the next one completes.
          for (const m of deep.afterFailedFlush) {
            const out = await runWorkload(w, dir, path, { ...plan, powerLossAfterWrite: m }, base);
            await checkRun(`${describePlan(plan)}, then power loss after write #${m}`, out);
            deepCases += 1;
          }
        }
        totals.cases += plans.length + deepCases;
        totals.failures += failures.length;
        console.log(
          `crash: ${w.name}: ${probe.writes} writes, ${probe.flushes} flushes${DEEP ? `, ${probe.reads} reads` : ''}, ${plans.length} fault cases` +
            `${DEEP ? ` + ${deepCases} later crashes` : ''}, ` +
            `${failures.length} failing (${cache.size} distinct images checked)`,
        );
        expect(failures).toEqual([]);
      } finally {
        cleanup();
      }
    });
  }

  it(`covers at least ${minCases} fault cases`, () => {
    console.log(`crash: ${totals.cases} fault cases in total, ${totals.failures} failing`);
    expect(totals.cases).toBeGreaterThanOrEqual(minCases);
  });
}

/**
 * The faults of one chain workload, counted over all the files it writes: the n-th write or
 * flush of any of them fails, or the power goes after the n-th write — for every file at once.
 */
class SharedFaults {
  writes = 0;
  flushes = 0;
  readonly devices: FaultyDevice[] = [];
  constructor(readonly plan: FaultPlan) {}

  #is(v: FaultPlan['failWrite'], n: number): boolean {
    return v === n || (Array.isArray(v) && v.includes(n));
  }

  /** `dev` (write-back, no faults of its own) with the shared plan applied. */
  wrap(dev: FaultyDevice): BlockDevice {
    this.devices.push(dev);
    const change = async (run: () => Promise<void>): Promise<void> => {
      const n = ++this.writes;
      if (this.#is(this.plan.failWrite, n)) throw new IoError('Input/output error', { errno: 'EIO' });
      await run();
      if (n === this.plan.powerLossAfterWrite) for (const d of this.devices) d.powerLoss();
    };
    return {
      get readOnly() {
        return dev.readOnly;
      },
      size: () => dev.size(),
      read: (o, into) => dev.read(o, into),
      write: (o, data) => change(() => dev.write(o, data)),
      writeZeroes: (o, l, opts) => change(() => dev.writeZeroes(o, l, opts)),
      discard: (o, l) => change(() => dev.discard(o, l)),
      resize: (size) => change(() => dev.resize(size)),
      flush: async () => {
        const n = ++this.flushes;
        if (this.#is(this.plan.failFlush, n)) throw new IoError('Input/output error', { errno: 'EIO' });
        await dev.flush();
      },
      blockStatus: (o, l) => dev.blockStatus(o, l),
      allocatedSize: () => dev.allocatedSize(),
      close: () => dev.close(),
    };
  }
}

/** Runs the chain workload on the files in `dir` under `plan`; returns the counts and what failed. */
async function runChainWorkload(w: ChainWorkload, dir: string, plan: FaultPlan): Promise<{ writes: number; flushes: number; failed: string[] }> {
  const faults = new SharedFaults(plan);
  const fds: FileDevice[] = [];
  const open = async (name: string): Promise<BlockDevice> => {
    const fd = await FileDevice.open(join(dir, name));
    fds.push(fd);
    return faults.wrap(faultyDevice(fd));
  };
  const failed: string[] = [];
  let top: Qcow2Image<Image> | undefined;
  const others: Image[] = [];
  try {
    if (w.op.kind === 'commit') {
      const base = await Qcow2Image.open<Image>(await open('base.qcow2'), { filename: join(dir, 'base.qcow2'), readOnly: false, unmap: true });
      others.push(base as unknown as Image);
      top = await Qcow2Image.open<Image>(await open('top.qcow2'), { filename: join(dir, 'top.qcow2'), readOnly: false, unmap: true, backing: base as unknown as Image });
      others.length = 0; // closed with the top
      await commitImage(top as unknown as Image, base as unknown as Image);
    } else {
      const old = await openImage(join(dir, 'base.qcow2'));
      others.push(old);
      top = await Qcow2Image.open<Image>(await open('top.qcow2'), { filename: join(dir, 'top.qcow2'), readOnly: false, backing: old });
      others.length = 0;
      const newBacking = w.op.onto === undefined ? undefined : await openImage(join(dir, w.op.onto));
      if (newBacking !== undefined) others.push(newBacking);
      await rebaseImage(top as unknown as Image, { newBacking });
      await changeBackingFile(top as unknown as Image, w.op.onto, w.op.onto === undefined ? undefined : 'qcow2');
    }
  } catch (err) {
    failed.push(message(err));
  }
  try {
    await top?.close();
  } catch (err) {
    failed.push(`close: ${message(err)}`);
  }
  for (const img of others) await img.close().catch(() => undefined);
  for (const fd of fds) await fd.close().catch(() => undefined);
  return { writes: faults.writes, flushes: faults.flushes, failed };
}

/** What a chain case must satisfy: every image check-clean, the top reading as before. */
async function verifyChain(dir: string, topView: Buffer, cache: Map<string, string[]>): Promise<string[]> {
  const key = createHash('sha1');
  const images = ['base.qcow2', 'top.qcow2'];
  for (const f of images) key.update(readFileSync(join(dir, f)));
  const digest = key.digest('hex');
  const hit = cache.get(digest);
  if (hit !== undefined) return hit;
  const problems: string[] = [];
  for (const f of images) {
    const path = join(dir, f);
    const dirty = ((await headerOf(path)).incompatibleFeatures & INCOMPAT_DIRTY) !== 0n;
    let check = qemuImg(['check', path]);
    if (dirty) {
      // make_completely_empty sets the dirty bit before it breaks the refcounts, as qemu does:
      // like a lazy-refcounts image, qemu rebuilds them when it opens the image, and so must
      // `check -r all` (on a copy, so the guest view below is of the image as it was left).
      const copy = join(dir, 'repair.qcow2');
      copyFileSync(path, copy);
      check = qemuImg(['check', '-r', 'all', copy]);
      rmSync(copy, { force: true });
    }
    const text = (check.stdout + check.stderr).trim().replaceAll('\n', ' | ');
    if (dirty ? check.status !== 0 : check.status !== 0 && check.status !== 3) {
      problems.push(`${f}: qemu-img check${dirty ? ' -r all (dirty)' : ''} exit ${check.status}: ${text}`);
    }
  }
  const raw = join(dir, 'top.raw');
  const conv = qemuImg(['convert', '-O', 'raw', join(dir, 'top.qcow2'), raw]);
  if (conv.status !== 0) problems.push(`qemu-img convert of the top failed: ${conv.stderr.trim()}`);
  else if (!readFileSync(raw).equals(topView)) problems.push("the top's guest view changed");
  rmSync(raw, { force: true });
  cache.set(digest, problems);
  return problems;
}

/** The crash tests of the chain workloads (commit, rebase): faults counted over every file. */
export function describeChainCrashSuite(): void {
  describeQemu('crash safety of commit and rebase: power loss and EIO at every write and flush of the chain', chainSuite);
}

function chainSuite(): void {
  for (const w of CHAIN_WORKLOADS) {
    it(w.name, { timeout: 300_000 }, async () => {
      const { dir, cleanup } = scratchDir();
      try {
        const prep = join(dir, 'prep');
        const work = join(dir, 'case');
        emptyDir(prep);
        w.prepare(prep);
        const names = ['base.qcow2', 'top.qcow2', 'new.qcow2'].filter((f) => existsSync(join(prep, f)));
        const fresh = (): void => {
          emptyDir(work);
          for (const f of names) copyFileSync(join(prep, f), join(work, f));
        };
        const viewPath = join(prep, 'top.raw');
        expect(qemuImg(['convert', '-O', 'raw', join(prep, 'top.qcow2'), viewPath]).status).toBe(0);
        const topView = readFileSync(viewPath);
        const cache = new Map<string, string[]>();

        fresh();
        const probe = await runChainWorkload(w, work, {});
        expect(probe.failed).toEqual([]);
        expect(await verifyChain(work, topView, cache)).toEqual([]);
        const info = qemuImg(['info', '--output=json', join(work, 'top.qcow2')]);
        const backing = (JSON.parse(info.stdout) as { 'backing-filename'?: string })['backing-filename'];
        expect(backing, 'the fault-free run reaches its end').toBe(w.op.kind === 'commit' ? 'base.qcow2' : w.op.onto);
        if (w.op.kind === 'commit') {
          // The base now holds the top's view, and the top is empty.
          const baseRaw = join(work, 'base.raw');
          expect(qemuImg(['convert', '-O', 'raw', join(work, 'base.qcow2'), baseRaw]).status).toBe(0);
          expect(readFileSync(baseRaw).subarray(0, topView.length).equals(topView), 'the base holds the top').toBe(true);
          const map = JSON.parse(qemuImg(['map', '--output=json', join(work, 'top.qcow2')]).stdout) as { depth: number }[];
          expect(map.every((e) => e.depth > 0), 'the top is empty').toBe(true);
        }

        const plans: FaultPlan[] = [];
        for (let n = 1; n <= probe.writes; n++) plans.push({ powerLossAfterWrite: n }, { failWrite: n });
        for (let n = 1; n <= probe.flushes; n++) plans.push({ failFlush: n });
        const failures: string[] = [];
        for (const plan of plans) {
          fresh();
          const out = await runChainWorkload(w, work, plan);
          const problems = await verifyChain(work, topView, cache);
          if (problems.length > 0) failures.push(`${describePlan(plan)}: ${problems.join('; ')} [after: ${out.failed.join('; ')}]`);
        }
        console.log(`crash: ${w.name}: ${probe.writes} writes, ${probe.flushes} flushes, ${plans.length} fault cases, ${failures.length} failing (${cache.size} distinct chains checked)`);
        expect(failures).toEqual([]);
      } finally {
        cleanup();
      }
    });
  }
}

/** Makes `dir` an empty directory. */
function emptyDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
}
