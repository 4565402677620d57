import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { MemoryDevice } from '@tsimg/raw';
import { collectImageInfo, collectImageInfoList, probeFormat } from '@tsimg/image';
import { fullBackingFilename, pathHasProtocol } from '../src/paths.js';
import { loadQcow2Metadata, type Qcow2Header } from '@tsimg/qcow2';
import { decodeLuksInfo, LUKS_HEADER_SIZE } from '../../qcow2/src/crypto/luks-header.js';
import { encodeExtensions, encodeHeader, QEMU_FEATURE_NAMES } from '../../qcow2/src/format/header.js';
import { snapshotInfo } from '../../qcow2/src/info.js';
import { describeQemu, must, tempDir } from '../../../test-images/qemu.js';

describe('backing file names', () => {
  it.each([
    ['a.qcow2', 'b.raw', 'b.raw'],
    ['dir/a.qcow2', 'b.raw', 'dir/b.raw'],
    ['/x/y/a.qcow2', '../b.raw', '/x/y/../b.raw'],
    ['dir/a.qcow2', '/abs/b.raw', '/abs/b.raw'],
    ['dir/a.qcow2', 'nbd:host:10809', 'nbd:host:10809'],
    ['proto:a.qcow2', 'b', 'proto:b'],
  ])('%s + %s → %s', (backed, backing, full) => expect(fullBackingFilename(backed, backing)).toBe(full));

  it('cannot resolve relative names against json: filenames', () => {
    expect(fullBackingFilename('json:{"file":{}}', 'b.raw')).toBeUndefined();
    expect(fullBackingFilename('a', '')).toBeUndefined();
  });

  it('detects protocols the way path_has_protocol does', () => {
    expect(pathHasProtocol('nbd:x')).toBe(true);
    expect(pathHasProtocol('./a:b')).toBe(false);
    expect(pathHasProtocol('plain')).toBe(false);
  });
});

describe('format probing', () => {
  const bytes = (s: string, at = 0): Uint8Array => {
    const b = new Uint8Array(2048);
    for (let i = 0; i < s.length; i++) b[at + i] = s.charCodeAt(i);
    return b;
  };
  it('recognises qcow2 by magic and version', () => {
    const b = bytes('QFI\xfb\0\0\0\x03');
    expect(probeFormat(b)).toBe('qcow2');
    expect(probeFormat(bytes('QFI\xfb\0\0\0\x01'))).toBe('qcow');
    expect(probeFormat(bytes('QFI\xfb\0\0\0\0'))).toBe('raw');
  });
  it('names other formats instead of calling them raw', () => {
    expect(probeFormat(bytes('KDMV'))).toBe('vmdk');
    expect(probeFormat(bytes('conectix'))).toBe('vpc');
    expect(probeFormat(bytes('vhdxfile'))).toBe('vhdx');
    expect(probeFormat(bytes('LUKS\xba\xbe'))).toBe('luks');
    expect(probeFormat(bytes('QED\0'))).toBe('qed');
    expect(probeFormat(bytes('\x7f\x10\xda\xbe', 0x40))).toBe('vdi');
    expect(probeFormat(bytes('hello'))).toBe('raw');
  });
});

function luksHeader(over: { mode?: string; hash?: string; keyBytes?: number; stripes?: number; version?: number } = {}): Uint8Array {
  const b = new Uint8Array(LUKS_HEADER_SIZE);
  const v = new DataView(b.buffer);
  const put = (off: number, s: string): void => {
    for (let i = 0; i < s.length; i++) b[off + i] = s.charCodeAt(i);
  };
  put(0, 'LUKS\xba\xbe');
  v.setUint16(6, over.version ?? 1);
  put(8, 'aes');
  put(40, over.mode ?? 'xts-plain64');
  put(72, over.hash ?? 'sha256');
  v.setUint32(104, 4040);
  v.setUint32(108, over.keyBytes ?? 64);
  v.setUint32(164, 1000);
  put(168, '48a187c0-4701-449e-807e-5714b05ad0d6');
  for (let i = 0; i < 8; i++) {
    const o = 208 + i * 48;
    v.setUint32(o, i === 0 ? 0x00ac71f3 : 0x0000dead);
    v.setUint32(o + 4, i === 0 ? 2000 : 0);
    v.setUint32(o + 40, 8 + i * 504);
    v.setUint32(o + 44, over.stripes ?? 4000);
  }
  return b;
}

