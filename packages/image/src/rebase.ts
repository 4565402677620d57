/**
 * The loop behind `qemu-img rebase` (qemu 7.2's img_rebase): in safe mode, every range the
 * image does not allocate itself is compared between the old backing chain and the new one,
 * and where they differ the old content is written into the image, so that the image reads the
 * same once its header names the new backing file; then the header is changed
 * (bdrv_change_backing_file).
 *
 * The steps that decide the bytes, as img_rebase takes them: 2 MiB pieces (IO_BUF_SIZE), cut at
 * what the image allocates (bdrv_is_allocated) and, when the new backing image is one of the
 * old chain (prefix_chain_bs), skipped where nothing between changes; pieces cut at the end of
 * the shorter backing image; 512-byte sectors compared, and each run of differing sectors
 * written at once — as zeroes past the end of the old backing image.
 *
 * With `compress` (qemu 8.2's -c), whole clusters are written compressed instead, with the
 * image's own view of them, where the whole cluster is unallocated in the image.
 */
import { IoError, strerror, TsimgError, UnsupportedError, UsageError, alignedBuffer } from '@tsimg/raw';
import { blockStatusAbove, layerStatus } from './block-status.js';
import type { Image } from './image.js';

/** Options of {@link rebaseImage}. */
export interface RebaseOptions {
  /**
   * The new backing image, open with its chain; undefined: none (`-b ""`, the image is
   * flattened). It may be an image of `image`'s own chain (qemu's prefix_chain_bs).
   */
  newBacking?: Image;
  /** `newBacking` is an image of `image`'s backing chain: ranges nothing above it changes are skipped. */
  inChain?: boolean;
  /** Write compressed clusters (qemu 8.2's -c; the image's format must compress). */
  compress?: boolean;
  /** Called after each piece that was compared, with the number of pieces in all (img_rebase's progress). */
  onPiece?: (pieces: number) => void;
}

/** qemu-img's IO_BUF_SIZE. */
export const REBASE_BUF_SIZE = 2 * 1024 * 1024;
const SECTOR = 512;

/** Equal stretches are skipped with one memcmp per this many bytes before going sector by sector. */
const EQUAL_STEP = 64 * 1024;

/**
 * compare_buffers: whether the first sector differs, and how many bytes share that answer —
 * qemu's sector-by-sector answer, found with one memcmp per 64 KiB across equal stretches
 * (4,096 calls per 2 MiB piece cost ~0.3 s per GiB here).
 */
function compareRun(a: Uint8Array, b: Uint8Array): { differ: boolean; length: number } {
  const len = a.length;
  const A = Buffer.from(a.buffer, a.byteOffset, len);
  const B = Buffer.from(b.buffer, b.byteOffset, len);
  const same = (from: number, to: number): boolean => A.compare(B, from, to, from, to) === 0;
  const differ = !same(0, Math.min(len, SECTOR));
  let i = Math.min(len, SECTOR);
  if (differ) {
    while (i < len && !same(i, Math.min(len, i + SECTOR))) i += SECTOR;
    return { differ, length: Math.min(i, len) };
  }
  while (i < len) {
    const end = Math.min(len, i + EQUAL_STEP);
    if (same(i, end)) {
      i = end;
      continue;
    }
    // The first difference is in [i, end): stop at its sector.
    while (same(i, Math.min(len, i + SECTOR))) i += SECTOR;
    break;
  }
  return { differ, length: i };
}

/** One piece of the safe-mode loop, planned, with the reads of its parts under way. */
interface Piece {
  offset: number;
  n: number;
  /** False for a piece the image allocates (or nothing below changes): nothing to compare. */
  compared: boolean;
  /** The [from, to) pairs of the piece that are read and compared (see {@link zeroRuns}). */
  parts: number[];
  oldIsZero: boolean;
  bufOld: Uint8Array;
  bufNew: Uint8Array;
  /** Settles when every read of the piece is over; rejects with the error qemu's order reports first. */
  reads: Promise<void>;
}

