/**
 * `convert`'s second pass, the copy: the chunks of the plan in guest order, with the reads,
 * the zero scan and the compression running ahead of the writer, and the writes started in
 * order (one at a time, or several in flight for a target whose layout does not depend on it).
 *
 * The chunks, their statuses and the writes are exactly those of qemu's loop; what runs ahead
 * of the writer is the I/O:
 * - planning runs ahead until `windowBytes` of data chunks are queued, and refills only when
 *   half of that was written, so that reads come in batches;
 * - contiguous data chunks of a batch are read with one source read of up to `groupBytes`
 *   (each read costs a thread-pool round trip; with -c, 16 clusters share one);
 * - as soon as a chunk is read, its zero scan (-S) runs, or with -c its cluster goes to the
 *   compressor, while the writer is still busy with earlier chunks;
 * - the writer takes chunks strictly in order: in-order writes allocate a qcow2 target
 *   exactly as qemu's do.
 * Memory stays bounded by the window (8 MiB of buffers, a little more with -c and clusters
 * above 128 KiB), whatever the image size.
 */
import { BDRV_SECTOR_SIZE, alignedBuffer } from '@tsimg/raw';
import { precompress, type ClusterCompressor } from './convert-compressed.js';
import { request, type Warn } from './convert-error.js';
import { splitRuns, type ConvertPlan, type Status } from './convert-plan.js';
import { zeroChunk, type ChunkWriter, type Prepared } from './convert-write.js';

const SECTOR = BDRV_SECTOR_SIZE;
/** How many chunks (of any status) the copy loop plans ahead at most. */
const MAX_QUEUED_CHUNKS = 1024;

/** A salvage warning held back until the writer reaches its chunk. */
type Warning = [message: string, causes: readonly unknown[]];

/** Data chunks read with one source read into one buffer. */
interface Group {
  buf: Uint8Array;
  sector: number;
  n: number;
  chunks: Chunk[];
  /** Chunks not yet written: the buffer is reused when none is left. */
  refs: number;
}

/** One chunk of the plan, with what was read and worked out for it ahead of its write. */
interface Chunk extends Prepared {
  sector: number;
  n: number;
  st: Status;
  buf?: Uint8Array;
  group?: Group;
  /** Salvage warnings (block status, then reads), printed when the writer gets here. */
  warnings: Warning[];
  ready: Promise<void>;
}

/** How the copy runs ahead of the writer. */
export interface CopyPipelineOptions {
  /** Bytes read by one source read at most. */
  groupBytes: number;
  /** Bytes of data chunks queued ahead of the writer at most. */
  windowBytes: number;
  /** Writes in flight at once (1: one after the other). */
  parallelWrites: number;
  compressor?: ClusterCompressor;
  /** Receives warnings in qemu's order, when the writer reaches their chunk. */
  warn?: Warn;
  /** Checked before each write; see ConvertCopyOptions.signal. */
  signal?: AbortSignal;
  /** Called with the sectors of each chunk planned that counts for the progress. */
  advance(n: number): void;
}

/** Copies every chunk of `plan` (restarted at sector 0) through `writer`. */
export async function copyChunks(plan: ConvertPlan, writer: ChunkWriter, o: CopyPipelineOptions): Promise<void> {
  const pipeline = new CopyPipeline(plan, writer, o);
  await pipeline.run();
}

class CopyPipeline {
  readonly #queue: Chunk[] = [];
  readonly #spare: Uint8Array[] = [];
  #planSector = 0;
  #queuedBytes = 0;
  #open: Group | undefined;

  constructor(
    readonly plan: ConvertPlan,
    readonly writer: ChunkWriter,
    readonly o: CopyPipelineOptions,
  ) {}

