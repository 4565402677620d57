/**
 * The check library on qemu-made images: counts equal to qemu-img's JSON report, repairs that
 * qemu-img then calls clean with unchanged guest data, repairDirty for lazy-refcount images,
 * and a check without repair on a read-only device.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileDevice, MemoryDevice, faultyDevice } from '@tsimg/raw';
import { FIX_ERRORS, FIX_LEAKS, checkImage, openForCheck, repairDirty, type CheckLog } from '@tsimg/qcow2';
import { describeQemu, must, qemuImg, qemuIo, tempDir } from '../../../test-images/qemu.js';
import { poke, type Qcow2Poker } from '../../../test-images/mutate.js';

async function withFile<T>(path: string, readOnly: boolean, fn: (f: FileDevice) => Promise<T>): Promise<T> {
  const f = await FileDevice.open(path, { readOnly });
  try {
    return await fn(f);
  } finally {
    await f.close();
  }
}

describeQemu('qcow2 check library', () => {
  let dir: string;
  let cleanup: () => void;
  let base: string;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-qcheck-'));
    base = join(dir, 'base.qcow2');
    must('qemu-img', ['create', '-f', 'qcow2', base, '64M']);
    must('qemu-io', ['-c', 'write -P 0xab 0 256k', '-c', 'write -c -P 0x11 1M 64k', '-c', 'write -P 0xcd 2M 64k', base]);
  });
  afterAll(() => cleanup());

  it('counts what qemu-img counts on a clean image, without writing', async () => {
    const q = JSON.parse(qemuImg(['check', '--output=json', base]).stdout) as Record<string, number>;
    const before = readFileSync(base);
    const lines: string[] = [];
    const { result, errno } = await withFile(base, true, async (f) => checkImage(await openForCheck(f, (l) => void lines.push(l))));
    expect(errno).toBeUndefined();
    expect(lines).toEqual([]);
    expect(result).toMatchObject({
      corruptions: 0,
      leaks: 0,
      checkErrors: 0,
      imageEndOffset: q['image-end-offset'],
      totalClusters: q['total-clusters'],
      allocatedClusters: q['allocated-clusters'],
      fragmentedClusters: q['fragmented-clusters'] ?? 0,
      compressedClusters: q['compressed-clusters'] ?? 0,
    });
    expect(readFileSync(base).equals(before)).toBe(true);
  });

  it('works on any BlockDevice (a MemoryDevice copy), repairing leaks in memory', async () => {
    const img = join(dir, 'leak.qcow2');
    copyFileSync(base, img);
    poke(img, (p) => p.setL2Entry(0, 1, 0n));
    const dev = new MemoryDevice({ data: new Uint8Array(readFileSync(img)) });
    const lines: string[] = [];
    const log: CheckLog = (l) => void lines.push(l);
    const first = await checkImage(await openForCheck(dev, log), FIX_LEAKS);
    expect(first.result).toMatchObject({ leaks: 0, leaksFixed: 1, corruptions: 0 });
    expect(lines).toEqual(['Leaked cluster 6 refcount=1 reference=0', 'Repairing cluster 6 refcount=1 reference=0']);
    const again = await checkImage(await openForCheck(dev, log), 0);
    expect(again.result).toMatchObject({ leaks: 0, corruptions: 0, checkErrors: 0 });
  });

  it('repairs refcounts that are too low by rebuilding the refcount structure', async () => {
    const img = join(dir, 'low.qcow2');
    copyFileSync(base, img);
    poke(img, (p) => p.setReftableEntry(0, 0n));
    const { result } = await withFile(img, false, async (f) => checkImage(await openForCheck(f, () => {}), FIX_LEAKS | FIX_ERRORS));
    expect(result.corruptions).toBe(0);
    expect(result.corruptionsFixed).toBeGreaterThan(0);
    expect(qemuImg(['check', img]).status).toBe(0);
    const a = join(dir, 'a.raw');
    const b = join(dir, 'b.raw');
    must('qemu-img', ['convert', '-O', 'raw', base, a]);
    must('qemu-img', ['convert', '-O', 'raw', img, b]);
    expect(readFileSync(a).equals(readFileSync(b))).toBe(true);
  });

  it('a -r leaks check refuses to rebuild (EIO), as qemu', async () => {
    const img = join(dir, 'low2.qcow2');
    copyFileSync(base, img);
    poke(img, (p) => p.setReftableEntry(0, 0n));
    const lines: string[] = [];
    const out = await withFile(img, false, async (f) => checkImage(await openForCheck(f, (l) => void lines.push(l)), FIX_LEAKS));
    expect(out.errno).toBe('EIO');
    expect(lines.at(-1)).toBe('ERROR need to rebuild refcount structures');
  });

  it('repairDirty fixes a dirty lazy-refcounts image and clears the dirty bit', async () => {
    const img = join(dir, 'dirty.qcow2');
    must('qemu-img', ['create', '-f', 'qcow2', '-o', 'lazy_refcounts=on', img, '64M']);
    qemuIo(['-c', 'write -P 0x77 4M 128k', '-c', 'write -P 0x78 0 64k', '-c', 'abort', img]);
    expect(readFileSync(img).readBigUInt64BE(72) & 1n).toBe(1n);
    expect(qemuImg(['check', img]).status).toBe(2);
    const raw1 = join(dir, 'd1.raw');
    must('qemu-img', ['convert', '-O', 'raw', img, raw1]);
    const lines: string[] = [];
    const result = await withFile(img, false, (f) => repairDirty(f, (l) => void lines.push(l)));
    expect(result.corruptions).toBe(0);
    expect(lines).toContain('Rebuilding refcount structure');
    expect(readFileSync(img).readBigUInt64BE(72) & 1n).toBe(0n);
    expect(qemuImg(['check', img]).status).toBe(0);
    const raw2 = join(dir, 'd2.raw');
    must('qemu-img', ['convert', '-O', 'raw', img, raw2]);
    expect(readFileSync(raw2).equals(readFileSync(raw1))).toBe(true);
  });

  /**
   * Crash safety: power is lost after each write a repair makes (write-back cache: only what a
   * flush completed survives). Whatever is left must hold the same guest data and be no worse
   * than before the repair: qemu-img finds at most as many corruptions (leaks are fine).
   */
  for (const [label, damage] of [
    ['a rebuild of the refcount structure', (p: Qcow2Poker) => p.setReftableEntry(0, 0n)],
    ['leak, refcount and OFLAG_COPIED repairs', (p: Qcow2Poker) => {
      p.setL2Entry(0, 1, 0n);
      p.setRefcount(p.dataOffset(0, 2) / p.clusterSize, 2);
      p.setL2Entry(0, 3, p.l2Entry(0, 3) & ~(1n << 63n));
    }],
  ] as const) {
    it(`survives power loss at every write of ${label}`, async () => {
      const img = join(dir, 'crash.qcow2');
      copyFileSync(base, img);
      poke(img, damage);
      const damaged = new Uint8Array(readFileSync(img));
      const corruptionsBefore = Number(/(\d+) errors were found/.exec(qemuImg(['check', img]).stdout)?.[1] ?? 0);
      const rawBefore = join(dir, 'crash-before.raw');
      must('qemu-img', ['convert', '-O', 'raw', img, rawBefore]);
      const expected = readFileSync(rawBefore);
      for (const cache of ['write-back', 'write-through'] as const) {
        let completed = false;
        for (let k = 1; k < 200 && !completed; k++) {
          const mem = new MemoryDevice({ data: damaged });
          // write-through: every write is on disk at once, so the order of the writes alone must be safe
          const dev = faultyDevice(mem, { powerLossAfterWrite: k, cache });
          try {
            await checkImage(await openForCheck(dev, () => {}), FIX_LEAKS | FIX_ERRORS);
          } catch {
            // the power loss surfaces as an I/O error somewhere in the repair
          }
          completed = !dev.powerLost;
          const left = new Uint8Array(mem.size());
          await mem.read(0, left);
          const after = join(dir, 'crash-after.qcow2');
          writeFileSync(after, left);
          const r = qemuImg(['check', after]);
          const corruptions = Number(/(\d+) errors were found/.exec(r.stdout)?.[1] ?? 0);
          expect(corruptions, `${cache}: power loss after write ${k}: ${r.stdout}${r.stderr}`).toBeLessThanOrEqual(corruptionsBefore);
          const raw = join(dir, 'crash-after.raw');
          must('qemu-img', ['convert', '-O', 'raw', after, raw]);
          expect(readFileSync(raw).equals(expected), `guest data after power loss at write ${k}`).toBe(true);
        }
        expect(completed).toBe(true);
      }
    });
  }

  it('repairDirty fails with qemu’s message when the repair cannot complete', async () => {
    const img = join(dir, 'broken.qcow2');
    copyFileSync(base, img);
    // an unaligned refcount block makes the rebuild's overlap check refuse to write
    poke(img, (p) => p.setReftableEntry(0, p.reftableEntry(0) | 0x100n));
    await expect(withFile(img, false, (f) => repairDirty(f))).rejects.toThrow(/^Could not repair dirty image: /);
  });
});

describe('check on images that are not qcow2', () => {
  it('refuses a non-qcow2 device with qemu’s message', async () => {
    const dev = new MemoryDevice({ size: 4096 });
    await expect(openForCheck(dev, () => {})).rejects.toThrow('Image is not in qcow2 format');
  });
});