/**
 * The safe-mode loop: writes into `image` what its old backing chain shows and the new one
 * (`options.newBacking`) would not, so its content stays the same under the new backing file.
 * The header is left as it is (see {@link changeBackingFile}).
 *
 * The next piece is planned and read while one is compared and written (two pairs of 2 MiB
 * buffers): nothing a piece writes into the image is read by the next one (the backing images
 * are not written, and the image's own status is asked of other ranges). A failure of the next
 * piece is reported after the current one is finished, as one piece at a time would.
 */
export async function rebaseImage(image: Image, options: RebaseOptions = {}): Promise<void> {
  const size = image.size();
  const pieces = size === 0 ? 1 : Math.floor(size / Math.min(size, REBASE_BUF_SIZE));
  const bufSize = Math.min(REBASE_BUF_SIZE, size);
  const pairs = [0, 1].map(() => [alignedBuffer(bufSize), alignedBuffer(bufSize)] as const);
  const writer = options.compress ? compressedWriter(image) : undefined;
  let turn = 0;
  const plan = (offset: number): Promise<Piece> | undefined => {
    if (offset >= size) return undefined;
    const [bufOld, bufNew] = pairs[turn++ % 2];
    const p = planPiece(image, options, offset, bufOld, bufNew);
    p.catch(() => undefined); // awaited in its turn
    return p;
  };
  for (let ahead = plan(0); ahead !== undefined; ) {
    const piece = await ahead;
    ahead = plan(piece.offset + piece.n);
    try {
      if (!piece.compared) continue;
      await piece.reads;
      await finishPiece(image, writer, piece);
      options.onPiece?.(pieces);
    } catch (err) {
      // Nothing stays under way once the loop ends.
      await ahead?.then((p) => p.reads.catch(() => undefined), () => undefined);
      throw err;
    }
  }
}

/**
 * img_rebase's steps for the piece at `offset` up to its reads: how long it is (cut at what the
 * image allocates, at what changes below the new backing image when that is in the chain, at
 * the end of each backing image), which parts of it are read, and the reads started.
 */
async function planPiece(image: Image, options: RebaseOptions, offset: number, bufOld: Uint8Array, bufNew: Uint8Array): Promise<Piece> {
  const oldBacking = image.backing;
  const newBacking = options.newBacking;
  const oldSize = oldBacking?.size() ?? 0;
  const newSize = newBacking?.size() ?? 0;
  let n = Math.min(REBASE_BUF_SIZE, image.size() - offset);
  const skipped = (): Piece => ({ offset, n, compared: false, parts: [], oldIsZero: true, bufOld, bufNew, reads: Promise.resolve() });
  const own = await layerStatus(image, offset, n, false).catch((err: unknown) => {
    throw stageError('error while reading image metadata', err);
  });
  n = own.length;
  if (own.allocated) return skipped();
  if (options.inChain && newBacking !== undefined) {
    const below = await changedBelow(image, newBacking, offset, n);
    n = below.length;
    if (!below.changed) return skipped();
  }
  const oldIsZero = offset >= oldSize || oldBacking === undefined;
  if (!oldIsZero) n = Math.min(n, oldSize - offset);
  const newIsZero = offset >= newSize || newBacking === undefined;
  if (!newIsZero) n = Math.min(n, newSize - offset);
  // Where both chains read zeroes nothing can differ, so neither is read or compared there:
  // img_rebase reads and compares them, and equal sectors write nothing and end a differing
  // run, so skipping them keeps every write it makes. (Zero-filling and comparing those
  // stretches was a third of the loop's CPU for a sparse base.)
  const zeroOld = oldIsZero ? [0, n] : await zeroRuns(oldBacking, 'old', offset, n);
  const zeroNew = newIsZero ? [0, n] : await zeroRuns(newBacking, 'new', offset, n);
  const parts = outside(intersect(zeroOld, zeroNew), n);
  // The same two reads as img_rebase's (old, then new), all side by side; an error of an old
  // one is still the one reported.
  const readAll = (which: 'old' | 'new', chain: Image | undefined, buf: Uint8Array): Promise<void>[] => {
    const reads: Promise<void>[] = [];
    for (let p = 0; p < parts.length; p += 2) {
      if (chain === undefined) buf.fill(0, parts[p], parts[p + 1]);
      else reads.push(readStage(which, () => chain.read(offset + parts[p], buf.subarray(parts[p], parts[p + 1]))));
    }
    return reads;
  };
  const reads = allOver([...readAll('old', oldIsZero ? undefined : oldBacking, bufOld), ...readAll('new', newIsZero ? undefined : newBacking, bufNew)]);
  reads.catch(() => undefined);
  return { offset, n, compared: true, parts, oldIsZero, bufOld, bufNew, reads };
}

