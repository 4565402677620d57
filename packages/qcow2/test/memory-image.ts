/**
 * Test support for qcow2 images on in-memory devices, so write-path tests run on machines
 * without qemu: create with createQcow2, open with Qcow2Image.open, check with the check library.
 */
import { expect } from 'vitest';
import { type BlockDevice, MemoryDevice } from '@tsimg/raw';
import { checkImage, createQcow2, openForCheck, Qcow2Image, type BackingDevice, type Qcow2CreateOptions } from '@tsimg/qcow2';

/**
 * A view of `dev` whose close() does nothing: Qcow2Image.close closes its file, data file and
 * backing device, and a closed MemoryDevice is gone, so a test that reopens needs this view.
 */
export function keepOpen<D extends BlockDevice>(dev: D): D {
  return new Proxy(dev, {
    get(target, prop) {
      if (prop === 'close') return async () => undefined;
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

/** A byte count with qemu's optional k/M/G suffix ('64k', '2M', '65536'). */
function qemuSize(text: string): bigint {
  const m = /^(\d+)([kKMG]?)$/.exec(text);
  if (!m) throw new Error(`bad size ${text}`);
  const shift = { '': 0n, k: 10n, K: 10n, M: 20n, G: 30n }[m[2]!]!;
  return BigInt(m[1]!) << shift;
}

/** qemu-img create's `-o` list (the options these tests use) as createQcow2 options. */
export function createOptionsOf(list: string, size: number): Qcow2CreateOptions {
  const o: Qcow2CreateOptions = { size: BigInt(size) };
  for (const item of list.split(',').filter((s) => s !== '')) {
    const [key, value = ''] = item.split('=') as [string, string?];
    const on = value === 'on';
    switch (key) {
      case 'cluster_size':
        o.clusterSize = qemuSize(value);
        break;
      case 'refcount_bits':
        o.refcountBits = BigInt(value);
        break;
      case 'compat':
        o.version = value === '0.10' ? 2 : 3;
        break;
      case 'extended_l2':
        o.extendedL2 = on;
        break;
      case 'lazy_refcounts':
        o.lazyRefcounts = on;
        break;
      case 'compression_type':
        o.compressionType = value as 'zlib' | 'zstd';
        break;
      case 'data_file':
        o.dataFile = value;
        break;
      case 'data_file_raw':
        o.dataFileRaw = on;
        break;
      default:
        throw new Error(`createOptionsOf: option ${key} not handled`);
    }
  }
  return o;
}

/** A qcow2 image in memory (and its external data file when the options name one). */
export interface MemoryQcow2 {
  file: MemoryDevice;
  dataFile?: MemoryDevice;
  backing?: BackingDevice;
}

/** createQcow2 on fresh MemoryDevices (4 KiB pages, so small images stay small). */
export async function createMemoryQcow2(options: Qcow2CreateOptions, backing?: BackingDevice): Promise<MemoryQcow2> {
  const file = new MemoryDevice({ pageSize: 4096 });
  const dataFile = options.dataFile !== undefined ? new MemoryDevice({ pageSize: 4096 }) : undefined;
  await createQcow2(file, options, dataFile);
  return { file, dataFile, backing };
}

/** Opens the image; closing it leaves the memory devices usable, so it can be opened again. */
export function openMemoryQcow2(m: MemoryQcow2, readOnly = false): Promise<Qcow2Image> {
  return Qcow2Image.open(keepOpen(m.file), {
    filename: 'mem.qcow2',
    readOnly,
    dataFile: m.dataFile && keepOpen(m.dataFile),
    backing: m.backing && keepOpen(m.backing),
  });
}

/** Everything the guest sees, read through a read-only open. */
export async function guestBytes(m: MemoryQcow2): Promise<Uint8Array> {
  const img = await openMemoryQcow2(m, true);
  try {
    const out = new Uint8Array(img.size());
    await img.read(0, out);
    return out;
  } finally {
    await img.close();
  }
}

/** The check library finds nothing wrong (no corruptions, leaks or check errors, no message). */
export async function expectCleanInMemory(file: BlockDevice): Promise<void> {
  const lines: string[] = [];
  const { result, errno } = await checkImage(await openForCheck(keepOpen(file), (l) => void lines.push(l), false));
  expect({ errno, lines, corruptions: result.corruptions, leaks: result.leaks, checkErrors: result.checkErrors }).toEqual({
    errno: undefined,
    lines: [],
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
  });
}

/** Index of the first differing byte of `a` and `b`, -1 when equal. */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  if (Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length))) return -1;
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return Math.min(a.length, b.length);
}
