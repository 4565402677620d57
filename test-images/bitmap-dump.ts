/**
 * Test helpers reading a qcow2 file's persistent bitmaps straight from its bytes (header
 * extension, directory, tables, data clusters), without any of tsimg's qcow2 code: the bitmap
 * tests compare what qemu and tsimg leave with them.
 */
import { readFileSync } from 'node:fs';

/** One bitmap as the file holds it: directory fields and the dirty bit ranges [start, end). */
export interface DumpedBitmap {
  name: string;
  flags: number;
  granularityBits: number;
  tableOffset: number;
  table: bigint[];
  dirty: [number, number][];
}

/**
 * Reads every bitmap of a qcow2 file straight from its bytes (header extension, directory,
 * tables, data clusters), independently of the library. Bits past the disk's end are ignored.
 */
export function dumpBitmaps(path: string): DumpedBitmap[] {
  const f = readFileSync(path);
  const v = new DataView(f.buffer, f.byteOffset, f.byteLength);
  const cs = 2 ** v.getUint32(20);
  const size = Math.floor(Number(v.getBigUint64(24)) / 512) * 512;
  if (v.getUint32(4) < 3 || (v.getBigUint64(88) & 1n) === 0n) return [];
  let off = v.getUint32(100);
  let dir: { nb: number; size: number; offset: number } | undefined;
  for (;;) {
    const type = v.getUint32(off);
    const len = v.getUint32(off + 4);
    if (type === 0) break;
    if (type === 0x23852875) {
      dir = { nb: v.getUint32(off + 8), size: Number(v.getBigUint64(off + 16)), offset: Number(v.getBigUint64(off + 24)) };
    }
    off += 8 + ((len + 7) & ~7);
  }
  if (!dir) return [];
  const out: DumpedBitmap[] = [];
  let e = dir.offset;
  for (let i = 0; i < dir.nb; i++) {
    const tableOffset = Number(v.getBigUint64(e));
    const tableSize = v.getUint32(e + 8);
    const flags = v.getUint32(e + 12);
    const granularityBits = v.getUint8(e + 17);
    const nameSize = v.getUint16(e + 18);
    const extra = v.getUint32(e + 20);
    const name = f.subarray(e + 24 + extra, e + 24 + extra + nameSize).toString('utf8');
    e += (24 + nameSize + extra + 7) & ~7;
    const table: bigint[] = [];
    for (let t = 0; t < tableSize; t++) table.push(v.getBigUint64(tableOffset + t * 8));
    const nbits = Math.ceil(size / 2 ** granularityBits);
    const bit = (n: number): boolean => {
      const entry = table[Math.floor(n / (cs * 8))]!;
      const data = Number(entry & 0x00fffffffffffe00n);
      if (data === 0) return (entry & 1n) === 1n;
      const byteAt = data + Math.floor((n % (cs * 8)) / 8);
      return byteAt < f.length && (f[byteAt]! & (1 << (n % 8))) !== 0;
    };
    const dirty: [number, number][] = [];
    for (let n = 0; n < nbits; n++) {
      if (!bit(n)) continue;
      const last = dirty[dirty.length - 1];
      if (last && last[1] === n) last[1] = n + 1;
      else dirty.push([n, n + 1]);
    }
    out.push({ name, flags, granularityBits, tableOffset, table, dirty });
  }
  return out;
}

/** What a bitmap holds, wherever it is stored: name, flags, granularity and dirty bit ranges. */
export function bitmapContent(path: string): Pick<DumpedBitmap, 'name' | 'flags' | 'granularityBits' | 'dirty'>[] {
  return dumpBitmaps(path).map(({ name, flags, granularityBits, dirty }) => ({ name, flags, granularityBits, dirty }));
}
