/**
 * qcow2 creation (create.ts, create-options.ts): validation messages, a round trip through
 * loadHeader, and a byte-for-byte cross-check against `qemu-img create -f qcow2` over a matrix
 * of versions, cluster sizes, refcount widths, features, sizes and preallocation modes —
 * the library writing into MemoryDevices, qemu-img into files.
 */
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryDevice } from '@tsimg/raw';
import { createQcow2, loadHeader, findExtension, type Qcow2CreateOptions } from '@tsimg/qcow2';
import { resolveQcow2CreateOptions } from '../src/create/create.js';
import { describeQemu, qemuImg, tempDir } from '../../../test-images/qemu.js';

const M = 1024n * 1024n;
const G = 1024n * M;

describe('resolveQcow2CreateOptions', () => {
  it('fills in qemu 7.2 defaults', () => {
    expect(resolveQcow2CreateOptions({ size: G })).toEqual({
      size: G,
      version: 3,
      clusterBits: 16,
      refcountOrder: 4,
      lazyRefcounts: false,
      extendedL2: false,
      compressionType: 'zlib',
      preallocation: 'off',
      backingFile: undefined,
      backingFormat: undefined,
      dataFile: undefined,
      dataFileRaw: false,
    });
  });

  it('turns data-file-raw into metadata preallocation', () => {
    expect(resolveQcow2CreateOptions({ size: M, dataFile: 'd', dataFileRaw: true }).preallocation).toBe('metadata');
  });

  const v3 = '(use version=v3 or greater)';
  it.each<[Partial<Qcow2CreateOptions>, string]>([
    [{ size: 1000n }, 'Image size must be a multiple of 512 bytes'],
    [{ version: 2, extendedL2: true }, `Extended L2 entries are only supported with compatibility level 1.1 and above ${v3}`],
    [{ clusterSize: 1000n }, 'Cluster size must be a power of two between 512 and 2048k'],
    [{ clusterSize: 256n }, 'Cluster size must be a power of two between 512 and 2048k'],
    [{ clusterSize: 4n * M }, 'Cluster size must be a power of two between 512 and 2048k'],
    [{ clusterSize: (1n << 32n) + 65536n }, 'Cluster size must be a power of two between 512 and 2048k'],
    [{ clusterSize: 8192n, extendedL2: true }, 'Extended L2 entries are only supported with cluster sizes of at least 16384 bytes'],
    [{ backingFile: 'b', preallocation: 'metadata' }, 'Backing file and preallocation can only be used at the same time if extended_l2 is on'],
    [{ backingFormat: 'raw' }, 'Backing format cannot be used without backing file'],
    [{ version: 2, lazyRefcounts: true }, `Lazy refcounts only supported with compatibility level 1.1 and above ${v3}`],
    [{ refcountBits: 3n }, 'Refcount width must be a power of two and may not exceed 64 bits'],
    [{ refcountBits: 128n }, 'Refcount width must be a power of two and may not exceed 64 bits'],
    [{ refcountBits: 0n }, 'Refcount width must be a power of two and may not exceed 64 bits'],
    [{ refcountBits: -1n }, 'Refcount width must be a power of two and may not exceed 64 bits'],
    [{ version: 2, refcountBits: 8n }, `Different refcount widths than 16 bits require compatibility level 1.1 or above ${v3}`],
    [{ dataFileRaw: true }, 'data-file-raw requires data-file'],
    [{ dataFile: 'd', dataFileRaw: true, backingFile: 'b' }, 'Backing file and data-file-raw cannot be used at the same time'],
    [{ version: 2, dataFile: 'd' }, `External data files are only supported with compatibility level 1.1 and above ${v3}`],
    [{ version: 2, compressionType: 'zstd' }, `Non-zlib compression type is only supported with compatibility level 1.1 and above ${v3}`],
  ].map(([partial, message]) => [qemuOptions({ size: M, ...partial }) || `size=${partial.size}`, partial, message] as const))(
    '%s → error',
    (_name, partial, message) => {
      expect(() => resolveQcow2CreateOptions({ size: M, ...partial })).toThrow(message);
    },
  );
});

describe('createQcow2', () => {
  it('writes an image loadHeader reads back', async () => {
    const dev = new MemoryDevice();
    const data = new MemoryDevice();
    await createQcow2(
      dev,
      { size: 3n * G, clusterSize: 4096n, refcountBits: 8n, lazyRefcounts: true, compressionType: 'zstd', dataFile: 'd.raw' },
      data,
    );
    const { header, extensions } = await loadHeader(dev);
    expect(header).toMatchObject({ version: 3, clusterBits: 12, size: 3 * 2 ** 30, refcountOrder: 3, compressionType: 1, headerLength: 112 });
    expect(header.incompatibleFeatures).toBe((1n << 2n) | (1n << 3n));
    expect(header.compatibleFeatures).toBe(1n);
    expect(findExtension(extensions, 'data-file')?.name).toBe('d.raw');
    // no feature table at 4 KiB clusters, as in qemu
    expect(findExtension(extensions, 'feature-names')).toBeUndefined();
    expect(data.size()).toBe(3 * 2 ** 30);
  });

  it('refuses sizes the L1 table cannot cover with EFBIG', async () => {
    await expect(createQcow2(new MemoryDevice(), { size: 1n << 40n, clusterSize: 512n })).rejects.toMatchObject({ errno: 'EFBIG' });
  });

  it('refuses a backing file name longer than 1023 bytes', async () => {
    await expect(
      createQcow2(new MemoryDevice(), { size: M, backingFile: 'x'.repeat(1024), backingFormat: 'raw' }),
    ).rejects.toThrow("Could not assign backing file 'xxx");
  });
});