/** Settles once every one of `reads` is over (not at the first failure), rejecting with the first failure in order. */
async function allOver(reads: Promise<void>[]): Promise<void> {
  const settled = await Promise.allSettled(reads);
  for (const r of settled) if (r.status === 'rejected') throw r.reason;
}

/** Compares a piece whose reads are over and writes each run of differing sectors. */
async function finishPiece(image: Image, writer: ReturnType<typeof compressedWriter> | undefined, piece: Piece): Promise<void> {
  const { offset, parts, oldIsZero, bufOld, bufNew } = piece;
  for (let p = 0; p < parts.length; p += 2) {
    const to = parts[p + 1];
    for (let written = parts[p]; written < to; ) {
      const run = compareRun(bufOld.subarray(written, to), bufNew.subarray(written, to));
      if (run.differ) {
        const at = offset + written;
        if (writer !== undefined) await writer(at, run.length, oldIsZero ? undefined : bufOld.subarray(written, written + run.length));
        else if (oldIsZero) await writeStage(() => image.writeZeroes(at, run.length));
        else await writeStage(() => image.write(at, bufOld.subarray(written, written + run.length)));
      }
      written += run.length;
    }
  }
}

/**
 * The stretches of [offset, offset + n) that read as zeroes through `chain`, relative to
 * `offset`, as a flat list of [start, end) pairs. A failed status query is reported as the read
 * it stands for would be.
 */
async function zeroRuns(chain: Image, which: 'old' | 'new', offset: number, n: number): Promise<number[]> {
  const runs: number[] = [];
  for (let at = 0; at < n; ) {
    let st;
    try {
      st = await blockStatusAbove(chain, offset + at, n - at);
    } catch (err) {
      throw readError(which, err);
    }
    const end = st.length > 0 ? Math.min(n, at + st.length) : n;
    if (st.zero && st.length > 0) {
      if (runs.length > 0 && runs[runs.length - 1] === at) runs[runs.length - 1] = end;
      else runs.push(at, end);
    }
    at = end;
  }
  return runs;
}

/** The [start, end) pairs both sorted, disjoint lists cover. */
function intersect(a: number[], b: number[]): number[] {
  const out: number[] = [];
  for (let i = 0, j = 0; i < a.length && j < b.length; ) {
    const from = Math.max(a[i], b[j]);
    const to = Math.min(a[i + 1], b[j + 1]);
    if (from < to) out.push(from, to);
    if (a[i + 1] < b[j + 1]) i += 2;
    else j += 2;
  }
  return out;
}

/** The [start, end) pairs of [0, n) that the sorted, disjoint list `runs` leaves out. */
function outside(runs: number[], n: number): number[] {
  const out: number[] = [];
  let at = 0;
  for (let i = 0; i < runs.length; i += 2) {
    if (runs[i] > at) out.push(at, runs[i]);
    at = runs[i + 1];
  }
  if (at < n) out.push(at, n);
  return out;
}

