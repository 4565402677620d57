/**
 * Source images for the convert cross-checks, made by qemu-img and qemu-io in `<root>/src`:
 * every kind of range a convert has to handle (holes, data, zero clusters, compressed clusters,
 * subclusters, backing data, an external data file, preallocation, snapshots, a corrupt
 * compressed cluster).
 */
import { closeSync, mkdirSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { qemuImg, qemuIo } from '../../../test-images/qemu.js';

function must(r: { status: number; stdout: string; stderr: string }, what: string): void {
  if (r.status !== 0) throw new Error(`${what}: ${r.stdout}${r.stderr}`);
}

/** Runs qemu-img in `dir`. */
function img(dir: string, ...args: string[]): void {
  must(qemuImg(args, { cwd: dir }), `qemu-img ${args.join(' ')}`);
}

/** Runs qemu-io commands on `file` (format `fmt`) in `dir`. */
function io(dir: string, file: string, fmt: string, ...cmds: string[]): void {
  must(qemuIo(['-f', fmt, ...cmds.flatMap((c) => ['-c', c]), file], { cwd: dir }), `qemu-io ${cmds.join('; ')} ${file}`);
}

/** The writes most qcow2 sources get: data, zeroes (with and without unmap), compressed, holes. */
const STANDARD = [
  'write -P 0x11 0 100k', // data over a cluster boundary, ending mid-cluster
  'write -P 0x22 300k 5k',
  'write -z 512k 128k', // zero clusters
  'write -P 0x33 1M 64k',
  'write -z -u 1M 64k', // a zero cluster that was data
  'write -c -P 0x44 2M 64k', // compressed
  'write -c -P 0x45 2112k 64k',
  'write -P 0x46 2140k 1k', // partly overwritten compressed cluster
  'write -P 0 2304k 64k', // data that is all zero (for -S)
  'write -P 0x55 2432k 4k',
  'write -P 0 2436k 8k',
  'write -P 0x56 2444k 4k', // a zero run of 8k between data (-S 4k vs 16k)
  'discard 2560k 64k',
  'write -P 0x77 4092k 4k', // the last bytes
];

/** Reads a big-endian u64 at `offset` of an open file. */
function u64(fd: number, offset: number): bigint {
  const b = Buffer.alloc(8);
  readSync(fd, b, 0, 8, offset);
  return b.readBigUInt64BE(0);
}

/**
 * Garbles the compressed data of the cluster at guest offset `guest` (a 64 KiB-cluster qcow2), so
 * reading it fails in the decompressor the way a damaged image does.
 */
function corruptCompressed(file: string, guest: number): void {
  const fd = openSync(file, 'r+');
  try {
    const l1 = Number(u64(fd, 40));
    const l2 = Number(u64(fd, l1) & 0x00fffffffffffe00n);
    const entry = u64(fd, l2 + 8 * (guest / 65536));
    if (!(entry & (1n << 62n))) throw new Error('cluster is not compressed');
    const host = Number(entry & ((1n << 54n) - 1n));
    writeSync(fd, Buffer.alloc(64, 0xff), 0, 64, host + 8);
  } finally {
    closeSync(fd);
  }
}

/** Makes every source under `<root>/src`; returns that directory. */
export function makeSources(root: string): string {
  const dir = join(root, 'src');
  mkdirSync(dir, { recursive: true });

  // raw: a sparse file with a little data, a dense file with zero-filled data, and an odd size.
  img(dir, 'create', '-f', 'raw', 'sparse.raw', '4M');
  io(dir, 'sparse.raw', 'raw', 'write -P 0x11 64k 64k', 'write -P 0x22 1049088 3000', 'write -P 0x33 4092k 4k');
  img(dir, 'create', '-f', 'raw', '-o', 'preallocation=full', 'dense.raw', '2M');
  io(dir, 'dense.raw', 'raw', 'write -P 0x5a 0 2M', 'write -P 0 512k 128k', 'write -P 0 1M 2k');
  const odd = Buffer.alloc(100001, 0);
  for (let i = 0; i < odd.length; i += 7) odd[i] = 1 + (i % 251);
  odd.fill(0, 40000, 70000);
  writeFileSync(join(dir, 'odd.raw'), odd);

  // qcow2 with every kind of cluster, 64k and 4k clusters, zstd, extended L2.
  img(dir, 'create', '-f', 'qcow2', 'mixed.qcow2', '4M');
  io(dir, 'mixed.qcow2', 'qcow2', ...STANDARD);
  img(dir, 'create', '-f', 'qcow2', '-o', 'cluster_size=4k', 'c4k.qcow2', '4M');
  io(dir, 'c4k.qcow2', 'qcow2', ...STANDARD);
  img(dir, 'create', '-f', 'qcow2', '-o', 'compression_type=zstd', 'zstd.qcow2', '4M');
  io(dir, 'zstd.qcow2', 'qcow2', ...STANDARD);
  img(dir, 'create', '-f', 'qcow2', '-o', 'extended_l2=on', 'extl2.qcow2', '4M');
  io(
    dir,
    'extl2.qcow2',
    'qcow2',
    'write -P 0x11 0 4k',
    'write -P 0x12 40k 2k',
    'write -z 64k 32k',
    'write -P 0x13 128k 64k',
    'write -z 160k 2k',
    'discard 176k 2k',
    'write -c -P 0x14 1M 64k',
    'write -P 0x15 3M 1k',
  );

  // A backing chain: base 2M (raw under qcow2), top 4M with writes, zeroes over backing data.
  img(dir, 'create', '-f', 'raw', 'base0.raw', '1M');
  io(dir, 'base0.raw', 'raw', 'write -P 0xb0 0 64k', 'write -P 0xb1 900k 4k');
  img(dir, 'create', '-f', 'qcow2', '-b', 'base0.raw', '-F', 'raw', 'base.qcow2', '2M');
  io(dir, 'base.qcow2', 'qcow2', 'write -P 0xb2 128k 64k', 'write -P 0xb3 1536k 100k', 'write -P 0xb4 1M 64k');
  img(dir, 'create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', '4M');
  io(dir, 'top.qcow2', 'qcow2', 'write -P 0xc1 128k 4k', 'write -z 1M 64k', 'write -P 0xc2 1600k 8k', 'write -P 0xc3 3M 64k');
  // 512-byte clusters over a short backing: each L2 table maps 32 KiB, so qemu's block status
  // answers in 32 KiB runs, shorter than a 64 KiB target cluster (compressed: whole clusters).
  img(dir, 'create', '-f', 'qcow2', '-o', 'cluster_size=512', '-b', 'base0.raw', '-F', 'raw', 'small-top.qcow2', '3M');
  io(dir, 'small-top.qcow2', 'qcow2', 'discard 0 512', 'write -P 0xd1 40k 1k', 'write -P 0xd2 1100k 4k');
  // The same data as base.qcow2's chain, flat: -B target over it writes only the differences.
  img(dir, 'convert', '-O', 'qcow2', 'base.qcow2', 'flatbase.qcow2');

  // An external data file (absolute name: qemu 7.2 opens a relative one from its working directory).
  img(dir, 'create', '-f', 'qcow2', '-o', `data_file=${join(dir, 'df.data')}`, 'df.qcow2', '4M');
  io(dir, 'df.qcow2', 'qcow2', 'write -P 0x61 0 100k', 'write -z 512k 64k', 'write -P 0x62 3M 64k');

  // Preallocated qcow2 (every cluster allocated, most of them zero).
  img(dir, 'create', '-f', 'qcow2', '-o', 'preallocation=metadata', 'pmeta.qcow2', '4M');
  io(dir, 'pmeta.qcow2', 'qcow2', 'write -P 0x71 64k 64k', 'write -z 1M 64k');
  img(dir, 'create', '-f', 'qcow2', '-o', 'preallocation=falloc', 'pfalloc.qcow2', '2M');
  io(dir, 'pfalloc.qcow2', 'qcow2', 'write -P 0x72 64k 3k');

  // Snapshots: s1 (id 1), s2 (id 2), different data in each and in the active layer.
  img(dir, 'create', '-f', 'qcow2', 'snap.qcow2', '4M');
  io(dir, 'snap.qcow2', 'qcow2', 'write -P 0x81 0 64k', 'write -c -P 0x82 1M 64k');
  img(dir, 'snapshot', '-c', 's1', 'snap.qcow2');
  io(dir, 'snap.qcow2', 'qcow2', 'write -P 0x83 0 4k', 'write -z 1M 64k', 'write -P 0x84 2M 64k');
  img(dir, 'snapshot', '-c', 's2', 'snap.qcow2');
  io(dir, 'snap.qcow2', 'qcow2', 'write -P 0x85 3M 64k', 'discard 2M 64k');

  // A corrupt compressed cluster at 1M (reads fail there; --salvage turns them into zeroes).
  img(dir, 'create', '-f', 'qcow2', 'corrupt.qcow2', '2M');
  io(dir, 'corrupt.qcow2', 'qcow2', 'write -P 0x91 0 64k', 'write -c -P 0x92 1M 64k', 'write -P 0x93 1536k 64k');
  corruptCompressed(join(dir, 'corrupt.qcow2'), 1 << 20);

  // An L1 entry pointing at an unaligned L2 table: block status fails over the first 512 MiB.
  img(dir, 'create', '-f', 'qcow2', 'badl1.qcow2', '64k');
  io(dir, 'badl1.qcow2', 'qcow2', 'write -P 0x94 0 8k');
  {
    const fd = openSync(join(dir, 'badl1.qcow2'), 'r+');
    try {
      const l1 = Number(u64(fd, 40));
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE((u64(fd, l1) & 0x00fffffffffffe00n) | 0x8000000000000000n | 0x200n);
      writeSync(fd, b, 0, 8, l1);
    } finally {
      closeSync(fd);
    }
  }

  // An L2 entry with an unaligned host offset (guest cluster 64k): its block status fails, and
  // so do reads there; --salvage copies each of its sectors as data that reads as zeroes.
  img(dir, 'create', '-f', 'qcow2', 'badl2.qcow2', '1M');
  io(dir, 'badl2.qcow2', 'qcow2', 'write -P 0x98 0 256k', 'write -P 0x99 512k 64k');
  {
    const fd = openSync(join(dir, 'badl2.qcow2'), 'r+');
    try {
      const l1 = Number(u64(fd, 40));
      const l2 = Number(u64(fd, l1) & 0x00fffffffffffe00n);
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(u64(fd, l2 + 8) | 0x200n);
      writeSync(fd, b, 0, 8, l2 + 8);
    } finally {
      closeSync(fd);
    }
  }

  // 4 KiB clusters (an L2 table maps 2 MiB): data in each 2 MiB, the L1 entry for [4M, 6M) bad.
  img(dir, 'create', '-f', 'qcow2', '-o', 'cluster_size=4k', 'badl1late.qcow2', '6M');
  io(dir, 'badl1late.qcow2', 'qcow2', 'write -P 0x95 0 64k', 'write -P 0x96 2M 64k', 'write -P 0x97 4M 64k');
  {
    const fd = openSync(join(dir, 'badl1late.qcow2'), 'r+');
    try {
      const l1 = Number(u64(fd, 40));
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE((u64(fd, l1 + 16) & 0x00fffffffffffe00n) | 0x8000000000000000n | 0x200n);
      writeSync(fd, b, 0, 8, l1 + 16);
    } finally {
      closeSync(fd);
    }
  }

  // Existing targets for -n.
  img(dir, 'create', '-f', 'qcow2', 'tgt4m.qcow2', '4M');
  img(dir, 'create', '-f', 'qcow2', 'tgt1m.qcow2', '1M');
  img(dir, 'create', '-f', 'raw', 'tgt8m.raw', '8M');
  img(dir, 'create', '-f', 'qcow2', 'dirty.qcow2', '4M');
  io(dir, 'dirty.qcow2', 'qcow2', 'write -P 0xee 0 4M');
  // Targets that hold data, compressed clusters, a zero cluster and holes, for -n: the
  // clusters that zero writes free are punched out of the file by qemu (discard=unmap).
  const FILL = ['write -P 0x61 0 3M', 'write -c -P 0x62 3M 64k', 'write -c -P 0x63 3136k 64k', 'write -z 3328k 64k', 'write -P 0x64 6M 2M'];
  img(dir, 'create', '-f', 'qcow2', 'filled.qcow2', '8M');
  io(dir, 'filled.qcow2', 'qcow2', ...FILL);
  img(dir, 'create', '-f', 'qcow2', '-o', 'extended_l2=on', 'filledx.qcow2', '8M');
  io(dir, 'filledx.qcow2', 'qcow2', ...FILL);
  // An external data file named as the case directories will have it (`out.data`).
  img(dir, 'create', '-f', 'qcow2', '-o', 'data_file=out.data', 'filleddf.qcow2', '8M');
  // (no compressed clusters: an image with a data file cannot have them)
  io(dir, 'filleddf.qcow2', 'qcow2', ...FILL.filter((w) => !w.includes(' -c ')));
  return dir;
}
