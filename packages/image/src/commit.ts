/**
 * The loop behind `qemu-img commit`: qemu 7.2's active commit (block/mirror.c,
 * commit_active_start → mirror_run), which copies everything the images above the base hold
 * into the base, then (unless told to leave it) empties the top (bdrv_make_empty).
 *
 * What decides the bytes the base ends up with, as mirror.c does it:
 * - the base grows to the top's size first when it is smaller;
 * - a dirty bitmap of `granularity` chunks (the base's cluster size within 4–64 KiB, else
 *   64 KiB) marks every chunk that any image above the base allocates (bdrv_is_allocated_above);
 * - runs of consecutive dirty chunks (at most 16 MiB) are split by the block status of the
 *   whole chain: data is copied in pieces of up to 1 MiB, whole-chunk runs that read as zeroes
 *   become zero writes that may unmap (discards when neither data nor zero), and a piece
 *   shorter than a chunk is copied as a whole chunk; zero runs not aligned to the base's
 *   clusters are copied as data.
 * qemu keeps up to 16 copies in flight, so the order in which a qcow2 base allocates clusters
 * can vary from run to run there. This loop reads a few pieces ahead (READ_AHEAD slots of
 * 1 MiB), so the reads of the top overlap the writes into the base, but it writes one piece
 * at a time in guest order, which is what qemu does whenever its reads complete in order: the
 * base sees the same requests in the same order as without read-ahead.
 */
import { errorWithCode, strerror, TsimgError, alignedBuffer } from '@tsimg/raw';
import { blockStatusAbove } from './block-status.js';
import type { Image } from './image.js';

/** Options of {@link commitImage}. */
export interface CommitOptions {
  /** Leave the top as it is (`-d`, and `-b`, which implies it); default: empty it. */
  drop?: boolean;
  /**
   * The job's progress, as qemu's job reports it after each operation: bytes done, and done
   * plus remaining.
   */
  onProgress?: (current: number, total: number) => void;
  /** Waits as qemu's job rate limit (`-r`) would after `bytes` were copied. */
  throttle?: (bytes: number) => Promise<void>;
}

const MIB = 1024 * 1024;
/** mirror.c: MAX_IN_FLIGHT × MAX_IO_BYTES, the job's buffer. */
const BUF_SIZE = 16 * MIB;
/** mirror.c: the largest piece of data one operation copies (max_io_bytes). */
const MAX_IO_BYTES = MIB;
/**
 * Pieces read ahead of the one being written. qemu keeps up to 16 operations in flight; here
 * the writes into the base go one at a time, and a few reads ahead keep them fed (each slot
 * of fresh memory also costs its page faults once).
 */
const READ_AHEAD = 4;
/** The longest run bdrv_is_allocated_above is asked for at once (INT_MAX, chunk-aligned). */
const STATUS_STEP = 0x4000_0000;

/** bdrv_get_default_bitmap_granularity: the cluster size within 4–64 KiB, else 64 KiB. */
export function commitGranularity(base: Image): number {
  const cs = base.clusterSize;
  if (cs === undefined || cs <= 0) return 64 * 1024;
  return Math.min(65536, Math.max(4096, cs));
}

/** mirror_dirty_init: the chunks any image above `base` allocates, and how many they are. */
async function dirtyChunks(top: Image, base: Image, length: number, g: number): Promise<{ dirty: Uint8Array; count: number }> {
  const dirty = new Uint8Array(Math.ceil(length / g));
  let count = 0;
  let end = 0; // the chunks below are marked already (runs come in order, and may share a chunk)
  for (let offset = 0; offset < length; ) {
    const st = await blockStatusAbove(top, offset, Math.min(length - offset, STATUS_STEP), { base, recurse: false });
    if (st.allocated) {
      const from = Math.max(end, Math.floor(offset / g));
      end = Math.ceil((offset + st.length) / g);
      dirty.fill(1, from, end);
      count += Math.max(0, end - from);
    }
    offset += st.length;
  }
  return { dirty, count };
}

/**
 * The dirty chunks from `chunk` on (at least the first), up to `max`: a loop of its own, so
 * that the job's loop stays small work for the JIT (the run walk is its only hot part).
 */
