/**
 * `convert` to a target that cannot seek (standard output, a pipe, a FIFO), in one forward
 * pass. Raw: convert's own in-order copy into a {@link StreamSink}, holes written as zeroes.
 * qcow2: the guest clusters that hold data are found from the source's block status first
 * (nothing is read for that), the whole file is laid out (planQcow2Stream: metadata first,
 * data clusters in guest order), and then written front to back. With `-c` the compressed
 * lengths must be known before the first byte goes out, so the data is compressed once to
 * measure it (keeping the result when it fits in memory) and, past that, again when written.
 */
import { planQcow2Stream, type CompressPool, type Qcow2CreateOptions, type StreamCluster } from '@tsimg/qcow2';
import { BDRV_SECTOR_SIZE, IoError, UsageError } from '@tsimg/raw';
import { blockStatusAbove, type ChainImage } from './block-status.js';
import { convertCopy } from './convert.js';
import type { StreamSink } from './stream-sink.js';

/** Compressed clusters kept from the measuring pass up to this many bytes in all. */
const KEEP_COMPRESSED = 256 * 1024 * 1024;
/** Guest bytes read at once. */
const READ_GROUP = 2 * 1024 * 1024;
/** Groups read ahead of the writer (as convert's window: 4 × 2 MiB). */
const READ_AHEAD = 4;

/** Options of {@link convertToStream}. */
export interface StreamConvertOptions {
  format: 'raw' | 'qcow2';
  /** qcow2's creation options (the size is the sources'). */
  qcow2?: Omit<Qcow2CreateOptions, 'size'>;
  /** `-S` for a raw target (default 4096); a qcow2 stream allocates what block status says. */
  minSparse?: number;
  /** `-c`: compress the data clusters (qcow2) on this pool. */
  compressor?: CompressPool;
  /** Raw: `-r`, bytes per second (qcow2 streams refuse it). */
  rateLimit?: number;
  /** Raw: `--salvage` with its warnings, as convertCopy takes them (qcow2 streams refuse it). */
  salvage?: boolean;
  warn?: (message: string, causes: readonly unknown[]) => void;
  /** Progress in percent, as convert reports it. */
  progress?: (percent: number) => void;
  signal?: AbortSignal;
}

/**
 * Writes the concatenation of `sources` as an image of `options.format` into `sink`, strictly
 * forward, and finishes it (the sink's stream is left open).
 */
export async function convertToStream(sources: readonly ChainImage[], sink: StreamSink, options: StreamConvertOptions): Promise<void> {
  if (options.format === 'raw') {
    await convertCopy(sources, sink, {
      minSparse: options.minSparse,
      hasZeroInit: true,
      parallelWrites: 1,
      rateLimit: options.rateLimit,
      salvage: options.salvage,
      warn: options.warn,
      progress: options.progress,
      signal: options.signal,
    });
    await sink.finish();
    return;
  }
  if (sources.length !== 1) throw new UsageError('A qcow2 stream is written from one source image');
  if (options.salvage) throw new UsageError('--salvage is not supported when writing a qcow2 stream');
  if (options.rateLimit) throw new UsageError('A rate limit is not supported when writing a qcow2 stream');
  await qcow2Stream(sources[0]!, sink, options);
}

/** The guest clusters of `image` (of `cs` bytes) where block status shows anything but zeroes. */
async function dataClusters(image: ChainImage, cs: number, signal?: AbortSignal): Promise<number[]> {
  const size = image.size();
  const out: number[] = [];
  for (let pos = 0; pos < size; ) {
    signal?.throwIfAborted();
    const st = await blockStatusAbove(image, pos, Math.min(size - pos, 1 << 30));
    if (!st.zero) {
      for (let c = Math.floor(pos / cs); c <= Math.floor((pos + st.length - 1) / cs); c++) {
        if (out[out.length - 1] !== c) out.push(c);
      }
    }
    pos += st.length;
  }
  return out;
}

/** Runs of consecutive cluster indices, each at most `max` clusters: [first position, count]. */
function* groups(clusters: readonly number[], max: number): Generator<[number, number]> {
  for (let i = 0; i < clusters.length; ) {
    let n = 1;
    while (i + n < clusters.length && n < max && clusters[i + n] === clusters[i]! + n) n++;
    yield [i, n];
    i += n;
  }
}