/** A qemu-img `-o` list for the same options. */
function qemuOptions(o: Qcow2CreateOptions): string {
  const parts: string[] = [];
  if (o.version) parts.push(`compat=${o.version === 2 ? '0.10' : '1.1'}`);
  if (o.clusterSize) parts.push(`cluster_size=${o.clusterSize}`);
  if (o.refcountBits) parts.push(`refcount_bits=${o.refcountBits}`);
  if (o.lazyRefcounts) parts.push('lazy_refcounts=on');
  if (o.extendedL2) parts.push('extended_l2=on');
  if (o.compressionType) parts.push(`compression_type=${o.compressionType}`);
  if (o.preallocation) parts.push(`preallocation=${o.preallocation}`);
  if (o.backingFile) parts.push(`backing_file=${o.backingFile}`, `backing_fmt=${o.backingFormat}`);
  if (o.dataFile) parts.push(`data_file=${o.dataFile}`);
  if (o.dataFileRaw) parts.push('data_file_raw=on');
  return parts.join(',');
}

const MATRIX: Qcow2CreateOptions[] = [];
for (const version of [2, 3] as const) {
  for (const clusterSize of [512n, 1024n, 4096n, 65536n, 2n * M]) {
    for (const size of [0n, 512n, 1025024n, G, 1n << 40n]) {
      // qemu refuses L1 tables over 32 MiB (EFBIG, tested above)
      if (size > 4n * M * clusterSize * (clusterSize / 8n)) continue;
      MATRIX.push({ size, version, clusterSize });
    }
  }
}
for (const refcountBits of [1n, 2n, 4n, 8n, 32n, 64n]) {
  for (const clusterSize of [512n, 65536n]) MATRIX.push({ size: 10n * G, refcountBits, clusterSize });
}
MATRIX.push(
  { size: 20n * G, clusterSize: 512n, refcountBits: 64n }, // the refcount table has to grow
  { size: 100n << 40n },
  { size: G, lazyRefcounts: true },
  { size: G, extendedL2: true },
  { size: G, extendedL2: true, clusterSize: 16384n },
  { size: G, compressionType: 'zstd' },
  { size: G, lazyRefcounts: true, extendedL2: true, compressionType: 'zstd', refcountBits: 8n },
  { size: 10n * M, backingFile: 'base.qcow2', backingFormat: 'qcow2' },
  { size: 10n * M, backingFile: 'b'.repeat(300), backingFormat: 'raw', clusterSize: 512n },
  { size: 10n * M, backingFile: 'base.raw', backingFormat: 'raw', version: 2, clusterSize: 512n },
  { size: 10n * M, dataFile: 'd.raw' },
  { size: 1025024n, dataFile: 'd.raw', dataFileRaw: true },
  { size: 10n * M, dataFile: 'd.raw', preallocation: 'full', extendedL2: true },
);
for (const preallocation of ['metadata', 'falloc', 'full'] as const) {
  for (const clusterSize of [512n, 4096n, 65536n, 2n * M]) {
    for (const size of [512n, 1025024n, 20n * M]) MATRIX.push({ size, preallocation, clusterSize });
  }
  MATRIX.push(
    { size: 16n * M, preallocation, clusterSize: 512n, refcountBits: 64n },
    { size: 8n * M, preallocation, clusterSize: 512n, refcountBits: 1n },
    { size: 100n * M, preallocation, extendedL2: true, backingFile: 'base', backingFormat: 'raw' },
  );
}

const label = (o: Qcow2CreateOptions): string =>
  `${qemuOptions(o).replace(/b{300}/, 'b×300') || 'defaults'} size=${o.size}`;

describeQemu('createQcow2 against qemu-img create', () => {
  let dir = '';
  let cleanup = (): void => {};
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-create-lib-'));
  });
  afterAll(() => cleanup());

  it.each(MATRIX.map((o, i) => [label(o), o, i] as const))('%s', async (_name, o, i) => {
    const file = `q${i}.qcow2`;
    const opts = { ...o, dataFile: o.dataFile && `d${i}.raw` };
    const list = qemuOptions(opts);
    const r = qemuImg(['create', '-q', '-f', 'qcow2', '-u', ...(list ? ['-o', list] : []), file, String(o.size)], { cwd: dir });
    expect(r.stderr).toBe('');
    const dev = new MemoryDevice();
    const data = opts.dataFile ? new MemoryDevice() : undefined;
    await createQcow2(dev, opts, data);
    expect(Buffer.from(dev.contents()).equals(readFileSync(join(dir, file)))).toBe(true);
    if (data) {
      const expected = readFileSync(join(dir, opts.dataFile!));
      expect(data.size()).toBe(expected.length);
      expect(Buffer.from(data.contents()).equals(expected)).toBe(true);
    } else {
      expect(existsSync(join(dir, `d${i}.raw`))).toBe(false);
    }
  });
});