function dirtyRun(dirty: Uint8Array, chunk: number, max: number): number {
  let nb = 1;
  while (nb < max && chunk + nb < dirty.length && dirty[chunk + nb] === 1) nb++;
  return nb;
}

type Method = 'copy' | 'zero' | 'discard';

/**
 * Copies what the images above `base` hold into `base` (which must be in `top`'s chain and
 * open for writing), then empties `top` unless `drop`. Errors keep qemu's wording where the
 * job has one ("Failed to empty …").
 */
export async function commitImage(top: Image, base: Image, options: CommitOptions = {}): Promise<void> {
  const length = top.size();
  if (base.size() < length) await base.resize(length);
  if (length > 0) await copyDirty(top, base, length, options);
  await base.flush();
  if (options.drop) return;
  if (top.makeEmpty === undefined) return; // qemu-img commit ignores ENOTSUP here
  try {
    await top.makeEmpty();
  } catch (err) {
    if (!(err instanceof TsimgError)) throw err;
    const reason = err.errno !== undefined ? strerror(err.errno) : err.message;
    throw errorWithCode(err.code, `Failed to empty ${top.filename}: ${reason}`, { cause: err, errno: err.errno });
  }
}

/**
 * mirror_iteration's choice for the dirty run of `bytes` at `offset` (chunk-aligned, ending at
 * the image's end at most): how much to handle and how, from the block status of the chain.
 */
async function planOne(top: Image, offset: number, bytes: number, g: number, targetCluster: number): Promise<{ method: Method; io: number }> {
  const st = await blockStatusAbove(top, offset, bytes);
  let io = st.data ? Math.min(st.length, MAX_IO_BYTES) : st.length;
  io -= io % g;
  let method: Method = 'copy';
  if (io < g) io = g;
  else if (!st.data && offset % targetCluster === 0 && io % targetCluster === 0) method = st.zero ? 'zero' : 'discard';
  io = Math.min(io, bytes);
  if (method === 'copy') io = Math.min(io, BUF_SIZE);
  return { method, io };
}

/** One planned operation of mirror_iteration, with its read of the top under way for a copy. */
interface Planned {
  method: Method;
  offset: number;
  io: number;
  /** The dirty bytes not yet planned when this operation was: its progress total. */
  remaining: number;
  /** For a copy: the slot of the job's buffer it holds, and the read into its first `io` bytes (its error held). */
  slot?: Uint8Array;
  read?: Promise<{ error: unknown } | undefined>;
}

/**
 * The planned operations not yet finished, in guest order, and the writer that finishes them
 * one at a time as the planner goes on: once a write into the base is over, the next one is
 * issued at once (its read is usually done), and the planning of later pieces (block status,
 * their reads) runs while the base's write is under way.
 */
class OpQueue {
  readonly #ops: Planned[] = [];
  #wakeWriter: (() => void) | undefined;
  #wakePlanner: (() => void) | undefined;
  #closed = false;
  #failed = false;
  /** Settles when every operation pushed is finished after {@link close}, or at the first failure. */
  readonly writer: Promise<void>;

  constructor(finish: (op: Planned) => Promise<void>) {
    this.writer = this.#run(finish);
    this.writer.catch(() => undefined); // awaited by the job, possibly after the planner stops
  }

  get length(): number {
    return this.#ops.length;
  }

  /** The operations not yet finished, oldest first. */
  pending(): readonly Planned[] {
    return this.#ops;
  }

  push(op: Planned): void {
    this.#ops.push(op);
    this.#wakeWriter?.();
  }

