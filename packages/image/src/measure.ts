/**
 * `qemu-img measure`'s generic half: what a source image stores (walked through its chain as
 * qemu's loop does), handed to the target format's calculation.
 */
import { BDRV_SECTOR_SIZE, IoError, strerror, TsimgError, UnsupportedError } from '@tsimg/raw';
import { measureQcow2, type MeasureBitmap, type MeasureResult, type Qcow2MeasureOptions } from '@tsimg/qcow2';
import { blockStatusAbove, type ChainImage } from './block-status.js';

/**
 * What is measured: a virtual size, or an open image (whose allocation is walked through its
 * backing chain). `bitmaps` is set when the source supports persistent bitmaps (qcow2 v3): the
 * list of its persistent bitmaps, possibly empty. Leave it undefined for sources without
 * bitmap support (raw, qcow2 v2), and no bitmaps figure is reported.
 */
export type MeasureSource =
  | { size: bigint | number }
  | { image: ChainImage; bitmaps?: readonly MeasureBitmap[] };

const SECTOR = BigInt(BDRV_SECTOR_SIZE);

function roundUp(n: bigint, align: bigint): bigint {
  return ((n + align - 1n) / align) * align;
}

/**
 * Bytes of the source that a converted copy has to store, counted per cluster of the target:
 * zero runs (including unallocated ranges at the bottom of the chain) are skipped, and each data
 * run is extended to the end of its target cluster — qemu's loop, overestimates included.
 */
async function allocatedClusterBytes(image: ChainImage, clusterSize: number): Promise<bigint> {
  const size = image.size();
  const cs = clusterSize;
  let required = 0n;
  let pnum = 0;
  for (let offset = 0; offset < size; offset += pnum) {
    let st;
    try {
      st = await blockStatusAbove(image, offset, size - offset);
    } catch (err) {
      const errno = err instanceof TsimgError && err.errno !== undefined ? err.errno : 'EIO';
      throw new IoError(`Unable to get block status: ${strerror(errno)}`, { cause: err, errno });
    }
    pnum = st.length;
    if (st.zero) continue;
    if (st.data && st.allocated) {
      pnum = Math.ceil((offset + pnum) / cs) * cs - offset;
      required += BigInt((offset % cs) + pnum);
    }
  }
  return required;
}

/** `qemu-img measure -O raw`: the virtual size (sector-aligned for `--size`), either way. */
export async function measureRaw(source: MeasureSource): Promise<MeasureResult> {
  const required = 'size' in source ? roundUp(BigInt(source.size), SECTOR) : BigInt(source.image.size());
  return { required, fullyAllocated: required };
}

/** `qemu-img measure -O qcow2`: qcow2's calculation over what the source stores. */
export async function measureQcow2Source(source: MeasureSource, options: Qcow2MeasureOptions): Promise<MeasureResult> {
  if ('size' in source) return measureQcow2(source, options);
  const image = source.image;
  return measureQcow2({ imageSize: image.size(), allocatedBytes: (cs) => allocatedClusterBytes(image, cs), bitmaps: source.bitmaps }, options);
}

/** The target formats {@link measure} can measure. */
export const MEASURABLE_FORMATS: readonly string[] = ['qcow2', 'raw'];

/** Measures for target format `format` ('qcow2' or 'raw'; anything else is unsupported). */
export async function measure(
  format: string,
  source: MeasureSource,
  options: Qcow2MeasureOptions = {},
): Promise<MeasureResult> {
  if (format === 'qcow2') return measureQcow2Source(source, options);
  if (format === 'raw') return measureRaw(source);
  throw new UnsupportedError(`Block driver '${format}' does not support size measurement`);
}
