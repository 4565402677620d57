/**
 * Writing a create's in-memory layout to its device: finished L2 tables as they pile up, then
 * every remaining metadata cluster once with its final content, merged into large writes.
 */
import { IoError, preallocateZeroes, strerror, TsimgError, type BlockDevice } from '@tsimg/raw';
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

/**
 * Writes everything the model holds, then sets the final file length — in qcow2_co_create's
 * order where its messages depend on it: the header cluster, then the refcount table and block
 * (each failure in qemu's words), then the preallocated data, the L2 tables and the rest.
 */
export async function flushLayout(lay: Layout, file: CreateTarget, zeroFill: ZeroFill | undefined): Promise<void> {
  const cs = lay.cs;
  // only what qemu wrote: a cluster holding a 16-byte L1 table stays a hole after it
  const pieces: (readonly [number, Uint8Array])[] = [];
  for (const [ci, bytes] of lay.overlay) {
    const [lo, hi] = lay.extents.get(ci)!;
    if (hi > lo) pieces.push([ci * cs + lo, bytes.subarray(lo, hi)]);
  }
  for (const [off, bytes] of lay.refblocks) pieces.push([off, bytes]);
  pieces.sort((a, b) => a[0] - b[0]);
  // qemu's first two writes are whole clusters (header; refcount table and block), so a full
  // disk fails in the same one; every image keeps those three clusters allocated anyway.
  await inQemuWords('Could not write qcow2 header', () => file.write(0, span(pieces, 0, cs)));
  await inQemuWords('Could not write refcount table', () => file.write(cs, span(pieces, cs, 3 * cs)));
  const rest = pieces.filter(([off]) => off >= 3 * cs);
  if (zeroFill) {
    // qcow2_co_truncate's bdrv_co_truncate of its file, inside qcow2_co_create's blk_truncate
    await inQemuWords('Could not resize image: Failed to resize underlying file', () =>
      preallocateZeroes(file, zeroFill.start, zeroFill.end, zeroFill.mode),
    );
  }
  await drainL2(lay, file, true);
  await writeRuns(file, rest);
  if (file.size() !== lay.fileLength) await file.resize(lay.fileLength);
}

/** The bytes of `[lo, hi)`: zeroes, with the pieces that start there (each within it). */
function span(pieces: readonly (readonly [number, Uint8Array])[], lo: number, hi: number): Uint8Array {
  const buf = new Uint8Array(hi - lo);
  for (const [off, bytes] of pieces) {
    if (off >= lo && off < hi) buf.set(bytes.subarray(0, hi - off), off - lo);
  }
  return buf;
}

/**
 * Runs `step`; an I/O failure becomes `what: <reason>` — the strerror text of an OS error,
 * or the message of one worded already (preallocation's).
 */
async function inQemuWords(what: string, step: () => Promise<void>): Promise<void> {
  try {
    await step();
  } catch (err) {
    if (!(err instanceof TsimgError) || err.code !== 'io') throw err;
    const reason = err.cause instanceof TsimgError || err.errno === undefined ? err.message : strerror(err.errno);
    throw new IoError(`${what}: ${reason}`, { cause: err, errno: err.errno });
  }
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
