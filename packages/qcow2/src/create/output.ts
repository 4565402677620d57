/**
 * Writing a create's in-memory layout to its device: finished L2 tables as they pile up, then
 * every remaining metadata cluster once with its final content, merged into large writes.
 */
import { IoError, preallocateZeroes, type BlockDevice } from '@tsimg/raw';
import type { Layout } from './layout.js';

/** What a create needs from the files it writes: a BlockDevice satisfies it. */
export type CreateTarget = Pick<BlockDevice, 'write' | 'resize' | 'size'>;

/** The data area a falloc/full create preallocates by writing zeroes. */
export interface ZeroFill {
  start: number;
  end: number;
  mode: 'falloc' | 'full';
}

/** Flush finished L2 tables to the device once this many bytes are waiting. */
const L2_FLUSH_BYTES = 64 * 1024 * 1024;

/** Writes finished L2 tables (every table when `all`) once enough have piled up. */
export async function drainL2(lay: Layout, file: CreateTarget, all: boolean): Promise<void> {
  if (!all && lay.finishedL2.length * lay.cs < L2_FLUSH_BYTES) return;
  const offsets = all ? [...lay.l2Tables.keys()] : lay.finishedL2;
  lay.finishedL2.splice(0);
  if (all) lay.l1IndexInProgress = -1;
  offsets.sort((a, b) => a - b);
  await writeRuns(file, offsets.map((o) => [o, lay.l2Tables.get(o)!] as const));
  for (const o of offsets) lay.l2Tables.delete(o);
}

/** Writes everything the model holds, then sets the final file length. */
export async function flushLayout(
  lay: Layout,
  file: CreateTarget,
  zeroFill: ZeroFill | undefined,
): Promise<void> {
  if (zeroFill) {
    try {
      await preallocateZeroes(file, zeroFill.start, zeroFill.end, zeroFill.mode);
    } catch (err) {
      // qcow2_co_truncate's bdrv_co_truncate of its file, inside qcow2_co_create's blk_truncate
      const e = err as IoError;
      throw new IoError(`Could not resize image: Failed to resize underlying file: ${e.message}`, { cause: err, errno: e.errno });
    }
  }
  await drainL2(lay, file, true);
  // only what qemu wrote: a cluster holding a 16-byte L1 table stays a hole after it
  const pieces: (readonly [number, Uint8Array])[] = [];
  for (const [ci, bytes] of lay.overlay) {
    const [lo, hi] = lay.extents.get(ci)!;
    if (hi > lo) pieces.push([ci * lay.cs + lo, bytes.subarray(lo, hi)]);
  }
  for (const [off, bytes] of lay.refblocks) pieces.push([off, bytes]);
  pieces.sort((a, b) => a[0] - b[0]);
  await writeRuns(file, pieces);
  if (file.size() !== lay.fileLength) await file.resize(lay.fileLength);
}

/** Writes pieces (offset, bytes) sorted by offset, merging adjacent ones into large writes. */
async function writeRuns(dev: CreateTarget, pieces: readonly (readonly [number, Uint8Array])[]): Promise<void> {
  const MAX_RUN = 16 * 1024 * 1024;
  let i = 0;
  while (i < pieces.length) {
    const start = pieces[i]![0];
    let end = start + pieces[i]![1].length;
    let j = i + 1;
    while (j < pieces.length && pieces[j]![0] === end && end - start < MAX_RUN) end += pieces[j++]![1].length;
    if (j === i + 1) {
      await dev.write(start, pieces[i]![1]);
    } else {
      const buf = new Uint8Array(end - start);
      for (let k = i; k < j; k++) buf.set(pieces[k]![1], pieces[k]![0] - start);
      await dev.write(start, buf);
    }
    i = j;
  }
}
