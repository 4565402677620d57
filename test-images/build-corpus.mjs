#!/usr/bin/env node
/**
 * Builds the test-image corpus with the real qemu-img and qemu-io (QEMU 7.2) into a directory,
 * and writes `manifest.json` describing every image in it.
 *
 *   node test-images/build-corpus.mjs OUTDIR
 *
 * Plain Node ESM with no dependencies, so it runs without a build step. Every byte written is
 * deterministic: data comes from fixed `-P` patterns and from two source files generated with a
 * seeded PRNG (`write -s`), so two builds have the same guest contents (qcow2 snapshot
 * timestamps and the like differ, guest data does not). All qemu commands run with OUTDIR as the
 * working directory and relative names, so backing-file and data-file names stored in the images
 * stay valid when the directory is moved — except the external data-file names, which are
 * absolute (see dataFileImages). See docs/test-images.md.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { prng } from './prng.mjs';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

/** Manifest format version; bump when fields change meaning. */
export const MANIFEST_VERSION = 1;

/** Name of the directory (inside OUTDIR) holding the generated `write -s` sources while building. */
const SRC_DIR = '.src';
/** Compressible, non-uniform bytes (16 letters, ~4 bits of entropy per byte): qemu really compresses these. */
const TEXT = `${SRC_DIR}/text.bin`;
/** Incompressible bytes: `write -c` and `convert -c` store these clusters uncompressed. */
const NOISE = `${SRC_DIR}/noise.bin`;
const TEXT_SIZE = 1 * MiB;
const NOISE_SIZE = 256 * KiB;


function makeSources(out) {
  mkdirSync(join(out, SRC_DIR), { recursive: true });
  const t = Buffer.alloc(TEXT_SIZE);
  const r1 = prng(0x7e57_1a6e);
  for (let i = 0; i < t.length; i++) t[i] = 0x61 + (r1() >>> 28);
  writeFileSync(join(out, TEXT), t);
  const n = Buffer.alloc(NOISE_SIZE);
  const r2 = prng(0x0d15_ea5e);
  for (let i = 0; i < n.length; i += 4) n.writeUInt32LE(r2(), i);
  writeFileSync(join(out, NOISE), n);
}