  /**
   * The writer. Writes start in guest order. With parallelWrites > 1 the next ones start
   * before the earlier ones end and are awaited oldest first, so the first failure in guest
   * order is the one reported; when the window is full of writes in flight, the oldest is
   * waited for.
   */
  async run(): Promise<void> {
    const { windowBytes, parallelWrites } = this.o;
    const maxWrites = Math.max(1, parallelWrites);
    const queue = this.#queue;
    const writing: Promise<void>[] = [];
    for (;;) {
      if (queue.length === 0 || (this.#queuedBytes <= windowBytes / 2 && queue.length <= MAX_QUEUED_CHUNKS / 2)) {
        await this.#fill();
      }
      if (queue.length === 0 && writing.length > 0) {
        await writing.shift();
        continue;
      }
      if (this.o.signal?.aborted) {
        // Nothing of the copy may still run when the caller closes the images.
        await Promise.allSettled([...writing, ...queue.map((c) => c.ready)]);
        this.o.signal.throwIfAborted();
      }
      const chunk = queue.shift();
      if (!chunk) break;
      try {
        await chunk.ready;
      } finally {
        for (const [m, causes] of chunk.warnings) this.o.warn?.(m, causes);
      }
      const done = this.#write(chunk);
      if (maxWrites === 1) {
        await done;
        continue;
      }
      done.catch(() => undefined); // surfaces when awaited, in order
      writing.push(done);
      if (writing.length >= maxWrites) await writing.shift();
    }
    for (const w of writing) await w;
  }

  #write(chunk: Chunk): Promise<void> {
    const at = chunk.sector * SECTOR;
    const writer = this.writer;
    if (chunk.buf) {
      return request('write', at, () => writer.write(chunk.sector, chunk.n, chunk.buf!, 'data', chunk)).then(() => {
        this.#queuedBytes -= chunk.n * SECTOR;
        const g = chunk.group!;
        if (--g.refs === 0) this.#spare.push(g.buf);
      });
    }
    if (!this.plan.params.minSparse && chunk.st === 'zero') {
      return request('write', at, () => writer.write(chunk.sector, chunk.n, zeroChunk(chunk.n), 'data'));
    }
    return request('write', at, () => writer.write(chunk.sector, chunk.n, new Uint8Array(0), chunk.st));
  }

  /** Plans chunks ahead until the window is full, grouping data chunks for their reads. */
  async #fill(): Promise<void> {
    const { plan } = this;
    const { minSparse, bufSectors } = plan.params;
    const { windowBytes, groupBytes } = this.o;
    while (this.#queuedBytes < windowBytes && this.#queue.length < MAX_QUEUED_CHUNKS && this.#planSector < plan.totalSectors) {
      const sector = this.#planSector;
      const warnings: Warning[] = [];
      let n = await plan.next(sector, (m, causes) => warnings.push([m, causes]));
      const st = plan.status;
      if (!minSparse && st === 'zero') n = Math.min(n, bufSectors); // -S 0: zeroes as data
      this.#planSector += n;
      if (st === 'data' || (!minSparse && st === 'zero')) this.o.advance(n);
      const chunk: Chunk = { sector, n, st, warnings, ready: Promise.resolve() };
      if (st === 'data') {
        let open = this.#open;
        if (open !== undefined && (open.sector + open.n !== sector || (open.n + n) * SECTOR > groupBytes)) {
          this.#issue(open);
          open = undefined;
        }
        open ??= { buf: this.#spare.pop() ?? alignedBuffer(groupBytes), sector, n: 0, chunks: [], refs: 0 };
        chunk.buf = open.buf.subarray(open.n * SECTOR, (open.n + n) * SECTOR);
        chunk.group = open;
        open.n += n;
        open.chunks.push(chunk);
        open.refs++;
        this.#open = open;
        this.#queuedBytes += n * SECTOR;
      }
      this.#queue.push(chunk);
    }
    if (this.#open !== undefined) this.#issue(this.#open);
    this.#open = undefined;
  }

  /**
   * Starts the group's read. If it fails, each chunk is read again on its own (salvaging, with
   * --salvage), so the error or the warnings go with the chunk qemu's loop would name.
   */
  #issue(g: Group): void {
    const { parts, params } = this.plan;
    // With --salvage each chunk reads on its own: an error the group read met and then lost
    // would be missing from the warnings of the chunk it belongs to.
    const whole =
      g.chunks.length > 1 && !params.salvage
        ? parts.read(g.sector, g.n, g.buf.subarray(0, g.n * SECTOR)).then(() => true, () => false)
        : undefined;
    for (const chunk of g.chunks) {
      const salvage: Warn | undefined = params.salvage ? (m, causes) => chunk.warnings.push([m, causes]) : undefined;
      const own = (): Promise<void> =>
        request('read', chunk.sector * SECTOR, () => parts.read(chunk.sector, chunk.n, chunk.buf!, salvage));
      const loaded = whole === undefined ? own() : whole.then((ok) => (ok ? undefined : own()));
      chunk.ready = loaded.then(() => this.#prepare(chunk));
      // Never an unhandled rejection: the error surfaces when the writer awaits the chunk.
      chunk.ready.catch(() => undefined);
    }
  }

  /** Works out what the write of a chunk just read needs: its -S split, or its compression. */
  async #prepare(chunk: Chunk): Promise<void> {
    const { compressed, minSparse, clusterSectors, alignment } = this.plan.params;
    const buf = chunk.buf!;
    if (compressed) {
      Object.assign(chunk, await precompress(buf, clusterSectors, minSparse, this.o.compressor));
    } else if (minSparse) {
      chunk.pieces = splitRuns(chunk.sector, chunk.n, buf, minSparse, alignment);
    }
  }
}