/** Reads each group of whole clusters (zero past the end of the image), READ_AHEAD groups ahead. */
async function* readClusters(image: ChainImage, clusters: readonly number[], cs: number): AsyncGenerator<[number, Uint8Array]> {
  const size = image.size();
  const read = async ([first, n]: [number, number]): Promise<[number, Uint8Array]> => {
    const buf = new Uint8Array(n * cs);
    const start = clusters[first]! * cs;
    await image.read(start, buf.subarray(0, Math.min(n * cs, size - start)));
    return [first, buf];
  };
  const pending: Promise<[number, Uint8Array]>[] = [];
  for (const g of groups(clusters, Math.max(1, READ_GROUP / cs))) {
    const p = read(g);
    p.catch(() => undefined); // awaited in order below
    pending.push(p);
    if (pending.length > READ_AHEAD) yield await pending.shift()!;
  }
  while (pending.length) yield await pending.shift()!;
}

async function qcow2Stream(image: ChainImage, sink: StreamSink, options: StreamConvertOptions): Promise<void> {
  const size = Math.ceil(image.size() / BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE;
  const createOptions: Qcow2CreateOptions = { ...options.qcow2, size: BigInt(size) };
  // The cluster size as the layout will resolve it; an empty plan validates the options first.
  const { clusterSize: cs } = planQcow2Stream(createOptions, []);
  const indices = await dataClusters(image, cs, options.signal);
  const pool = options.compressor;
  const compressed: (Uint8Array | undefined)[] = [];
  const plan: StreamCluster[] = indices.map((index) => ({ index }));
  let total = 0;
  if (pool) {
    // Measuring pass: compressed lengths (undefined: stored uncompressed, as qemu does).
    let kept = 0;
    for await (const [first, buf] of readClusters(image, indices, cs)) {
      options.signal?.throwIfAborted();
      const results = await Promise.all(groupClusters(buf, cs).map((c) => pool.compress(c)));
      results.forEach((r, k) => {
        if (r === undefined) return;
        plan[first + k]!.compressedLength = r.length;
        if (kept + r.length <= KEEP_COMPRESSED) {
          compressed[first + k] = r;
          kept += r.length;
        }
      });
    }
  }
  const layout = planQcow2Stream(createOptions, plan);
  await sink.resize(layout.fileLength);
  await sink.write(0, layout.metadata);
  const allBytes = indices.length * cs;
  for await (const [first, buf] of readClusters(image, indices, cs)) {
    options.signal?.throwIfAborted();
    const clusterBufs = groupClusters(buf, cs);
    const again = pool ? await Promise.all(clusterBufs.map((c, k) => (plan[first + k]!.compressedLength !== undefined && !compressed[first + k] ? pool.compress(c) : undefined))) : [];
    for (let k = 0; k < clusterBufs.length; ) {
      const i = first + k;
      const want = plan[i]!.compressedLength;
      if (want === undefined) {
        // Uncompressed clusters that lie back to back on the host go out in one write.
        let n = 1;
        while (k + n < clusterBufs.length && plan[i + n]!.compressedLength === undefined && layout.hostOffsets[i + n] === layout.hostOffsets[i]! + n * cs) n++;
        await sink.write(layout.hostOffsets[i]!, buf.subarray(k * cs, (k + n) * cs));
        k += n;
        continue;
      }
      const bytes = compressed[i] ?? again[k];
      compressed[i] = undefined;
      // The layout holds the first pass's length: compression must be deterministic.
      if (bytes === undefined || bytes.length !== want) throw new IoError(`cluster ${indices[i]} compressed differently the second time`);
      await sink.write(layout.hostOffsets[i]!, bytes);
      k++;
    }
    total += clusterBufs.length * cs;
    options.progress?.((100 * total) / allBytes);
  }
  await sink.finish();
}

/** The clusters of a group buffer, as views. */
function groupClusters(buf: Uint8Array, cs: number): Uint8Array[] {
  return Array.from({ length: buf.length / cs }, (_, k) => buf.subarray(k * cs, (k + 1) * cs));
}