/** Runs a command in `cwd`; throws with its output when it fails (qemu-io exits 1 if any -c failed). */
function sh(cwd, cmd, args) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (status ${r.status}):\n${r.stdout}${r.stderr}`);
  }
  return r.stdout;
}

/**
 * A varied write sequence for a qcow2 image with cluster size `c`: data straddling cluster
 * boundaries at odd offsets and lengths, compressed clusters (one later partially overwritten),
 * zero writes with and without unmapping (whole and partial clusters), a discard, and data in the
 * last bytes of the image. Needs an image of at least `opsSize(c)` bytes.
 */
function standardOps(c, size, { compress = true } = {}) {
  const big = Math.min(3 * c + 100, 200 * KiB);
  const cmds = [
    `write -s ${TEXT} 0 ${big}`,
    `write -P 0x33 ${5 * c - 7} 15`,
    `write -s ${TEXT} ${4 * c - 300} 700`,
    `write -s ${NOISE} ${7 * c + 1} ${Math.min(c, 64 * KiB) + 3}`,
    // Zero writes over data: whole clusters (kept allocated / unmapped) and a partial one.
    `write -z ${c} ${c}`,
    `write -z -u ${2 * c} ${c}`,
    `write -z 50 100`,
    // Zero writes where nothing was allocated.
    `write -z ${15 * c} ${c}`,
    `write -z -u ${16 * c} ${c}`,
    `write -P 0x44 ${12 * c} ${2 * c}`,
    `discard ${12 * c} ${c}`,
    `write -P 0x55 ${size - 1000} 1000`,
  ];
  if (compress) {
    // Large clusters get a compressed uniform pattern, to keep the corpus small.
    const src = c <= 64 * KiB ? `-s ${TEXT}` : '-P 0x77';
    cmds.push(`write -c ${src} ${10 * c} ${2 * c}`, `write -c ${src} ${14 * c} ${c}`, `write -P 0x66 ${14 * c + 10} 20`);
  } else {
    cmds.push(`write -s ${TEXT} ${10 * c + 3} ${Math.min(2 * c, 128 * KiB)}`);
  }
  return cmds;
}

/** Smallest image size that {@link standardOps} fits in, for cluster size `c`. */
function opsSize(c) {
  return Math.max(2 * MiB, 20 * c);
}

/** The corpus builder: keeps OUTDIR and the manifest being built. */
class Builder {
  constructor(out) {
    this.out = out;
    /** @type {object[]} */
    this.images = [];
  }
  img(...args) {
    return sh(this.out, 'qemu-img', args);
  }
  /** Runs qemu-io commands on `file` (opened with format `fmt`), all in one process. */
  io(file, fmt, cmds, extra = []) {
    if (cmds.length === 0) return '';
    return sh(this.out, 'qemu-io', ['-f', fmt, ...extra, ...cmds.flatMap((c) => ['-c', c]), file]);
  }
  create(file, fmt, size, opts = [], extra = []) {
    const o = opts.length ? ['-o', opts.join(',')] : [];
    this.img('create', '-q', '-f', fmt, ...o, ...extra, file, String(size));
  }
  /**
   * Records an image in the manifest. `entry`: `file`, `format`, `description`, and optionally
   * `tags`, `backing` ({file, format}), `dataFile`, `check` (false: `qemu-img check` is expected
   * to complain), `huge` (too big to read whole: read the allocated ranges only).
   */
  add(entry) {
    this.images.push({ tags: [], ...entry });
  }
}

/** Creates a qcow2 image, runs qemu-io commands on it and records it. */
function qcow2(b, file, { size, opts = [], cmds = [], description, tags = [], ...rest }) {
  b.create(file, 'qcow2', size, opts);
  b.io(file, 'qcow2', cmds);
  b.add({ file, format: 'qcow2', description, tags, ...rest });
}

function rawImages(b) {
  b.create('raw-sparse.raw', 'raw', 16 * MiB);
  b.io('raw-sparse.raw', 'raw', [
    `write -s ${TEXT} 0 ${64 * KiB}`,
    `write -P 0x11 ${MiB + 513} 3000`,
    `write -s ${NOISE} ${5 * MiB + 1} 70000`,
    `write -z ${10 * KiB} ${4 * KiB}`,
    `write -P 0xfe ${16 * MiB - 777} 777`,
  ]);
  b.add({ file: 'raw-sparse.raw', format: 'raw', description: 'sparse raw: a few writes at odd offsets, holes elsewhere', tags: ['raw', 'sparse'] });

  b.create('raw-dense.raw', 'raw', 4 * MiB, ['preallocation=full']);
  b.io('raw-dense.raw', 'raw', [
    `write -s ${TEXT} 0 ${MiB}`,
    `write -s ${TEXT} ${MiB} ${MiB}`,
    `write -P 0x5a ${2 * MiB} ${2 * MiB}`,
    `write -s ${NOISE} ${3 * MiB + 7} 100000`,
  ]);
  b.add({ file: 'raw-dense.raw', format: 'raw', description: 'fully allocated raw (preallocation=full), every byte written', tags: ['raw', 'preallocation'] });

  // qemu sizes block devices in 512-byte sectors: this 100001-byte file is a 100352-byte image
  // (qemu-img info and convert say so) whose tail past the end of the file reads as zeroes.
  const odd = Buffer.from(readFileSync(join(b.out, TEXT)).subarray(0, 100_001));
  odd.fill(0, 40_000, 60_000);
  writeFileSync(join(b.out, 'raw-odd-size.raw'), odd);
  b.add({ file: 'raw-odd-size.raw', format: 'raw', description: 'raw file of 100001 bytes: qemu rounds its size up to 100352 (a multiple of 512)', tags: ['raw', 'odd-size'] });

  // Source for the convert-made images: text, a zero run, incompressible noise, a uniform run.
  b.create('raw-mixed.raw', 'raw', 4 * MiB);
  b.io('raw-mixed.raw', 'raw', [
    `write -s ${TEXT} 0 ${512 * KiB}`,
    `write -s ${NOISE} ${MiB} ${256 * KiB}`,
    `write -P 0x99 ${MiB + 512 * KiB} ${512 * KiB}`,
    `write -s ${TEXT} ${3 * MiB + 12345} 100000`,
    `write -P 0x01 ${4 * MiB - 4096} 4096`,
  ]);
  b.add({ file: 'raw-mixed.raw', format: 'raw', description: 'raw mix of compressible text, zeroes, noise and a uniform run (source of the convert images)', tags: ['raw'] });
}

function versionImages(b) {
  const size = 8 * MiB;
  for (const [file, compat, tag] of [['qcow2-v2.qcow2', '0.10', 'v2'], ['qcow2-v3.qcow2', '1.1', 'v3']]) {
    qcow2(b, file, {
      size,
      opts: [`compat=${compat}`],
      cmds: standardOps(64 * KiB, size),
      description: `qcow2 compat=${compat}: odd writes, compressed clusters, zero writes, discard`,
      tags: [tag, 'compressed-zlib', 'zero-writes', 'discard'],
    });
  }
}

function clusterImages(b) {
  for (const [name, c] of [['512', 512], ['4k', 4 * KiB], ['64k', 64 * KiB]]) {
    const size = opsSize(c);
    qcow2(b, `cluster-${name}.qcow2`, {
      size,
      opts: [`cluster_size=${c}`],
      cmds: standardOps(c, size),
      description: `qcow2 v3, cluster_size=${c}: odd writes, compressed clusters, zero writes, discard`,
      tags: ['v3', 'cluster-size', 'compressed-zlib', 'zero-writes', 'discard'],
    });
  }
  // Every touched 2 MiB cluster costs 2 MiB of file, so this one gets a short list of its own.
  const c = 2 * MiB;
  qcow2(b, 'cluster-2M.qcow2', {
    size: 9 * MiB,
    opts: [`cluster_size=${c}`],
    cmds: [
      `write -s ${TEXT} 0 ${100 * KiB}`,
      `write -P 0x33 ${c - 7} 15`,
      `write -z 50 100`,
      `write -z -u ${c + 4 * KiB} ${4 * KiB}`,
      `write -z ${2 * c} ${c}`,
      `write -c -P 0x77 ${3 * c} ${c}`,
      `write -P 0x55 ${9 * MiB - 1000} 1000`,
    ],
    description: 'qcow2 v3, cluster_size=2097152: odd writes, a compressed cluster, zero writes; the last cluster is cut short by the image end',
    tags: ['v3', 'cluster-size', 'compressed-zlib', 'zero-writes'],
  });
}

function refcountImages(b) {
  const c = 4 * KiB;
  const size = opsSize(c);
  for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
    const file = `refcount-${bits}.qcow2`;
    b.create(file, 'qcow2', size, [`refcount_bits=${bits}`, `cluster_size=${c}`]);
    const ops = standardOps(c, size);
    b.io(file, 'qcow2', ops.slice(0, 6));
    // One-bit refcounts cannot count a snapshot's second reference; wider ones get one.
    const snapshots = bits >= 2 ? ['s1'] : [];
    if (bits >= 2) b.img('snapshot', '-c', 's1', file);
    b.io(file, 'qcow2', ops.slice(6));
    b.add({
      file,
      format: 'qcow2',
      description: `qcow2 refcount_bits=${bits}, 4 KiB clusters${bits >= 2 ? ', one snapshot taken mid-way' : ''}`,
      tags: ['v3', 'refcount-bits', 'compressed-zlib', ...(bits >= 2 ? ['snapshots'] : [])],
      expectSnapshots: snapshots,
    });
  }
}

function extendedL2Images(b) {
  const sub64 = [
    `write -P 0x11 0 ${2 * KiB}`,
    `write -P 0x12 ${6 * KiB} ${2 * KiB}`,
    `write -P 0x13 ${64 * KiB + 1000} 3000`,
    `write -s ${TEXT} ${128 * KiB} ${64 * KiB}`,
    `write -z ${130 * KiB} ${4 * KiB}`,
    `write -z -u ${136 * KiB} ${2 * KiB}`,
    `write -z ${256 * KiB + 2 * KiB} ${4 * KiB}`,
    `write -z -u ${320 * KiB} ${64 * KiB}`,
    `discard ${140 * KiB} ${2 * KiB}`,
    `write -c -s ${TEXT} ${512 * KiB} ${64 * KiB}`,
    `write -P 0x14 ${512 * KiB + 3 * KiB} 100`,
    `write -c -s ${TEXT} ${576 * KiB} ${64 * KiB}`,
    `write -s ${NOISE} ${MiB - 5000} 10000`,
    `write -P 0x15 ${4 * MiB - 2 * KiB} ${2 * KiB}`,
  ];
  qcow2(b, 'extl2-64k.qcow2', {
    size: 4 * MiB,
    opts: ['extended_l2=on', 'cluster_size=65536'],
    cmds: sub64,
    description: 'extended L2 entries, 64 KiB clusters (2 KiB subclusters): subcluster data, zero and discard writes, a compressed cluster',
    tags: ['v3', 'extended-l2', 'compressed-zlib', 'zero-writes', 'discard'],
  });

  qcow2(b, 'extl2-16k.qcow2', {
    size: 2 * MiB,
    opts: ['extended_l2=on', 'cluster_size=16384'],
    cmds: [
      `write -P 0x21 512 512`,
      `write -P 0x22 ${16 * KiB - 700} 1400`,
      `write -s ${TEXT} ${64 * KiB} ${32 * KiB}`,
      `write -z ${64 * KiB + 1024} 1024`,
      `write -z -u ${64 * KiB + 4096} 2048`,
      `write -z ${128 * KiB} 512`,
      `discard ${80 * KiB} 512`,
      `write -P 0x23 ${2 * MiB - 513} 513`,
    ],
    description: 'extended L2 entries, 16 KiB clusters (512-byte subclusters)',
    tags: ['v3', 'extended-l2', 'zero-writes', 'discard'],
  });

  // Unallocated subclusters of the top read through to the backing image; zero ones hide it.
  b.create('extl2-base.qcow2', 'qcow2', 2 * MiB);
  b.io('extl2-base.qcow2', 'qcow2', [`write -s ${TEXT} 0 ${MiB}`, `write -P 0xb0 ${MiB} ${MiB}`]);
  b.add({ file: 'extl2-base.qcow2', format: 'qcow2', description: 'backing of extl2-backing.qcow2: every byte written', tags: ['v3'] });
  b.create('extl2-backing.qcow2', 'qcow2', 2 * MiB, ['extended_l2=on'], ['-b', 'extl2-base.qcow2', '-F', 'qcow2']);
  b.io('extl2-backing.qcow2', 'qcow2', [
    `write -P 0xe1 ${2 * KiB} ${2 * KiB}`,
    `write -P 0xe2 ${64 * KiB + 100} 300`,
    `write -z ${128 * KiB + 4 * KiB} ${2 * KiB}`,
    `write -z -u ${192 * KiB} ${6 * KiB}`,
    `discard ${256 * KiB} ${64 * KiB}`,
    `write -P 0xe3 ${MiB + 30 * KiB} ${40 * KiB}`,
  ]);
  b.add({
    file: 'extl2-backing.qcow2',
    format: 'qcow2',
    description: 'extended L2 over a qcow2 backing file: partial clusters read through unallocated subclusters, zero subclusters hide the backing',
    tags: ['v3', 'extended-l2', 'backing', 'zero-writes', 'discard'],
    backing: { file: 'extl2-base.qcow2', format: 'qcow2' },
  });
}

function lazyImages(b) {
  const size = opsSize(64 * KiB);
  qcow2(b, 'lazy-refcounts.qcow2', {
    size,
    opts: ['lazy_refcounts=on'],
    cmds: standardOps(64 * KiB, size),
    description: 'lazy_refcounts=on, closed cleanly',
    tags: ['v3', 'lazy-refcounts', 'compressed-zlib'],
  });
  // `abort` kills qemu-io before it clears the dirty bit: refcounts are stale, data is not.
  b.create('lazy-dirty.qcow2', 'qcow2', size, ['lazy_refcounts=on']);
  const r = spawnSync(
    'qemu-io',
    ['-f', 'qcow2', '-c', `write -s ${TEXT} 0 ${200 * KiB}`, '-c', `write -P 0x42 ${MiB + 3} 5000`, '-c', 'abort', 'lazy-dirty.qcow2'],
    { cwd: b.out, encoding: 'utf8' },
  );
  if (r.status === 0) throw new Error('qemu-io abort unexpectedly exited 0');
  b.add({
    file: 'lazy-dirty.qcow2',
    format: 'qcow2',
    description: 'lazy_refcounts=on, qemu-io aborted after writes: dirty bit set, refcounts stale',
    tags: ['v3', 'lazy-refcounts', 'dirty'],
    check: false,
    dirty: true,
  });
}

function compressedImages(b) {
  b.img('convert', '-c', '-f', 'raw', '-O', 'qcow2', 'raw-mixed.raw', 'compressed-zlib.qcow2');
  b.add({ file: 'compressed-zlib.qcow2', format: 'qcow2', description: 'convert -c from raw-mixed.raw (zlib); noise clusters stored uncompressed', tags: ['v3', 'compressed-zlib'] });
  b.img('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd', 'raw-mixed.raw', 'compressed-zstd.qcow2');
  b.add({ file: 'compressed-zstd.qcow2', format: 'qcow2', description: 'convert -c -o compression_type=zstd from raw-mixed.raw', tags: ['v3', 'compressed-zstd'] });
  b.img('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096,compression_type=zstd', 'raw-mixed.raw', 'compressed-zstd-4k.qcow2');
  b.add({ file: 'compressed-zstd-4k.qcow2', format: 'qcow2', description: 'convert -c zstd with 4 KiB clusters (compressed data crosses host cluster boundaries)', tags: ['v3', 'compressed-zstd', 'cluster-size'] });
  b.img('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=512', 'raw-mixed.raw', 'compressed-zlib-512.qcow2');
  b.add({ file: 'compressed-zlib-512.qcow2', format: 'qcow2', description: 'convert -c zlib with 512-byte clusters', tags: ['v3', 'compressed-zlib', 'cluster-size'] });

  for (const type of ['zlib', 'zstd']) {
    const file = `compressed-${type}-io.qcow2`;
    qcow2(b, file, {
      size: 2 * MiB,
      opts: [`compression_type=${type}`],
      cmds: [
        `write -c -s ${TEXT} 0 ${256 * KiB}`,
        `write -c -s ${NOISE} ${256 * KiB} ${64 * KiB}`,
        `write -c -P 0xc0 ${512 * KiB} ${64 * KiB}`,
        `write -P 0xc1 ${64 * KiB + 1} 777`,
        `write -z ${128 * KiB} ${64 * KiB}`,
        `discard ${192 * KiB} ${64 * KiB}`,
        `write -c -s ${TEXT} ${2 * MiB - 64 * KiB} ${64 * KiB}`,
      ],
      description: `qemu-io write -c (${type}): compressed clusters, one partially overwritten, one zeroed, one discarded, incompressible data`,
      tags: ['v3', `compressed-${type}`, 'zero-writes', 'discard'],
    });
  }
}

function zeroImages(b) {
  qcow2(b, 'zeroes.qcow2', {
    size: 4 * MiB,
    cmds: [
      `write -s ${TEXT} 0 ${MiB}`,
      `write -z ${64 * KiB} ${64 * KiB}`,
      `write -z -u ${192 * KiB} ${128 * KiB}`,
      `write -z 300000 5000`,
      `write -z ${2 * MiB} ${64 * KiB}`,
      `write -z -u ${2 * MiB + 128 * KiB} ${64 * KiB}`,
      `discard ${512 * KiB} ${128 * KiB}`,
      `discard 700001 1000`,
      `write -P 0x7a ${3 * MiB} ${64 * KiB}`,
      `write -z ${3 * MiB} ${64 * KiB}`,
      `write -P 0x7b ${3 * MiB + 10} 10`,
    ],
    description: 'zero writes over data and over nothing, with and without -u, partial zero writes, discards',
    tags: ['v3', 'zero-writes', 'discard'],
  });

  b.create('zeroes-base.qcow2', 'qcow2', 2 * MiB);
  b.io('zeroes-base.qcow2', 'qcow2', [`write -P 0xbb 0 ${2 * MiB}`]);
  b.add({ file: 'zeroes-base.qcow2', format: 'qcow2', description: 'backing of zeroes-over-backing.qcow2: all 0xbb', tags: ['v3'] });
  b.create('zeroes-over-backing.qcow2', 'qcow2', 2 * MiB, [], ['-b', 'zeroes-base.qcow2', '-F', 'qcow2']);
  b.io('zeroes-over-backing.qcow2', 'qcow2', [
    `write -z 0 ${64 * KiB}`,
    `write -z -u ${128 * KiB} ${64 * KiB}`,
    `write -z ${256 * KiB + 100} 1000`,
    `discard ${512 * KiB} ${128 * KiB}`,
    `write -P 0xcc ${MiB} ${64 * KiB}`,
    `write -z ${MiB + 4 * KiB} ${4 * KiB}`,
  ]);
  b.add({
    file: 'zeroes-over-backing.qcow2',
    format: 'qcow2',
    description: 'zero writes and discards over a fully written backing file: zero clusters must hide the backing data',
    tags: ['v3', 'backing', 'zero-writes', 'discard'],
    backing: { file: 'zeroes-base.qcow2', format: 'qcow2' },
  });

  // v2 cannot store zero clusters: qemu writes zeroes (or deallocates) to hide the backing data.
  b.create('zeroes-v2-over-backing.qcow2', 'qcow2', 2 * MiB, ['compat=0.10'], ['-b', 'zeroes-base.qcow2', '-F', 'qcow2']);
  b.io('zeroes-v2-over-backing.qcow2', 'qcow2', [
    `write -z 0 ${64 * KiB}`,
    `write -z -u ${128 * KiB} ${64 * KiB}`,
    `write -z ${256 * KiB + 100} 1000`,
    `discard ${512 * KiB} ${128 * KiB}`,
    `write -P 0xcd ${MiB - 10} 20`,
  ]);
  b.add({
    file: 'zeroes-v2-over-backing.qcow2',
    format: 'qcow2',
    description: 'compat=0.10 over a fully written backing file: zero writes and a discard (v2 has no zero flag)',
    tags: ['v2', 'backing', 'zero-writes', 'discard'],
    backing: { file: 'zeroes-base.qcow2', format: 'qcow2' },
  });

  // amend to compat=0.10 has to turn v3 zero clusters into something v2 can express.
  b.create('amended-v2.qcow2', 'qcow2', 2 * MiB);
  b.io('amended-v2.qcow2', 'qcow2', [`write -s ${TEXT} 0 ${512 * KiB}`, `write -z ${64 * KiB} ${128 * KiB}`, `write -z ${MiB} ${64 * KiB}`]);
  b.img('amend', '-f', 'qcow2', '-o', 'compat=0.10', 'amended-v2.qcow2');
  b.add({ file: 'amended-v2.qcow2', format: 'qcow2', description: 'v3 image with zero clusters, amended to compat=0.10', tags: ['v2', 'amend', 'zero-writes'] });

  b.img('convert', '-f', 'raw', '-O', 'qcow2', 'raw-mixed.raw', 'converted.qcow2');
  b.add({ file: 'converted.qcow2', format: 'qcow2', description: 'plain convert -O qcow2 of raw-mixed.raw (zero runs left unallocated)', tags: ['v3'] });
}

function oddImages(b) {
  const cmds = [];
  const points = [[1, 1], [511, 2], [4095, 3], [65535, 2], [65537, 131071], [MiB - 1, 1], [MiB + 7, 65536 * 3 - 14], [3 * MiB - 333, 666]];
  points.forEach(([off, len], i) => cmds.push(`write -P 0x${(0x80 + i).toString(16)} ${off} ${len}`));
  cmds.push(`write -s ${TEXT} 2001 30000`, `write -s ${NOISE} 1234567 54321`, `write -P 0x8f 40000 5`);
  qcow2(b, 'odd-offsets.qcow2', {
    size: 3 * MiB + 512,
    cmds,
    description: 'overlapping writes at odd offsets and lengths; virtual size not a multiple of the cluster size',
    tags: ['v3', 'odd-offsets'],
  });
}

function preallocImages(b) {
  for (const mode of ['metadata', 'falloc', 'full']) {
    const size = opsSize(64 * KiB);
    qcow2(b, `prealloc-${mode}.qcow2`, {
      size,
      opts: [`preallocation=${mode}`],
      // Compressed writes need unallocated clusters: qemu refuses them here.
      cmds: standardOps(64 * KiB, size, { compress: false }),
      description: `preallocation=${mode}, then the standard writes (no compressed ones)`,
      tags: ['v3', 'preallocation'],
    });
  }
}

function dataFileImages(b) {
  const size = opsSize(64 * KiB);
  // qemu 7.2 opens a relative data file name relative to its working directory, not to the
  // image, so the names are stored absolute: the images then open from anywhere (but the corpus
  // directory cannot be moved).
  qcow2(b, 'data-file.qcow2', {
    size,
    opts: [`data_file=${join(b.out, 'data-file.data')}`],
    cmds: standardOps(64 * KiB, size, { compress: false }),
    description: 'external data file (data-file.data), data_file_raw=off',
    tags: ['v3', 'data-file'],
    dataFile: 'data-file.data',
  });
  qcow2(b, 'data-file-raw.qcow2', {
    size,
    opts: [`data_file=${join(b.out, 'data-file-raw.data')}`, 'data_file_raw=on'],
    cmds: standardOps(64 * KiB, size, { compress: false }),
    description: 'external data file (data-file-raw.data) with data_file_raw=on',
    tags: ['v3', 'data-file', 'data-file-raw'],
    dataFile: 'data-file-raw.data',
  });
}

function snapshotImages(b) {
  for (const [file, compat, tag] of [['snapshots.qcow2', '1.1', 'v3'], ['snapshots-v2.qcow2', '0.10', 'v2']]) {
    b.create(file, 'qcow2', 4 * MiB, [`compat=${compat}`]);
    b.io(file, 'qcow2', [`write -s ${TEXT} 0 ${300 * KiB}`, `write -P 0x01 ${MiB + 5} 1000`]);
    b.img('snapshot', '-c', 'first', file);
    b.io(file, 'qcow2', [`write -P 0x02 ${64 * KiB + 17} 100000`, `write -c -s ${TEXT} ${2 * MiB} ${128 * KiB}`, `write -z ${256 * KiB} ${64 * KiB}`]);
    b.img('snapshot', '-c', 'doomed', file);
    b.io(file, 'qcow2', [`write -P 0x03 ${3 * MiB} ${64 * KiB}`]);
    b.img('snapshot', '-c', 'second', file);
    b.img('snapshot', '-d', 'doomed', file);
    b.io(file, 'qcow2', [`write -P 0x04 ${2 * MiB + 1000} 3000`, `discard 0 ${128 * KiB}`, `write -s ${NOISE} ${4 * MiB - 50000} 50000`]);
    b.add({
      file,
      format: 'qcow2',
      description: `internal snapshots (compat=${compat}): writes before and after each, one snapshot deleted`,
      tags: [tag, 'snapshots', 'compressed-zlib'],
      expectSnapshots: ['first', 'second'],
    });
  }
}

function bitmapImages(b) {
  const f = 'bitmaps.qcow2';
  b.create(f, 'qcow2', 4 * MiB);
  b.img('bitmap', '--add', f, 'b0');
  b.io(f, 'qcow2', [`write -s ${TEXT} 0 ${128 * KiB}`]);
  b.img('bitmap', '--add', '--disable', '-g', '128k', f, 'b1');
  b.io(f, 'qcow2', [`write -P 0x10 ${MiB} ${64 * KiB}`]);
  b.img('bitmap', '--enable', f, 'b1');
  b.img('bitmap', '--add', '-g', '512', f, 'b2');
  b.io(f, 'qcow2', [`write -P 0x11 ${2 * MiB + 3} 5000`, `write -P 0x12 ${4 * MiB - 512} 512`]);
  b.img('bitmap', '--disable', f, 'b2');
  b.io(f, 'qcow2', [`write -P 0x13 ${3 * MiB} 4096`]);
  b.add({ file: f, format: 'qcow2', description: 'persistent dirty bitmaps b0 (enabled), b1 (added disabled, enabled later, 128 KiB granularity), b2 (512-byte granularity, disabled later)', tags: ['v3', 'bitmaps'] });
}

function chainImages(b) {
  b.create('chain-base.raw', 'raw', 4 * MiB);
  b.io('chain-base.raw', 'raw', [`write -s ${TEXT} 0 ${256 * KiB}`, `write -P 0x01 ${MiB} ${64 * KiB}`, `write -P 0x0b ${4 * MiB - 1000} 1000`]);
  b.add({ file: 'chain-base.raw', format: 'raw', description: 'bottom of the 3-deep chain (raw, 4 MiB)', tags: ['raw', 'chain'] });

  b.create('chain-mid.qcow2', 'qcow2', 6 * MiB, [], ['-b', 'chain-base.raw', '-F', 'raw']);
  b.io('chain-mid.qcow2', 'qcow2', [
    `write -P 0x02 ${64 * KiB} ${64 * KiB}`,
    `write -P 0x22 ${3 * MiB + 512 * KiB + 100} 1000`,
    `write -P 0x2b ${4 * MiB - 200} 400`,
    `write -s ${NOISE} ${5 * MiB} ${64 * KiB}`,
  ]);
  b.add({ file: 'chain-mid.qcow2', format: 'qcow2', description: 'middle of the chain: qcow2 (6 MiB) over chain-base.raw (4 MiB)', tags: ['v3', 'chain', 'backing'], backing: { file: 'chain-base.raw', format: 'raw' } });

  b.create('chain-top.qcow2', 'qcow2', 8 * MiB, [], ['-b', 'chain-mid.qcow2', '-F', 'qcow2']);
  b.io('chain-top.qcow2', 'qcow2', [
    `write -P 0x03 ${32 * KiB + 7} 70000`,
    `write -z ${MiB + 16 * KiB} ${16 * KiB}`,
    `write -P 0x33 ${6 * MiB - 100} 200`,
    `write -P 0x3e ${7 * MiB} ${64 * KiB}`,
  ]);
  b.add({ file: 'chain-top.qcow2', format: 'qcow2', description: 'top of the chain: qcow2 (8 MiB) over chain-mid.qcow2 over chain-base.raw, data at each level, each backing shorter', tags: ['v3', 'chain', 'backing', 'zero-writes'], backing: { file: 'chain-mid.qcow2', format: 'qcow2' } });
}

function resizeImages(b) {
  b.create('shrunk.qcow2', 'qcow2', 16 * MiB);
  b.io('shrunk.qcow2', 'qcow2', [`write -s ${TEXT} 0 ${100 * KiB}`, `write -P 0x61 ${6 * MiB} ${2 * MiB + 64 * KiB}`, `write -P 0x62 ${12 * MiB} ${64 * KiB}`, `write -P 0x63 ${15 * MiB} ${MiB}`]);
  b.img('resize', '-q', '--shrink', 'shrunk.qcow2', String(7 * MiB + 512));
  b.io('shrunk.qcow2', 'qcow2', [`write -P 0x64 ${7 * MiB - 300} 812`]);
  b.add({ file: 'shrunk.qcow2', format: 'qcow2', description: 'written across 16 MiB, then resize --shrink to 7 MiB + 512 (cuts a cluster in half)', tags: ['v3', 'resize'] });

  b.create('grown.qcow2', 'qcow2', 4 * MiB, ['cluster_size=4096']);
  b.io('grown.qcow2', 'qcow2', [`write -s ${TEXT} 0 ${64 * KiB}`, `write -P 0x71 ${4 * MiB - 100} 100`]);
  b.img('resize', '-q', 'grown.qcow2', String(40 * MiB));
  b.io('grown.qcow2', 'qcow2', [`write -P 0x72 ${4 * MiB - 50} 4000`, `write -P 0x73 ${39 * MiB} ${64 * KiB}`]);
  b.add({ file: 'grown.qcow2', format: 'qcow2', description: '4 KiB clusters, grown from 4 MiB to 40 MiB (L1 table grows and moves), written on both sides of the old end', tags: ['v3', 'resize'] });

  b.create('grown-falloc.qcow2', 'qcow2', 2 * MiB);
  b.io('grown-falloc.qcow2', 'qcow2', [`write -P 0x74 0 ${64 * KiB}`]);
  b.img('resize', '-q', '--preallocation=falloc', 'grown-falloc.qcow2', String(4 * MiB));
  b.io('grown-falloc.qcow2', 'qcow2', [`write -P 0x75 ${3 * MiB} 1000`]);
  b.add({ file: 'grown-falloc.qcow2', format: 'qcow2', description: 'grown from 2 to 4 MiB with --preallocation=falloc', tags: ['v3', 'resize', 'preallocation'] });

  b.create('raw-shrunk.raw', 'raw', 4 * MiB);
  b.io('raw-shrunk.raw', 'raw', [`write -P 0x76 0 ${4 * MiB}`]);
  b.img('resize', '-q', '-f', 'raw', '--shrink', 'raw-shrunk.raw', String(MiB + 512));
  b.add({ file: 'raw-shrunk.raw', format: 'raw', description: 'raw, written whole then shrunk to 1 MiB + 512', tags: ['raw', 'resize'] });
}

/** Header extension type no qemu knows; qemu must ignore (and keep) it. */
export const UNKNOWN_EXTENSION_TYPE = 0x7e57_0000 + 0xabc;

/**
 * Inserts a header extension of an unknown type in front of the existing ones. The image must
 * have no backing file (its name would sit right after the extensions).
 */
function insertUnknownExtension(path) {
  const fd = openSync(path, 'r+');
  try {
    const head = Buffer.alloc(4096);
    readSync(fd, head, 0, head.length, 0);
    const version = head.readUInt32BE(4);
    if (version !== 3) throw new Error(`unknown-ext: expected a v3 image, got version ${version}`);
    if (head.readBigUInt64BE(8) !== 0n) throw new Error('unknown-ext: image has a backing file');
    const headerLength = head.readUInt32BE(100);
    let end = headerLength;
    for (;;) {
      const type = head.readUInt32BE(end);
      const len = head.readUInt32BE(end + 4);
      end += 8;
      if (type === 0) break;
      end += (len + 7) & ~7;
    }
    const payload = Buffer.from('tsimg test: qemu must ignore and preserve this extension!', 'ascii'); // 57 bytes: padded
    const ext = Buffer.alloc(8 + ((payload.length + 7) & ~7));
    ext.writeUInt32BE(UNKNOWN_EXTENSION_TYPE, 0);
    ext.writeUInt32BE(payload.length, 4);
    payload.copy(ext, 8);
    const rest = head.subarray(headerLength, end);
    const out = Buffer.concat([ext, rest]);
    if (headerLength + out.length > 4096) throw new Error('unknown-ext: extensions do not fit');
    writeSync(fd, out, 0, out.length, headerLength);
  } finally {
    closeSync(fd);
  }
}

function headerImages(b) {
  b.create('unknown-ext.qcow2', 'qcow2', 2 * MiB);
  b.io('unknown-ext.qcow2', 'qcow2', [`write -s ${TEXT} 0 ${100 * KiB}`]);
  insertUnknownExtension(join(b.out, 'unknown-ext.qcow2'));
  // Writing afterwards proves qemu accepts the image; a cluster allocation rewrites nothing in the header.
  b.io('unknown-ext.qcow2', 'qcow2', [`write -P 0xee ${MiB + 1} 1000`]);
  b.add({ file: 'unknown-ext.qcow2', format: 'qcow2', description: `an unknown header extension (type 0x${UNKNOWN_EXTENSION_TYPE.toString(16)}, 57 bytes) before the feature table`, tags: ['v3', 'unknown-extension'] });

  // `write -b` goes to the VM-state area qemu keeps past the end of the disk: an L1 table with
  // more entries than the virtual size needs, mapping data no guest read may return.
  b.create('vmstate.qcow2', 'qcow2', MiB);
  b.io('vmstate.qcow2', 'qcow2', [`write -P 0x31 0 4096`, `write -b -P 0x5a 0 ${64 * KiB}`, `write -P 0x32 ${MiB - 512} 512`]);
  b.add({ file: 'vmstate.qcow2', format: 'qcow2', description: 'VM-state data (qemu-io write -b) stored past the 1 MiB disk: L1 has 2 entries where 1 covers the disk', tags: ['v3', 'vmstate'] });

  // 512-byte clusters: each L2 table maps 32 KiB, so 64 MiB needs a 16 KiB (32-cluster) L1 table.
  qcow2(b, 'large-l1.qcow2', {
    size: 64 * MiB,
    opts: ['cluster_size=512'],
    cmds: [`write -P 0xa1 0 4096`, `write -s ${TEXT} ${33 * MiB + 17} 20000`, `write -P 0xa2 ${64 * MiB - 512} 512`],
    description: '512-byte clusters, 64 MiB: the L1 table spans 32 clusters; sparse',
    tags: ['v3', 'large-l1', 'cluster-size'],
  });

  // 4 TiB: a full-cluster L1 table (8192 entries) and offsets past 2^32 and 2^40.
  qcow2(b, 'huge-sparse.qcow2', {
    size: 4 * TiB,
    cmds: [
      `write -P 0xb1 0 4096`,
      `write -s ${TEXT} ${4 * GiB - 100} 200`,
      `write -P 0xb2 ${TiB + 12345} 1000`,
      `write -P 0xb3 ${4 * TiB - 64 * KiB} ${64 * KiB}`,
    ],
    description: '4 TiB virtual, a few KiB of data: a 64 KiB L1 table, data across the 4 GiB boundary, past 1 TiB and at the very end',
    tags: ['v3', 'large-l1', 'huge'],
    huge: true,
  });
}

/** Fills in virtual size, snapshots and bitmaps from `qemu-img info`, and checks them against what the recipe expects. */
function describe(b, entry) {
  const info = JSON.parse(b.img('info', '--output=json', '-U', '-f', entry.format, entry.file));
  const snapshots = (info.snapshots ?? []).map((s) => s.name);
  const { expectSnapshots = [], ...rest } = entry;
  if (JSON.stringify(snapshots) !== JSON.stringify(expectSnapshots)) {
    throw new Error(`${entry.file}: snapshots ${JSON.stringify(snapshots)}, expected ${JSON.stringify(expectSnapshots)}`);
  }
  const specific = info['format-specific']?.data ?? {};
  const bitmaps = (specific.bitmaps ?? []).map((m) => m.name);
  return {
    file: rest.file,
    format: rest.format,
    description: rest.description,
    virtualSize: info['virtual-size'],
    snapshots,
    ...(bitmaps.length ? { bitmaps } : {}),
    ...(specific['compression-type'] ? { compressionType: specific['compression-type'] } : {}),
    ...(rest.backing ? { backing: rest.backing } : {}),
    ...(rest.dataFile ? { dataFile: rest.dataFile } : {}),
    check: rest.check ?? true,
    dirty: rest.dirty ?? false,
    huge: rest.huge ?? false,
    tags: rest.tags,
  };
}

/**
 * Builds the corpus into `outDir` (created if missing; must not already hold a manifest) and
 * returns the manifest. The manifest is written last, so its presence means a complete build.
 */
export function buildCorpus(outDir) {
  const out = resolve(outDir);
  mkdirSync(out, { recursive: true });
  if (existsSync(join(out, 'manifest.json'))) throw new Error(`${out} already holds a corpus (manifest.json)`);
  const b = new Builder(out);
  makeSources(out);
  rawImages(b);
  versionImages(b);
  clusterImages(b);
  refcountImages(b);
  extendedL2Images(b);
  lazyImages(b);
  compressedImages(b);
  zeroImages(b);
  oddImages(b);
  preallocImages(b);
  dataFileImages(b);
  snapshotImages(b);
  bitmapImages(b);
  chainImages(b);
  resizeImages(b);
  headerImages(b);
  rmSync(join(out, SRC_DIR), { recursive: true, force: true });

  const images = b.images.map((e) => describe(b, e));
  const manifest = {
    version: MANIFEST_VERSION,
    qemuImg: execFileSync('qemu-img', ['--version'], { encoding: 'utf8' }).split('\n')[0],
    images,
  };
  writeFileSync(join(out, 'manifest.json.tmp'), JSON.stringify(manifest, null, 2) + '\n');
  // Rename so that a reader never sees a half-written manifest.
  renameSync(join(out, 'manifest.json.tmp'), join(out, 'manifest.json'));
  return manifest;
}

function main(argv) {
  if (argv.length !== 1 || argv[0].startsWith('-')) {
    process.stderr.write('usage: node test-images/build-corpus.mjs OUTDIR\n');
    return 2;
  }
  const t0 = Date.now();
  const manifest = buildCorpus(argv[0]);
  const files = readdirSync(resolve(argv[0])).length;
  process.stdout.write(`built ${manifest.images.length} images (${files} files) in ${argv[0]} in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  process.exitCode = main(process.argv.slice(2));
}