describe('LUKS header', () => {
  it('decodes what qemu reports', () => {
    const info = decodeLuksInfo(luksHeader());
    expect(info).toEqual({
      'cipher-alg': 'aes-256',
      'cipher-mode': 'xts',
      'ivgen-alg': 'plain64',
      'hash-alg': 'sha256',
      'payload-offset': 4040 * 512,
      'master-key-iters': 1000,
      uuid: '48a187c0-4701-449e-807e-5714b05ad0d6',
      slots: [
        { active: true, iters: 2000, stripes: 4000, 'key-offset': 4096 },
        ...Array.from({ length: 7 }, (_, i) => ({ active: false, 'key-offset': (8 + (i + 1) * 504) * 512 })),
      ],
    });
    expect(Object.keys(info)).toEqual(['cipher-alg', 'cipher-mode', 'ivgen-alg', 'hash-alg', 'payload-offset', 'master-key-iters', 'uuid', 'slots']);
  });

  it('reports essiv with its hash, in schema order', () => {
    const info = decodeLuksInfo(luksHeader({ mode: 'cbc-essiv:sha256', keyBytes: 32 }));
    expect(info['ivgen-alg']).toBe('essiv');
    expect(info['ivgen-hash-alg']).toBe('sha256');
    expect(Object.keys(info).slice(0, 5)).toEqual(['cipher-alg', 'cipher-mode', 'ivgen-alg', 'ivgen-hash-alg', 'hash-alg']);
  });

  it('refuses damaged headers', () => {
    expect(() => decodeLuksInfo(luksHeader({ version: 2 }))).toThrow('LUKS version 2 is not supported');
    expect(() => decodeLuksInfo(luksHeader({ stripes: 3 }))).toThrow('Keyslot 0 is corrupted (stripes 3 != 4000)');
    expect(() => decodeLuksInfo(luksHeader({ keyBytes: 40 }))).toThrow("Algorithm 'aes' with key size 20 bytes not supported");
    expect(() => decodeLuksInfo(new Uint8Array(LUKS_HEADER_SIZE))).toThrow('Volume is not in LUKS format');
  });
});

/** A minimal v3 image in memory: header, feature table, refcount table and L1 pointers. */
async function memImage(over: Partial<Qcow2Header> = {}): Promise<MemoryDevice> {
  const h: Qcow2Header = {
    version: 3, backingFileOffset: 0, backingFileSize: 0, clusterBits: 16, size: 1 << 30, cryptMethod: 0,
    l1Size: 2, l1TableOffset: 0x30000, refcountTableOffset: 0x10000, refcountTableClusters: 1, nbSnapshots: 0,
    snapshotsOffset: 0, incompatibleFeatures: 0n, compatibleFeatures: 0n, autoclearFeatures: 0n, refcountOrder: 4,
    headerLength: 112, compressionType: 0, ...over,
  };
  const dev = new MemoryDevice({ size: 0x40000 });
  const head = new Uint8Array(Math.max(h.headerLength, 112));
  encodeHeader(h, new DataView(head.buffer));
  await dev.write(0, head);
  await dev.write(head.length, encodeExtensions([{ kind: 'feature-names', features: [...QEMU_FEATURE_NAMES] }]));
  return dev;
}

