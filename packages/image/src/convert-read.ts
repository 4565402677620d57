/**
 * Reads of `convert`'s sources: the concatenation of several images read as one, sector-rounded
 * tails read as zeroes, and `--salvage`'s sector-by-sector retry that turns unreadable sectors
 * into zeroes with a warning.
 */
import { BDRV_SECTOR_SIZE } from '@tsimg/raw';
import type { BlockDevice } from '@tsimg/raw';
import { reason, type Warn } from './convert-error.js';

const SECTOR = BDRV_SECTOR_SIZE;

/** Where the sources lie in the concatenation, in sectors (qemu's convert_select_part). */
export class SourceParts {
  readonly sectors: readonly number[];
  readonly total: number;

  constructor(readonly sources: readonly BlockDevice[]) {
    this.sectors = sources.map((s) => Math.ceil(s.size() / SECTOR));
    this.total = this.sectors.reduce((a, b) => a + b, 0);
  }

  /** The source holding `sector` and the sector it starts at. */
  part(sector: number): { index: number; start: number } {
    let index = 0;
    let start = 0;
    while (sector - start >= this.sectors[index]!) start += this.sectors[index++]!;
    return { index, start };
  }

  /**
   * Reads `sectors` sectors at `sector` into `buf`, across sources when the range spans them
   * (qemu's convert_co_read). With `salvage` (a warning sink), unreadable sectors become
   * zeroes; without, errors throw.
   */
  async read(sector: number, sectors: number, buf: Uint8Array, salvage?: Warn): Promise<void> {
    let done = 0;
    while (done < sectors) {
      const { index, start } = this.part(sector + done);
      const n = Math.min(sectors - done, this.sectors[index]! - (sector + done - start));
      const into = buf.subarray(done * SECTOR, (done + n) * SECTOR);
      await readSalvaging(this.sources[index]!, (sector + done - start) * SECTOR, into, salvage);
      done += n;
    }
  }
}

async function readSalvaging(src: BlockDevice, offset: number, into: Uint8Array, salvage: Warn | undefined): Promise<void> {
  // A source whose size is not sector-aligned reads as zeroes up to the sector boundary.
  const inside = Math.max(0, Math.min(into.length, src.size() - offset));
  if (inside < into.length) into.fill(0, inside);
  if (inside === 0) return;
  const part = into.subarray(0, inside);
  try {
    await src.read(offset, part);
  } catch (err) {
    if (!salvage) throw err;
    // Retry sector by sector; unreadable sectors become zeroes with a warning, like qemu.
    let retried: unknown[] = [err];
    for (let pos = 0; pos < inside; pos += SECTOR) {
      const sec = part.subarray(pos, Math.min(inside, pos + SECTOR));
      try {
        await src.read(offset + pos, sec);
      } catch (e) {
        retried.push(e);
        salvage(`error while reading offset ${offset + pos}: ${reason(e)}`, retried);
        retried = [];
        sec.fill(0);
      }
    }
  }
}
