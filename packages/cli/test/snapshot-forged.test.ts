/**
 * `tsimg snapshot` against qemu-img 7.2 on snapshot tables qemu-img would not write itself:
 * entries from older writers (less extra data) and from newer ones (unknown extra data), which
 * a rewrite must bring up to date or keep as qemu does, and a table at qemu's limit of 65536
 * snapshots. The tables are laid out with the qcow2 codec, then both programs run on copies.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodeSnapshotTable, type Qcow2Snapshot } from '../../qcow2/src/format/snapshot.js';
import { describeQemu, must, qemuAsTsimg, qemuImg, tempDir, tsimg } from '../../../test-images/qemu.js';
import { maskDates, maskedImage } from './snapshot-harness.js';

/**
 * Replaces the snapshot table of `file` with `entries`: over the old table when there is one
 * (whose cluster is allocated, so later allocations avoid it; the new table must fit in it),
 * else at the next cluster boundary past the end (unallocated: fine only where nothing will
 * be allocated).
 */
function forgeTable(file: string, entries: readonly Qcow2Snapshot[]): void {
  const img = readFileSync(file);
  const cs = 1 << img.readUInt32BE(20);
  const old = img.readUInt32BE(60) > 0 ? Number(img.readBigUInt64BE(64)) : 0;
  const at = old !== 0 ? old : Math.ceil(img.length / cs) * cs;
  const table = encodeSnapshotTable(entries);
  if (old !== 0 && table.length > cs) throw new Error('forged table does not fit in the old one');
  const out = Buffer.alloc(Math.max(img.length, at + table.length));
  img.copy(out);
  out.set(table, at);
  out.writeUInt32BE(entries.length, 60);
  out.writeBigUInt64BE(BigInt(at), 64);
  writeFileSync(file, out);
}

describeQemu('tsimg snapshot: tables from other writers, and at the limit', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-snapshot-forged-'));
  });
  afterAll(() => cleanup());

  it('rewrites old and unknown extra data as qemu does (kept, or completed to 24 bytes)', async () => {
    const file = join(dir, 'extra.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', file, '1M']);
    must('qemu-io', ['-c', 'write -P 3 0 64k', file]);
    must('qemu-img', ['snapshot', '-c', 'real', file]);
    // Three entries in other layouts, all naming the real snapshot's L1 table (its clusters
    // lack their references, which neither program looks at here): listed, then rewritten by
    // creating one more snapshot.
    const img = readFileSync(file);
    const tableAt = Number(img.readBigUInt64BE(64));
    const l1Offset = Number(img.readBigUInt64BE(tableAt));
    const base: Qcow2Snapshot = {
      l1TableOffset: l1Offset, l1Size: img.readUInt32BE(tableAt + 8), id: '7', name: 'old', dateSec: 1_600_000_000,
      dateNsec: 5, vmClockNsec: 3_723_000_000_000n, vmStateSize32: 0, extraDataSize: 0, unknownExtraData: new Uint8Array(0),
    };
    forgeTable(file, [
      { ...base },
      { ...base, id: '8', name: 'two-fields', extraDataSize: 16, vmStateSizeLarge: 0n, diskSize: 1n << 20n },
      { ...base, id: 'x9', name: 'newer', extraDataSize: 40, vmStateSizeLarge: 0n, diskSize: 1n << 20n, icount: 77n, unknownExtraData: new Uint8Array(16).fill(0xab) },
    ]);
    const q = join(dir, 'q.qcow2');
    const t = join(dir, 't.qcow2');
    for (const f of [q, t]) writeFileSync(f, readFileSync(file));
    for (const args of [['-l'], ['-c', 'fresh'], ['-l']]) {
      const theirs = maskDates(qemuAsTsimg(qemuImg(['snapshot', ...args, q])));
      expect(maskDates(tsimg(['snapshot', ...args, t])), args.join(' ')).toEqual(theirs);
    }
    expect(readFileSync(q).readUInt32BE(60), 'qemu-img created the snapshot').toBe(4);
    expect(maskedImage(t).equals(maskedImage(q)), 'images identical apart from the dates').toBe(true);
  });

  it('refuses a 65537th snapshot with qemu\'s errno', () => {
    const file = join(dir, 'full.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', file, '1M']);
    const entries: Qcow2Snapshot[] = [];
    for (let i = 1; i <= 65536; i++) {
      entries.push({
        l1TableOffset: 0, l1Size: 0, id: String(i), name: 's', dateSec: 0, dateNsec: 0, vmClockNsec: 0n, vmStateSize32: 0,
        extraDataSize: 24, vmStateSizeLarge: 0n, diskSize: 1n << 20n, icount: 0n, unknownExtraData: new Uint8Array(0),
      });
    }
    forgeTable(file, entries);
    const theirs = qemuAsTsimg(qemuImg(['snapshot', '-c', 'one-more', file]));
    expect(theirs.stderr).toContain('-27 (File too large)');
    expect(tsimg(['snapshot', '-c', 'one-more', file])).toEqual(theirs);
  });
});
