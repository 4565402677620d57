/**
 * Creating a qcow2 image byte for byte as qemu-img 7.2 does.
 *
 * qemu writes a minimal image (header, one-cluster refcount table, one empty refcount block),
 * opens it, and then grows it through its normal metadata paths: allocate the first three
 * clusters, rewrite the header with its extensions, grow the L1 table for the size, preallocate
 * (L2 tables and data clusters in allocation order), and set the backing file. The file's final
 * bytes depend on that history — where the allocator puts refcount blocks, that a replaced
 * refcount table is freed but stays on disk, that the file ends right after the L1 table — so
 * this module replays qemu's allocator (qcow2-refcount.c: alloc_clusters_noref, update_refcount,
 * alloc_refcount_block, qcow2_refcount_area; qcow2-cluster.c: l2_allocate, handle_alloc,
 * qcow2_alloc_host_offset; qcow2.c: preallocate_co, qcow2_co_truncate) on an in-memory model,
 * then writes the result. Writes whose order does not change the final bytes are not replayed
 * one by one: each metadata cluster is written once with its final content.
 *
 * The parts: layout.ts (the in-memory model and the allocator replay), preallocation.ts
 * (preallocate_co and the falloc/full truncate), header-cluster.ts (qcow2_update_header),
 * output.ts (writing the model to the device); this module runs them in qemu's order.
 */
import { BDRV_MAX_LENGTH, TsimgError, UsageError, IoError, LimitError } from '@tsimg/raw';
import { resolveQcow2CreateOptions, type Qcow2CreateOptions } from './create-options.js';
import { setUpLuks } from './encryption.js';
import { headerCluster } from './header-cluster.js';
import { COPIED, Layout } from './layout.js';
import { flushLayout, type CreateTarget, type ZeroFill } from './output.js';
import { preallocateFull, preallocateMetadata, truncateData, type CreateRun } from './preallocation.js';

export type { Qcow2CreateOptions, Qcow2Preallocation, ResolvedQcow2CreateOptions } from './create-options.js';
export type { Qcow2CreateEncryption } from './encryption.js';
export { resolveQcow2CreateOptions } from './create-options.js';
export type { CreateTarget } from './output.js';

/** BDRV_MAX_LENGTH as a bigint, for the unclamped `bigint` size of the options. */
const BDRV_MAX_LENGTH_BIG = BigInt(BDRV_MAX_LENGTH);

/** The whole creation (see the module comment). */
async function runCreate(run: CreateRun): Promise<void> {
  const { lay, o } = run;
  const cs = lay.cs;
  // qcow2_co_create: header cluster, then the refcount table and one empty refcount block
  lay.write(0, new Uint8Array(cs));
  const table = new Uint8Array(cs);
  new DataView(table.buffer).setBigUint64(0, BigInt(2 * cs));
  lay.write(cs, table);
  lay.reftable[0] = 2 * cs;
  lay.refblocks.set(2 * cs, new Uint8Array(cs));
  lay.claim(2 * cs);
  if (lay.allocClusters(3 * cs) !== 0) throw new UsageError('Huh, first cluster in empty image is already in use?');
  // qcow2_update_header with the data file name
  try {
    headerCluster(o, lay, false);
  } catch (err) {
    if (err instanceof TsimgError && err.errno === 'ENOSPC') {
      throw new LimitError('Could not update qcow2 header: No space left on device', { errno: 'ENOSPC' });
    }
    throw err;
  }
  // blk_truncate(size, preallocation)
  if (o.size >= 1n << 63n) throw new UsageError('Could not resize image: Image size cannot be negative', { errno: 'EINVAL' });
  if (o.size > BDRV_MAX_LENGTH_BIG) {
    throw new IoError(`Could not resize image: offset(${o.size}) exceeds maximum(${BDRV_MAX_LENGTH_BIG})`, { errno: 'EIO' });
  }
  const l2Coverage = 2 ** (o.clusterBits + o.clusterBits - (o.extendedL2 ? 4 : 3));
  const l1Size = Number((o.size + BigInt(l2Coverage) - 1n) / BigInt(l2Coverage));
  lay.growL1(l1Size);
  let zeroFill: ZeroFill | undefined;
  const mode = o.preallocation;
  if (mode === 'off') {
    if (run.dataFile) await truncateData(run, run.size, 'off');
  } else if (mode === 'metadata' || run.dataFile) {
    await preallocateMetadata(run, mode);
  } else {
    zeroFill = await preallocateFull(run, mode);
  }
  // bdrv_change_backing_file
  let header: Uint8Array;
  try {
    if (o.backingFile !== undefined && new TextEncoder().encode(o.backingFile).length > 1023) {
      throw new UsageError('Invalid argument', { errno: 'EINVAL' });
    }
    header = headerCluster(o, lay, true);
  } catch (err) {
    if (err instanceof TsimgError && (err.errno === 'ENOSPC' || err.errno === 'EINVAL')) {
      throw new LimitError(`Could not assign backing file '${o.backingFile}' with format '${o.backingFormat}': ${err.message}`,
        { errno: err.errno },
      );
    }
    throw err;
  }
  // qcow2_set_up_encryption: after the backing file, then qcow2_update_header once more
  if (o.encrypt?.format === 'luks') header = headerCluster(o, lay, true, await setUpLuks(lay, o.encrypt));
  lay.write(0, header);
  // the L1 table with its final entries
  if (lay.l1.length) {
    const l1 = new Uint8Array(lay.l1.length * 8);
    const v = new DataView(l1.buffer);
    lay.l1.forEach((e, i) => e && v.setBigUint64(i * 8, BigInt(e) | COPIED));
    lay.write(lay.l1Offset, l1);
  }
  await flushLayout(lay, run.file, zeroFill);
}

/**
 * Creates a qcow2 image in `file` (an empty, writable device), byte-identical to
 * `qemu-img create -f qcow2` with the same options. `dataFile` is the external data file's
 * device (required when `options.dataFile` is set). Throws with qemu's messages; errors with
 * errno `EFBIG` mean the size is too large for the cluster size.
 */
export async function createQcow2(file: CreateTarget, options: Qcow2CreateOptions, dataFile?: CreateTarget): Promise<void> {
  const o = resolveQcow2CreateOptions(options);
  if (o.dataFile !== undefined && !dataFile) throw new UsageError('data-file needs a device for the external data file');
  await runCreate({
    o,
    lay: new Layout(o.clusterBits, o.refcountOrder, o.extendedL2),
    file,
    dataFile: o.dataFile !== undefined ? dataFile : undefined,
    size: Number(o.size),
  });
}