/**
 * With the new backing image in the old chain (bdrv_is_allocated_above from the image's backing
 * file down to, not including, it): whether an image between allocates the run at `offset`,
 * and how long that answer holds. Past the end of the old backing image qemu gets no answer
 * (pnum 0) and compares the whole run.
 */
async function changedBelow(image: Image, prefix: Image, offset: number, n: number): Promise<{ changed: boolean; length: number }> {
  const below = image.backing;
  if (below === undefined || below === prefix) return { changed: false, length: n };
  if (offset >= below.size()) return { changed: true, length: n };
  try {
    const st = await blockStatusAbove(below, offset, Math.min(n, below.size() - offset), { base: prefix, recurse: false });
    return { changed: st.allocated, length: st.length };
  } catch (err) {
    throw stageError('error while reading image metadata', err);
  }
}

/** qemu's "<what>: <strerror>" line for a failed step, keeping the error's errno. */
function stageError(what: string, err: unknown): IoError {
  const errno = err instanceof TsimgError ? err.errno : undefined;
  const reason = errno !== undefined ? strerror(errno) : err instanceof Error ? err.message : String(err);
  return new IoError(`${what}: ${reason}`, { cause: err, errno: errno ?? 'EIO' });
}

async function readStage(which: 'old' | 'new', read: () => Promise<void>): Promise<void> {
  try {
    await read();
  } catch (err) {
    throw readError(which, err);
  }
}

/** img_rebase's line for a failed read of a backing chain. */
function readError(which: 'old' | 'new', err: unknown): IoError {
  return new IoError(`error while reading from ${which} backing file`, { cause: err, errno: 'EIO' });
}

async function writeStage(write: () => Promise<void>): Promise<void> {
  try {
    await write();
  } catch (err) {
    throw stageError('Error while writing to COW image', err);
  }
}

/**
 * The -c writer: each cluster a differing run touches is written once, whole and compressed,
 * with what the image reads there now, when the image allocates none of it; otherwise the run
 * itself is written as without -c.
 */
function compressedWriter(image: Image): (at: number, length: number, data: Uint8Array | undefined) => Promise<void> {
  const cs = image.clusterSize;
  const writeCompressed = image.writeCompressed?.bind(image);
  if (cs === undefined || writeCompressed === undefined) {
    throw new UnsupportedError('Compression not supported for this file format', { errno: 'ENOTSUP' });
  }
  const size = image.size();
  let done = -1; // the last cluster written compressed
  return async (at, length, data) => {
    for (let c = Math.floor(at / cs); c * cs < at + length; c++) {
      if (c <= done) continue;
      const start = c * cs;
      const end = Math.min(size, start + cs);
      const st = await layerStatus(image, start, end - start, false);
      const from = Math.max(at, start);
      const to = Math.min(at + length, end);
      if (st.allocated || st.length < end - start) {
        // Part of the cluster is the image's own (subclusters): write just the run there.
        if (data === undefined) await writeStage(() => image.writeZeroes(from, to - from));
        else await writeStage(() => image.write(from, data.subarray(from - at, to - at)));
        continue;
      }
      const cluster = new Uint8Array(end - start);
      await readStage('old', () => image.read(start, cluster));
      await writeStage(() => writeCompressed(start, cluster));
      done = c;
    }
  };
}

/**
 * bdrv_change_backing_file with `require` (as img_rebase calls it): records the new backing
 * file name and format in the image. Fails with EINVAL for a format without a name or a name
 * without a format, with ENOTSUP for a format that has no backing files.
 */
export async function changeBackingFile(image: Image, name: string | undefined, format: string | undefined): Promise<void> {
  if (format !== undefined && name === undefined) throw new UsageError('Invalid argument', { errno: 'EINVAL' });
  if (name !== undefined && format === undefined) throw new UsageError('backing format must be specified', { errno: 'EINVAL' });
  if (image.changeBackingFile === undefined) throw new UnsupportedError('Operation not supported', { errno: 'ENOTSUP' });
  await image.changeBackingFile(name, format);
}