describe('loadQcow2Metadata checks (qcow2_do_open order and messages)', () => {
  it('accepts a minimal image', async () => {
    const meta = await loadQcow2Metadata(await memImage());
    expect(meta.clusterSize).toBe(65536);
    expect(meta.snapshots).toEqual([]);
    expect(meta.bitmaps).toEqual([]);
    expect(meta.warnings).toEqual([]);
  });

  it.each([
    [{ l1Size: 1 }, 'L1 table is too small'],
    [{ refcountTableClusters: 0 }, 'Image does not contain a reference count table'],
    [{ refcountTableOffset: 0x10200 }, 'Reference count table offset invalid'],
    [{ nbSnapshots: 70000 }, 'Snapshot table too large'],
    [{ compressionType: 1 }, 'qcow2: Compression type incompatible feature bit must be set'],
    [{ incompatibleFeatures: 8n }, 'qcow2: Compression type incompatible feature bit must not be set'],
    [{ compressionType: 7, incompatibleFeatures: 8n }, 'qcow2: unknown compression type: 7'],
    [{ incompatibleFeatures: 1n << 40n }, 'Unsupported qcow2 feature(s): Unknown incompatible feature: 10000000000'],
    [{ refcountOrder: 7 }, 'Reference count entry width too large; may not exceed 64 bits'],
    [{ clusterBits: 22 }, 'Unsupported cluster size: 2^22'],
    [{ headerLength: 96 }, 'qcow2 header too short'],
    [{ cryptMethod: 9 }, 'Unsupported encryption method 9'],
    [{ clusterBits: 13, l1Size: 1 << 20, incompatibleFeatures: 16n }, 'Unsupported subcluster size: 256'],
  ] as Array<[Partial<Qcow2Header>, string]>)('%# → %s', async (over, message) => {
    const dev = await memImage(over);
    await expect(loadQcow2Metadata(dev)).rejects.toThrow(message);
  });
});

describe('snapshotInfo', () => {
  it('converts like bdrv_query_snapshot_info_list', () => {
    const info = snapshotInfo({
      l1TableOffset: 0, l1Size: 0, id: 'id\0junk', name: 'n', dateSec: 1, dateNsec: 2, vmClockNsec: 3_000_000_004n,
      vmStateSize32: 0, extraDataSize: 24, vmStateSizeLarge: 1n << 63n, diskSize: 0n, icount: (1n << 64n) - 1n,
      unknownExtraData: new Uint8Array(0),
    });
    expect(info).toEqual({
      id: 'id', name: 'n', 'vm-state-size': -(1n << 63n), 'date-sec': 1, 'date-nsec': 2, 'vm-clock-sec': 3n, 'vm-clock-nsec': 4,
    });
  });
});

describeQemu('collectImageInfo on images made by qemu-img', () => {
  let dir = '';
  let cleanup = (): void => {};
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-infolib-'));
    must('qemu-img', ['create', '-f', 'raw', join(dir, 'base.raw'), '1M']);
    must('qemu-img', ['create', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', '-o', 'lazy_refcounts=on', join(dir, 'top.qcow2')]);
    must('qemu-img', ['snapshot', '-c', 's1', join(dir, 'top.qcow2')]);
    must('qemu-img', ['bitmap', '--add', join(dir, 'top.qcow2'), 'b1']);
    writeFileSync(join(dir, 'v.vmdk'), 'KDMV' + '\0'.repeat(508));
  });
  afterAll(() => cleanup());

  it('gathers every field', async () => {
    const { info, warnings } = await collectImageInfo(join(dir, 'top.qcow2'));
    expect(warnings).toEqual([]);
    expect(info.format).toBe('qcow2');
    expect(info['virtual-size']).toBe(1 << 20);
    expect(info['backing-filename']).toBe('base.raw');
    expect(info['full-backing-filename']).toBe(join(dir, 'base.raw'));
    expect(info['backing-filename-format']).toBe('raw');
    expect(info.snapshots?.map((s) => s.name)).toEqual(['s1']);
    expect(info['format-specific']?.data).toMatchObject({
      compat: '1.1',
      'lazy-refcounts': true,
      bitmaps: [{ name: 'b1', granularity: 65536, flags: ['auto'] }],
      'refcount-bits': 16,
      'compression-type': 'zlib',
    });
    expect(info['actual-size']).toBeGreaterThan(0);
  });

  it('follows the chain', async () => {
    const list = await collectImageInfoList(join(dir, 'top.qcow2'), { chain: true });
    expect(list.map((i) => [i.filename, i.format])).toEqual([
      [join(dir, 'top.qcow2'), 'qcow2'],
      [join(dir, 'base.raw'), 'raw'],
    ]);
  });

  it('says which formats it does not handle', async () => {
    await expect(collectImageInfo(join(dir, 'v.vmdk'))).rejects.toThrow(
      `Could not open '${join(dir, 'v.vmdk')}': image format 'vmdk' is not supported by tsimg`,
    );
    await expect(collectImageInfo(join(dir, 'top.qcow2'), { format: 'vdi' })).rejects.toThrow('is not supported by tsimg');
  });
});
