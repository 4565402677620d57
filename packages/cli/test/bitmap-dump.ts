/**
 * A test helper reading a qcow2 file's persistent bitmaps straight from its bytes, without any
 * qcow2 code of tsimg's: the bitmaps cross-checks compare what qemu and tsimg leave with it.
 */
import { readFileSync } from 'node:fs';

/** Every bitmap of a qcow2 file, read from its bytes: name, flags, granularity, dirty bit runs. */
export function dumpBitmaps(path: string): { name: string; flags: number; granularityBits: number; dirty: [number, number][] }[] {
  const f = readFileSync(path);
  const v = new DataView(f.buffer, f.byteOffset, f.byteLength);
  const cs = 2 ** v.getUint32(20);
  const size = Math.floor(Number(v.getBigUint64(24)) / 512) * 512;
  if (v.getUint32(4) < 3 || (v.getBigUint64(88) & 1n) === 0n) return [];
  let off = v.getUint32(100);
  let dir: { nb: number; offset: number } | undefined;
  for (let type = v.getUint32(off); type !== 0; type = v.getUint32(off)) {
    if (type === 0x23852875) dir = { nb: v.getUint32(off + 8), offset: Number(v.getBigUint64(off + 24)) };
    off += 8 + ((v.getUint32(off + 4) + 7) & ~7);
  }
  const out: ReturnType<typeof dumpBitmaps> = [];
  for (let i = 0, e = dir?.offset ?? 0; i < (dir?.nb ?? 0); i++) {
    const tableOffset = Number(v.getBigUint64(e));
    const granularityBits = v.getUint8(e + 17);
    const nameSize = v.getUint16(e + 18);
    const name = f.subarray(e + 24, e + 24 + nameSize).toString('utf8');
    const flags = v.getUint32(e + 12);
    e += (24 + nameSize + 7) & ~7;
    const dirty: [number, number][] = [];
    const nbits = Math.ceil(size / 2 ** granularityBits);
    for (let n = 0; n < nbits; n++) {
      const entry = v.getBigUint64(tableOffset + Math.floor(n / (cs * 8)) * 8);
      const data = Number(entry & 0x00fffffffffffe00n);
      const set = data === 0 ? (entry & 1n) === 1n : (f[data + Math.floor((n % (cs * 8)) / 8)]! & (1 << (n % 8))) !== 0;
      if (!set) continue;
      const last = dirty[dirty.length - 1];
      if (last && last[1] === n) last[1] = n + 1;
      else dirty.push([n, n + 1]);
    }
    out.push({ name, flags, granularityBits, dirty });
  }
  return out;
}