  /** Waits until `ready()` holds; rejects with the writer's error once an operation failed. */
  async until(ready: () => boolean): Promise<void> {
    while (!this.#failed && !ready()) await new Promise<void>((resolve) => (this.#wakePlanner = resolve));
    if (this.#failed) await this.writer;
  }

  /** No more operations: the writer ends once the queue is empty. */
  close(): Promise<void> {
    this.#closed = true;
    this.#wakeWriter?.();
    return this.writer;
  }

  async #run(finish: (op: Planned) => Promise<void>): Promise<void> {
    for (;;) {
      const op = this.#ops[0];
      if (op === undefined) {
        if (this.#closed) return;
        await new Promise<void>((resolve) => (this.#wakeWriter = resolve));
        continue;
      }
      try {
        await finish(op);
      } catch (err) {
        this.#failed = true;
        this.#wakePlanner?.();
        throw err;
      }
      this.#ops.shift();
      this.#wakePlanner?.();
    }
  }
}

/**
 * mirror_run's loop: operations planned in guest order, the top's reads started as soon as a
 * slot of the buffer is free, and each operation finished (its write into the base) in turn.
 * A failure of the planning (a block status query) is reported once the operations planned
 * before it are finished, as one operation at a time would.
 */
async function copyDirty(top: Image, base: Image, length: number, options: CommitOptions): Promise<void> {
  const g = commitGranularity(base);
  const targetCluster = base.clusterSize ?? 1;
  const { dirty, count } = await dirtyChunks(top, base, length, g);
  let remaining = count * g;
  const slots = alignedBuffer(Math.min(READ_AHEAD * MAX_IO_BYTES, length));
  const slotSize = Math.min(MAX_IO_BYTES, slots.length);
  const free: Uint8Array[] = [];
  for (let at = 0; at + slotSize <= slots.length; at += slotSize) free.push(slots.subarray(at, at + slotSize));
  /** The whole job buffer, made the first time a copy needs more than a slot. */
  let whole: Uint8Array | undefined;
  let done = 0;
  const queue = new OpQueue(async (op) => {
    if (op.method === 'copy') {
      const piece = (op.slot ?? (whole ??= alignedBuffer(Math.min(BUF_SIZE, length)))).subarray(0, op.io);
      if (op.read === undefined) await top.read(op.offset, piece);
      else {
        const failed = await op.read;
        if (failed !== undefined) throw failed.error;
      }
      await base.write(op.offset, piece);
    } else if (op.method === 'zero') {
      await base.writeZeroes(op.offset, op.io, { mayUnmap: true });
    } else {
      await base.discard(op.offset, op.io);
    }
    if (op.slot !== undefined) free.push(op.slot);
    done += op.io;
    options.onProgress?.(done, done + Math.max(0, op.remaining));
    if (op.method === 'copy') await options.throttle?.(op.io);
  });
  let planError: { error: unknown } | undefined;
  try {
    for (let chunk = dirty.indexOf(1); chunk >= 0; chunk = dirty.indexOf(1, chunk)) {
      // mirror_iteration: the run of consecutive dirty chunks from here, up to the buffer size.
      let nb = dirtyRun(dirty, chunk, Math.ceil(BUF_SIZE / g));
      dirty.fill(0, chunk, chunk + nb);
      remaining -= nb * g;
      let offset = chunk * g;
      while (nb > 0 && offset < length) {
        const { method, io } = await planOne(top, offset, Math.min(nb * g, length - offset), g, targetCluster);
        const op: Planned = { method, offset, io, remaining };
        if (method === 'copy' && io > slotSize) {
          // Larger than a slot (a long zero run not aligned to the base's clusters): read into
          // the whole buffer when its turn comes, once the one before it (if any) is finished.
          await queue.until(() => queue.length === 0);
        } else if (method === 'copy') {
          await queue.until(() => free.length > 0);
          const slot = free.pop()!;
          // A failed read is thrown when the operation's turn comes, after the ones before it.
          op.slot = slot;
          op.read = top.read(offset, slot.subarray(0, io)).then(
            () => undefined,
            (error: unknown) => ({ error }),
          );
        }
        queue.push(op);
        offset += io;
        nb -= Math.ceil(io / g);
      }
      chunk += 1;
    }
  } catch (error) {
    planError = { error };
  }
  try {
    await queue.close(); // the writer's failure, if any, came first
  } finally {
    // Nothing stays under way once the job ends (a failed write leaves reads of later pieces).
    await Promise.all(queue.pending().map((op) => op.read));
  }
  if (planError !== undefined) throw planError.error;
}
