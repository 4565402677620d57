/**
 * The HTTP byte-range header values tsimg sends and checks (RFC 9110 §14): `Range: bytes=a-b`
 * and `Content-Range: bytes a-b/total`, as pure codecs. Positions are inclusive, as on the wire.
 */

/** One satisfied byte range of a representation: bytes `start..end` (inclusive) of `total`. */
export interface ContentRange {
  start: number;
  end: number;
  /** The whole representation's length; undefined for `*` (unknown). */
  total?: number;
}

/** `bytes=<start>-<end>` for the inclusive range [start, end]. */
export function encodeRange(start: number, end: number): string {
  return `bytes=${start}-${end}`;
}

/** `bytes <start>-<end>/<total>` (`*` when the total is unknown). */
export function encodeContentRange(range: ContentRange): string {
  return `bytes ${range.start}-${range.end}/${range.total ?? '*'}`;
}

/**
 * Parses a Content-Range value of a 206 answer; undefined when it is not one satisfied byte
 * range (the unsatisfied form of a 416, another unit, garbage, end before start, end past total).
 */
export function decodeContentRange(value: string | null): ContentRange | undefined {
  if (value === null) return undefined;
  const m = /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(value);
  if (m === null) return undefined;
  const start = Number(m[1]);
  const end = Number(m[2]);
  const total = m[3] === '*' ? undefined : Number(m[3]);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || end < start) return undefined;
  if (total !== undefined && (!Number.isSafeInteger(total) || end >= total)) return undefined;
  return { start, end, total };
}
