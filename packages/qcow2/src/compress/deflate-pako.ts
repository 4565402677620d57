/**
 * Raw deflate through pako (zlib ported to JavaScript), for browsers whose DecompressionStream
 * or CompressionStream is missing or refuses 'deflate-raw'. compress.browser.ts imports this
 * module only then, so the browser build keeps it (and pako) in a chunk of its own that such a
 * browser alone loads. Set up as qemu sets up the system zlib (see deflate.ts).
 */
import { deflateRaw, Z_BUF_ERROR, Z_FINISH, Z_STREAM_END, ZStream, zlibInflate, zlibInflateEnd, zlibInflateInit2 } from 'pako';

/**
 * inflateInit2(strm, -12) and one inflate(Z_FINISH) into a buffer of `limit + 1` bytes, as
 * compress.browser.ts's stream transform collects them: never more decoded than that, what
 * follows the end of the stream ignored, a stream that stops short an error.
 */
export function inflateRawLimited(data: Uint8Array, limit: number): { out: Uint8Array; length: number; error?: unknown } {
  const strm = new ZStream();
  zlibInflateInit2(strm, -12);
  const out = new Uint8Array(limit + 1);
  strm.input = data;
  strm.next_in = 0;
  strm.avail_in = data.length;
  strm.output = out;
  strm.next_out = 0;
  strm.avail_out = out.length;
  const status = zlibInflate(strm, Z_FINISH);
  const length = strm.next_out;
  const msg = strm.msg;
  zlibInflateEnd(strm);
  // A full buffer ends the inflate too (Z_BUF_ERROR with no room left): the caller sees the length.
  if (status === Z_STREAM_END || (status === Z_BUF_ERROR && length === out.length)) return { out, length };
  return { out, length, error: new Error(msg || (status === Z_BUF_ERROR ? 'unexpected end of the compressed data' : `inflate failed (${status})`)) };
}

/** deflateInit2(strm, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY), as qemu. */
export function deflateRawCluster(cluster: Uint8Array): Uint8Array {
  return deflateRaw(cluster, { level: -1, windowBits: 12, memLevel: 9, strategy: 0 });
}
