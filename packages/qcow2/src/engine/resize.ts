/**
 * Resizing an open image (qcow2_co_truncate without preallocation): growing the L1 table, or
 * discarding what lies beyond the new end, shrinking the tables and the file, then the header.
 */
import { UnsupportedError, UsageError } from '@tsimg/raw';
import { beforeChange } from './header-write.js';
import { growL1, shrinkL1 } from './l1-table.js';
import { flushAll, virtualSize, type EngineState } from './state.js';
import { discardClusters } from './zero-discard.js';

/** qcow2_co_truncate without preallocation: grow the L1 table, or drop what lies beyond. */
export async function resize(s: EngineState, size: number): Promise<void> {
  const old = virtualSize(s);
  if (size === old) return;
  if (size % 512 !== 0) throw new UsageError('The new size must be a multiple of 512', { errno: 'EINVAL' });
  if (s.version < 3 && s.header.nbSnapshots > 0) {
    throw new UnsupportedError("Can't resize a v2 image which has snapshots", { errno: 'ENOTSUP' });
  }
  await beforeChange(s);
  const newL1Size = Math.ceil(size / s.geo.l2Span);
  if (size < old) await shrink(s, size, old, newL1Size);
  else await growL1(s, newL1Size, true);
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(size));
  await s.file.write(24, b);
  // The device has taken the new size: if the flush fails, it still reaches the disk with a
  // later flush, so the image must not go on believing in the old size.
  s.header.size = size;
  await s.file.flush();
}

/** The shrinking half: the clusters past the end go, then the tables, then the file's tail. */
async function shrink(s: EngineState, size: number, old: number, newL1Size: number): Promise<void> {
  const cs = s.clusterSize;
  const start = Math.ceil(size / cs) * cs;
  if (start < old) await discardClusters(s, start, old - start, true);
  await shrinkL1(s, newL1Size);
  const alloc = s.allocator!;
  await alloc.shrinkReftable();
  const fileSize = Math.ceil(s.file.size() / 512) * 512;
  const last = await alloc.lastUsedCluster(fileSize);
  if ((last + 1) * cs < fileSize) {
    // Everything written so far must reach the file before its tail goes away.
    await flushAll(s);
    await s.file.resize((last + 1) * cs);
  }
}
