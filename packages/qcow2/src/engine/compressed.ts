/**
 * Compressed clusters of an open image: reading and decompressing them (with the read-ahead
 * over clusters stored one after another) and writing one cluster compressed, as qemu-img
 * convert -c does.
 */
import { alignedBuffer, IoError } from '@tsimg/raw';
import { decompressCluster } from '../compress/compress.js';
import { compressedEntry, compressedRange, decodeL2Entry, encodeL2Entry } from '../format/l2-entry.js';
import { overlapCheck } from './corruption.js';
import { beforeChange } from './header-write.js';
import { getClusterTable } from './l1-table.js';
import { tableView, type EngineState } from './state.js';

/** The largest read-ahead for compressed clusters in one guest read (see readCompressed). */
const COMPRESSED_READ_AHEAD = 2 * 1024 * 1024;

/** State of one guest read for readCompressed: the last cluster's range, the window read ahead. */
export interface CompressedReadAhead {
  start: number;
  end: number;
  /** Guest bytes the request still needs: the read-ahead never goes further. */
  budget: number;
  window?: { offset: number; data: Uint8Array };
  /** The window's buffer (COMPRESSED_READ_AHEAD bytes), taken from readAheadSpare. */
  buffer?: Uint8Array;
}

/** Gives the read-ahead buffer of a finished guest read back for the next one. */
export function releaseReadAhead(s: EngineState, ahead: CompressedReadAhead): void {
  if (ahead.buffer !== undefined) s.readAheadSpare.push(ahead.buffer);
  ahead.buffer = undefined;
  ahead.window = undefined;
}

/** The guest bytes of one compressed cluster (the last one decompressed is kept). */
export async function decompress(
  s: EngineState,
  entry: { hostOffset: number; sectors: number },
  ahead?: CompressedReadAhead,
): Promise<Uint8Array> {
  const key = `${entry.hostOffset}:${entry.sectors}`;
  if (s.decompressed?.key === key) return s.decompressed.data;
  const range = compressedRange(entry);
  const raw = await readCompressed(s, range, ahead);
  const data = await decompressCluster(s.compression, raw, s.clusterSize);
  s.decompressed = { key, data };
  return data;
}

/**
 * The stored bytes of one compressed cluster. Within one guest read, compressed clusters
 * usually follow one another in the file (convert -c and qemu write them so): once one starts
 * where the previous one ended, the file is read ahead — as far as the guest bytes the request
 * still needs, at most COMPRESSED_READ_AHEAD — and the next clusters come from that buffer.
 * Reading a 256 MiB compressed image, that is one device read per ~30 clusters instead of one
 * each (a thread-pool round trip apiece). Scattered clusters are read one by one, as before.
 */
async function readCompressed(
  s: EngineState,
  range: { offset: number; length: number },
  ahead?: CompressedReadAhead,
): Promise<Uint8Array> {
  const win = ahead?.window;
  if (win !== undefined && range.offset >= win.offset && range.offset + range.length <= win.offset + win.data.length) {
    ahead!.start = range.offset;
    ahead!.end = range.offset + range.length;
    return win.data.subarray(range.offset - win.offset, range.offset - win.offset + range.length);
  }
  let length = range.length;
  // The previous range ends at a sector boundary past its last byte: the next cluster starts
  // inside that last sector or right at its end.
  if (ahead !== undefined && range.offset > ahead.start && range.offset <= ahead.end) {
    const avail = s.file.size() - range.offset;
    length = Math.max(length, Math.min(ahead.budget, COMPRESSED_READ_AHEAD, avail));
  }
  let data: Uint8Array;
  if (ahead !== undefined && length > range.length) {
    ahead.buffer ??= s.readAheadSpare.pop() ?? alignedBuffer(COMPRESSED_READ_AHEAD);
    data = ahead.buffer.subarray(0, length);
  } else data = new Uint8Array(length);
  await s.file.read(range.offset, data);
  if (ahead !== undefined) {
    ahead.window = length > range.length ? { offset: range.offset, data } : undefined;
    ahead.start = range.offset;
    ahead.end = range.offset + range.length;
  }
  return length > range.length ? data.subarray(0, range.length) : data;
}

/**
 * qcow2_co_pwritev_compressed_task's metadata part: stores `payload` (one compressed cluster)
 * at newly allocated bytes and points the L2 entry of cluster-aligned `offset` at it. Runs
 * inside the exclusive gate; the caller checked the request.
 */
export async function storeCompressed(s: EngineState, offset: number, payload: Uint8Array): Promise<void> {
  await beforeChange(s);
  const alloc = s.allocator!;
  const geo = s.geo;
  const t = await getClusterTable(s, offset);
  const view = tableView(t.table);
  const e = decodeL2Entry(view, t.index * geo.entrySize, geo);
  if (e.kind !== 'unallocated' && !(e.kind === 'extended' && e.hostOffset === undefined) && !(e.kind === 'zero' && e.hostOffset === 0)) {
    throw new IoError("Compression can't overwrite anything", { errno: 'EIO' });
  }
  const host = await alloc.allocBytes(payload.length);
  // As qcow2_alloc_bytes: refcounts first, even with lazy refcounts (and no dirty bit).
  await s.l2Cache.setDependency(s.refcountCache);
  await overlapCheck(s, host, payload.length);
  await s.file.write(host, payload);
  encodeL2Entry(compressedEntry(host, payload.length), view, t.index * geo.entrySize, geo);
  s.l2Cache.markDirty(t.l2Offset, t.table);
  s.l2Cache.setDependsOnFlush();
}

/** Ends a run of compressed writes: pads the file to a 512-byte boundary as qemu does. */
export async function padCompressedTail(s: EngineState): Promise<void> {
  const len = s.file.size();
  const padded = Math.ceil(len / 512) * 512;
  if (padded !== len) await s.file.resize(padded);
}
