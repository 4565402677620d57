/**
 * Finds where zstd frames end inside a qcow2 compressed-cluster descriptor's bytes (RFC 8878
 * §3.1), without decoding them: qcow2 stores only a sector count, so a frame is followed by
 * padding or by the next cluster's data, which every zstd library rejects as trailing garbage.
 */
import { FormatError } from '@tsimg/raw';

/** Magic number of a zstd frame, little-endian on disk. */
export const ZSTD_MAGIC = 0xfd2fb528;
/** Skippable frames have a magic number in 0x184D2A50..0x184D2A5F. */
const SKIPPABLE_MAGIC_BASE = 0x184d2a50;
const SKIPPABLE_MAGIC_MASK = 0xfffffff0;
/** Block_Maximum_Size: no block may regenerate (or, raw/compressed, store) more than 128 KiB. */
export const ZSTD_BLOCK_MAX = 128 * 1024;

const BLOCK_RAW = 0;
const BLOCK_RLE = 1;
const BLOCK_COMPRESSED = 2;

/** One frame located in a buffer: `end` is the offset just past it. */
export type ZstdFrameInfo =
  | {
      kind: 'skippable';
      end: number;
    }
  | {
      kind: 'zstd';
      end: number;
      /** Frame_Content_Size when the header carries it, else undefined. */
      contentSize: number | undefined;
    };

function fail(reason: string): never {
  throw new FormatError(`Invalid zstd compressed cluster: ${reason}`, { errno: 'EIO' });
}

/**
 * Locates the frame (zstd or skippable) that starts at `offset` in `data` by walking its header
 * and block headers; throws FormatError when it is malformed or runs past the end of `data`.
 */
export function locateZstdFrame(data: Uint8Array, offset: number): ZstdFrameInfo {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const need = (pos: number, n: number, what: string): void => {
    if (pos + n > data.length) fail(`${what} truncated at byte ${pos} of ${data.length}`);
  };
  need(offset, 4, 'frame magic');
  const magic = view.getUint32(offset, true);
  if ((magic & SKIPPABLE_MAGIC_MASK) >>> 0 === SKIPPABLE_MAGIC_BASE) {
    need(offset + 4, 4, 'skippable frame size');
    const end = offset + 8 + view.getUint32(offset + 4, true);
    if (end > data.length) fail(`skippable frame runs past the end (${end} > ${data.length})`);
    return { kind: 'skippable', end };
  }
  if (magic !== ZSTD_MAGIC) fail(`bad frame magic 0x${magic.toString(16)} at byte ${offset}`);

  let pos = offset + 4;
  need(pos, 1, 'frame header');
  const descriptor = data[pos++]!;
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor & 0x20) !== 0;
  const hasChecksum = (descriptor & 0x04) !== 0;
  const dictIdFlag = descriptor & 0x03;
  if (descriptor & 0x08) fail('reserved bit set in frame header');

  let windowSize = Infinity;
  if (!singleSegment) {
    need(pos, 1, 'window descriptor');
    const wd = data[pos++]!;
    const windowLog = 10 + (wd >> 3);
    const windowBase = 2 ** windowLog;
    windowSize = windowBase + (windowBase / 8) * (wd & 7);
  }
  const dictIdBytes = [0, 1, 2, 4][dictIdFlag]!;
  need(pos, dictIdBytes, 'dictionary id');
  let dictId = 0;
  for (let i = 0; i < dictIdBytes; i++) dictId += data[pos + i]! * 2 ** (8 * i);
  pos += dictIdBytes;
  // qcow2 never uses dictionaries; a frame that needs one cannot be decoded.
  if (dictId !== 0) fail(`frame needs dictionary ${dictId}`);

  const fcsBytes = fcsFlag === 0 ? (singleSegment ? 1 : 0) : [0, 2, 4, 8][fcsFlag]!;
  need(pos, fcsBytes, 'frame content size');
  let contentSize: number | undefined;
  if (fcsBytes === 1) contentSize = data[pos]!;
  else if (fcsBytes === 2) contentSize = view.getUint16(pos, true) + 256;
  else if (fcsBytes === 4) contentSize = view.getUint32(pos, true);
  else if (fcsBytes === 8) {
    // Far beyond any cluster; keep it as a number that fails every bound check.
    const high = view.getUint32(pos + 4, true);
    contentSize = high === 0 ? view.getUint32(pos, true) : Number.MAX_SAFE_INTEGER;
  }
  pos += fcsBytes;
  // In single-segment frames the window is the content size.
  if (singleSegment && contentSize !== undefined) windowSize = contentSize;
  const blockMax = Math.min(windowSize, ZSTD_BLOCK_MAX);

  for (;;) {
    need(pos, 3, 'block header');
    const header = data[pos]! | (data[pos + 1]! << 8) | (data[pos + 2]! << 16);
    pos += 3;
    const last = (header & 1) !== 0;
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === BLOCK_RAW || type === BLOCK_COMPRESSED) {
      if (size > blockMax) fail(`block of ${size} bytes exceeds the maximum ${blockMax}`);
      need(pos, size, 'block');
      pos += size;
    } else if (type === BLOCK_RLE) {
      if (size > blockMax) fail(`block of ${size} bytes exceeds the maximum ${blockMax}`);
      need(pos, 1, 'block');
      pos += 1;
    } else {
      fail(`reserved block type at byte ${pos - 3}`);
    }
    if (last) break;
  }
  if (hasChecksum) {
    need(pos, 4, 'content checksum');
    pos += 4;
  }
  return { kind: 'zstd', end: pos, contentSize };
}
