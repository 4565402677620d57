/**
 * `convert`'s writes to the target (qemu-img's convert_co_write): a chunk's data written, its
 * zero runs skipped or written as zeroes, compressed clusters written whole, every request
 * metered by the rate limit first.
 */
import { BDRV_SECTOR_SIZE, isZero, type BlockDevice } from '@tsimg/raw';
import type { CompressedTarget } from './convert-compressed.js';
import { allocatedRunMin, type ConvertParams, type Piece, type Status } from './convert-plan.js';
import type { WriteThrottle } from './throttle.js';

const SECTOR = BDRV_SECTOR_SIZE;

/** What is known of a data chunk before its write: worked out when it was read. */
export interface Prepared {
  /** With -c and a compressor: the cluster compressed ahead (null: stored uncompressed). */
  pre?: Uint8Array | null;
  /** With -c: whether the cluster is all zero. */
  zeroed?: boolean;
  /** Uncompressed with -S: the chunk's split into data and zero runs. */
  pieces?: readonly Piece[];
}

/** Writes chunks to one target with one set of settings. */
export class ChunkWriter {
  constructor(
    readonly target: BlockDevice & Partial<CompressedTarget>,
    readonly params: ConvertParams,
    readonly throttle: WriteThrottle | undefined,
  ) {}

  /** convert_co_write: `sectors` at `sector` of status `st`, from `buf` when data. */
  async write(sector: number, sectors: number, buf: Uint8Array, st: Status, prepared: Prepared = {}): Promise<void> {
    const { minSparse, compressed, hasZeroInit, alignment } = this.params;
    const { target, throttle } = this;
    let piece = 0;
    while (sectors > 0) {
      let n = sectors;
      let zero = false;
      if (st === 'data') {
        if (compressed) {
          // qemu writes compressed whatever -S says; -S 0 only stops it skipping zero clusters.
          if (!minSparse || !(prepared.zeroed ?? isZero(buf.subarray(0, n * SECTOR)))) {
            await throttle?.admit(n * SECTOR);
            await target.writeCompressed!(sector * SECTOR, buf.subarray(0, n * SECTOR), prepared.pre);
          } else zero = true;
        } else if (!minSparse) {
          await throttle?.admit(n * SECTOR);
          await target.write(sector * SECTOR, buf.subarray(0, n * SECTOR));
        } else {
          const run = prepared.pieces?.[piece++] ?? allocatedRunMin(buf, n, minSparse, sector, alignment);
          n = run.run;
          if (run.data) {
            await throttle?.admit(n * SECTOR);
            await target.write(sector * SECTOR, buf.subarray(0, n * SECTOR));
          } else zero = true;
        }
      } else if (st === 'zero') {
        zero = true;
      }
      if (zero && !hasZeroInit) {
        // A zero write is a write request to the throttle, counted at its full length.
        await throttle?.admit(n * SECTOR);
        await target.writeZeroes(sector * SECTOR, n * SECTOR, { mayUnmap: true });
      }
      sector += n;
      sectors -= n;
      buf = buf.subarray(n * SECTOR);
    }
  }

  /** Ends a compressed stream: qemu's empty compressed write, which the throttle also sees. */
  async finishCompressed(): Promise<void> {
    await this.throttle?.admit(0);
    await this.target.finishCompressed!();
  }
}

let zeroes = new Uint8Array(0);
/** A shared all-zero buffer of `n` sectors (never written to). */
export function zeroChunk(n: number): Uint8Array {
  if (zeroes.length < n * SECTOR) zeroes = new Uint8Array(n * SECTOR);
  return zeroes.subarray(0, n * SECTOR);
}
