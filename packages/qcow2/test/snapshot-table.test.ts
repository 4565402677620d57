/**
 * The snapshot table helpers of a writable image (engine/snapshot-table.ts): qemu's ways of
 * finding an entry and of choosing the next ID.
 */
import { describe, expect, it } from 'vitest';
import { findSnapshotByIdAndName, findSnapshotByIdOrName, newSnapshotId } from '../src/engine/snapshot-table.js';
import type { Qcow2Snapshot } from '../src/format/snapshot.js';

function entry(id: string, name: string): Qcow2Snapshot {
  return {
    l1TableOffset: 0, l1Size: 0, id, name, dateSec: 0, dateNsec: 0, vmClockNsec: 0n, vmStateSize32: 0,
    extraDataSize: 0, unknownExtraData: new Uint8Array(0),
  };
}

describe('snapshot table lookups', () => {
  const list = [entry('1', '2'), entry('2', 'a'), entry('3', 'a'), entry('4', '1')];

  it('find_snapshot_by_id_or_name: an ID first, then the first with that name', () => {
    expect(findSnapshotByIdOrName(list, '2')).toBe(1);
    expect(findSnapshotByIdOrName(list, 'a')).toBe(1);
    expect(findSnapshotByIdOrName(list, '1')).toBe(0);
    expect(findSnapshotByIdOrName(list, 'x')).toBe(-1);
  });

  it('find_snapshot_by_id_and_name: both must match when both are given', () => {
    expect(findSnapshotByIdAndName(list, '3', 'a')).toBe(2);
    expect(findSnapshotByIdAndName(list, '2', '2')).toBe(-1);
    expect(findSnapshotByIdAndName(list, undefined, 'a')).toBe(1);
    expect(findSnapshotByIdAndName(list, '4', undefined)).toBe(3);
    expect(findSnapshotByIdAndName(list, undefined, undefined)).toBe(-1);
  });

  it('find_new_snapshot_id: one more than the largest ID read with strtoul', () => {
    expect(newSnapshotId([])).toBe('1');
    expect(newSnapshotId(list)).toBe('5');
    expect(newSnapshotId([entry('7', ''), entry('abc', ''), entry(' 12x', '')])).toBe('13');
    // strtoul negates a minus sign modulo 2^64, and the sum wraps as unsigned long does.
    expect(newSnapshotId([entry('-1', '')])).toBe('0');
    expect(newSnapshotId([entry('99999999999999999999999', '')])).toBe('0');
    expect(newSnapshotId([entry('18446744073709551614', '')])).toBe('18446744073709551615');
  });
});
