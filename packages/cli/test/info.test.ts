/**
 * Cross-checks of `tsimg info` against `qemu-img info` (QEMU 7.2): the same command line on the
 * same image must give the same stdout, the same stderr (with "qemu-img:" read as "tsimg:") and
 * the same exit status, in human and JSON output. Images are made by qemu-img / qemu-io, some
 * then altered by a byte poke (flags, snapshot table entries qemu-img cannot write).
 *
 * Needs `npm run build` first (spawns packages/cli/bin/tsimg.js).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { closeSync, copyFileSync, mkdirSync, openSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { type Qcow2Snapshot } from '@tsimg/qcow2';
import { decodeByteString } from '../../qcow2/src/format/byte-string.js';
import { encodeSnapshotTable, ICOUNT_NONE } from '../../qcow2/src/format/snapshot.js';
import { asTsimg, describeQemu, qemuImg, qemuIo, tempDir, tsimg } from '../../../test-images/qemu.js';

// Snapshot dates print in local time: pin it for both tools (children inherit the environment).
process.env.TZ = 'UTC';

let dir = '';
let cleanup = (): void => {};

/**
 * Runs qemu-img in the image directory (relative names, e.g. data files, land there too);
 * qemuImg runs it again when qemu's PBKDF2 calibration gives up.
 */
function q(...args: string[]): void {
  const r = qemuImg(args.map((a) => a.replaceAll('$DIR/', '')), { cwd: dir });
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')} failed: ${r.stderr}`);
}

function poke(file: string, offset: number, bytes: Uint8Array): void {
  const fd = openSync(join(dir, file), 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

function peek(file: string, offset: number, length: number): Uint8Array {
  const fd = openSync(join(dir, file), 'r');
  try {
    const b = new Uint8Array(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** Sets or clears bits in the byte at `offset`. */
function pokeBits(file: string, offset: number, set: number, clear = 0): void {
  const b = peek(file, offset, 1);
  b[0] = (b[0]! | set) & ~clear;
  poke(file, offset, b);
}

/** Replaces the snapshot table of `file` (which must already hold one qemu-made snapshot). */
function writeSnapshots(file: string, snapshots: Qcow2Snapshot[]): void {
  const h = new DataView(peek(file, 0, 72).buffer);
  const tableOffset = Number(h.getBigUint64(64));
  const table = encodeSnapshotTable(snapshots);
  if (table.length > 65536) throw new Error('crafted table too big for its cluster');
  poke(file, tableOffset, table);
  const n = new Uint8Array(4);
  new DataView(n.buffer).setUint32(0, snapshots.length);
  poke(file, 60, n);
}

function snap(over: Partial<Qcow2Snapshot>): Qcow2Snapshot {
  return {
    l1TableOffset: 0,
    l1Size: 0,
    id: '1',
    name: 'x',
    dateSec: 1_700_000_000,
    dateNsec: 5,
    vmClockNsec: 0n,
    vmStateSize32: 0,
    extraDataSize: 24,
    vmStateSizeLarge: 0n,
    diskSize: 1048576n,
    icount: 0n,
    unknownExtraData: new Uint8Array(0),
    ...over,
  };
}

/** Finds a big-endian u32 in the first cluster (a header extension type). */
function findU32(file: string, value: number): number {
  const b = peek(file, 0, 4096);
  const v = new DataView(b.buffer);
  for (let i = 72; i + 4 <= b.length; i += 4) if (v.getUint32(i) === value) return i;
  throw new Error(`0x${value.toString(16)} not found in ${file}`);
}

function u64(value: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, value);
  return b;
}

/** A copy of `from` with bytes replaced: [offset, bytes] pairs (offset may be a function of the copy). */
function variant(name: string, from: string, pokes: Array<[number | ((file: string) => number), Uint8Array]>): void {
  copyFileSync(join(dir, from), join(dir, name));
  for (const [at, bytes] of pokes) poke(name, typeof at === 'number' ? at : at(name), bytes);
}

function u32(value: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, value);
  return b;
}

beforeAll(() => {
  ({ dir, cleanup } = tempDir('tsimg-info-'));
  // raw: sparse, fully allocated, a size that is not a whole sector
  q('create', '-f', 'raw', '$DIR/sparse.raw', '10M');
  q('create', '-f', 'raw', '-o', 'preallocation=full', '$DIR/full.raw', '1M');
  writeFileSync(join(dir, 'odd.raw'), new Uint8Array(1000).fill(7));
  writeFileSync(join(dir, 'empty.raw'), new Uint8Array(0));
  q('create', '-f', 'raw', '$DIR/base.raw', '4M');
  // qcow2 variants
  q('create', '-f', 'qcow2', '$DIR/plain.qcow2', '1G');
  q('create', '-f', 'qcow2', '-o', 'compat=0.10', '$DIR/v2.qcow2', '64M');
  for (const cs of ['512', '1k', '2k', '4k', '8k', '16k', '32k', '128k', '256k', '512k', '1M', '2M']) {
    q('create', '-f', 'qcow2', '-o', `cluster_size=${cs}`, `$DIR/cs-${cs}.qcow2`, '100M');
  }
  for (const rb of ['1', '2', '4', '8', '32', '64']) {
    q('create', '-f', 'qcow2', '-o', `refcount_bits=${rb}`, `$DIR/rb-${rb}.qcow2`, '10M');
  }
  q('create', '-f', 'qcow2', '-o', 'lazy_refcounts=on', '$DIR/lazy.qcow2', '10M');
  q('create', '-f', 'qcow2', '-o', 'extended_l2=on', '$DIR/extl2.qcow2', '10M');
  q('create', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=16k', '$DIR/extl2-16k.qcow2', '10M');
  q('create', '-f', 'qcow2', '-o', 'compression_type=zstd', '$DIR/zstd.qcow2', '10M');
  q('create', '-f', 'qcow2', '$DIR/odd-size.qcow2', '1000');
  q('create', '-f', 'qcow2', '-o', 'compat=0.10', '-b', 'base.raw', '-F', 'raw', '$DIR/v2-backing.qcow2', '4M');
  q('snapshot', '-c', 'v2snap', '$DIR/v2-backing.qcow2');
  q('create', '-f', 'qcow2', '$DIR/hl104.qcow2', '1M');
  poke('hl104.qcow2', 100, u32(104)); // a v3 header from before compression_type: no extensions reached
  q('create', '-f', 'qcow2', '$DIR/big.qcow2', '16T');
  q('create', '-f', 'qcow2', '$DIR/mid-size.qcow2', '1536M');
  q('create', '-f', 'qcow2', '-o', 'preallocation=metadata', '$DIR/prealloc.qcow2', '100M');
  q('create', '-f', 'qcow2', '$DIR/data.qcow2', '4M');
  qemuIo(['-c', 'write -P 0xab 0 1M', '-c', 'write -z 2M 64k', join(dir, 'data.qcow2')]);
  // backing files: relative, absolute, no recorded format, a 3-deep chain in a subdirectory
  q('create', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', '$DIR/rel.qcow2');
  q('create', '-f', 'qcow2', '-b', join(dir, 'base.raw'), '-F', 'raw', '$DIR/abs.qcow2');
  q('create', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', '$DIR/nofmt.qcow2');
  poke('nofmt.qcow2', findU32('nofmt.qcow2', 0xe2792aca), u32(0x12345678)); // now an unknown extension
  mkdirSync(join(dir, 'sub'));
  q('create', '-f', 'qcow2', '$DIR/chain-base.qcow2', '4M');
  q('create', '-f', 'qcow2', '-b', '../chain-base.qcow2', '-F', 'qcow2', '$DIR/sub/chain-mid.qcow2');
  q('create', '-f', 'qcow2', '-b', 'chain-mid.qcow2', '-F', 'qcow2', '$DIR/sub/chain-top.qcow2');
  q('create', '-f', 'qcow2', '$DIR/gone.qcow2', '1M');
  q('create', '-f', 'qcow2', '-b', 'gone.qcow2', '-F', 'qcow2', '$DIR/missing-backing.qcow2');
  rmSync(join(dir, 'gone.qcow2'));
  q('create', '-f', 'qcow2', '$DIR/loop.qcow2', '1M');
  q('rebase', '-u', '-b', 'loop.qcow2', '-F', 'qcow2', '$DIR/loop.qcow2');
  // external data file: raw and not, and one whose data file is gone (info does not open it)
  q('create', '-f', 'qcow2', '-o', 'data_file=ext-raw.data,data_file_raw=on', '$DIR/ext-raw.qcow2', '1M');
  q('create', '-f', 'qcow2', '-o', 'data_file=ext.data', '$DIR/ext.qcow2', '1M');
  q('create', '-f', 'qcow2', '-o', 'data_file=ext-gone.data', '$DIR/ext-gone.qcow2', '1M');
  rmSync(join(dir, 'ext-gone.data'));
  // internal snapshots made by qemu-img, one with a non-ASCII name
  q('create', '-f', 'qcow2', '$DIR/snap.qcow2', '64M');
  q('snapshot', '-c', 'first', '$DIR/snap.qcow2');
  q('snapshot', '-c', 'snäp "quoted" \\ back', '$DIR/snap.qcow2');
  q('snapshot', '-c', 'a-tag-that-is-longer-than-sixteen', '$DIR/snap.qcow2');
  // snapshot entries qemu-img cannot write: VM state, VM clock, icount, older/longer extra data
  q('create', '-f', 'qcow2', '$DIR/crafted.qcow2', '1M');
  q('snapshot', '-c', 'tmp', '$DIR/crafted.qcow2');
  writeSnapshots('crafted.qcow2', [
    snap({ id: '1', name: 'vmstate', vmStateSizeLarge: 5_000_000_000n, vmClockNsec: 3_723_456_000_000n, icount: 123_456_789n }),
    snap({ id: '2', name: 'v0-entry', extraDataSize: 0, vmStateSizeLarge: undefined, diskSize: undefined, icount: undefined, vmStateSize32: 1536, vmClockNsec: 432_000_000_000_000n }),
    snap({ id: '3', name: 'extra16', extraDataSize: 16, icount: undefined, vmStateSizeLarge: 1000n }),
    snap({ id: '10', name: 'unknown-extra-data-entry', extraDataSize: 40, unknownExtraData: new Uint8Array(16).fill(9), icount: ICOUNT_NONE }),
    snap({ id: '4', name: '', vmClockNsec: 0xffff_ffff_ffff_ffffn, vmStateSizeLarge: (1n << 63n) + 5n, dateSec: 0xffffffff }),
    snap({ id: 'x'.repeat(200), name: `nul\0after`, vmStateSizeLarge: 999_999n, dateNsec: 999_999_999 }),
    snap({ id: '5', name: 'n'.repeat(300), vmStateSizeLarge: 1_023_487n }),
    snap({ id: '6', name: decodeByteString(Uint8Array.from([0x62, 0xff, 0x61, 0xd, 0xc0, 0x80, 0x64])) }),
    snap({ id: '7', name: 'nonchar\ufffe\ufdd0 😀 \u007f' }),
  ]);
  // size_to_str and the VM CLOCK column over many values: powers of two and ten, their
  // neighbours, rounding ties, and pseudo-random u64s (a fixed LCG, so runs are reproducible)
  const sizes: bigint[] = [0n, 1n, 999n, 1000n, 1023n, 1024n, 1025n, 1152n, 1160n, 1536n, 10239n, 10240n, 102400n, 1023487n, 1023488n];
  for (let k = 0n; k < 64n; k++) sizes.push(1n << k, (1n << k) - 1n, (1n << k) + 1n, ((1n << k) * 1000n) / 1024n);
  for (let k = 0n; k < 20n; k++) sizes.push(10n ** k, 10n ** k - 1n, 999n * 10n ** k, 9995n * 10n ** k);
  let seed = 12345n;
  for (let i = 0; i < 100; i++) {
    seed = (seed * 6364136223846793005n + 1442695040888963407n) & ((1n << 64n) - 1n);
    sizes.push(seed >> BigInt(i % 60));
  }
  q('create', '-f', 'qcow2', '$DIR/sizes.qcow2', '1M');
  q('snapshot', '-c', 'tmp', '$DIR/sizes.qcow2');
  writeSnapshots('sizes.qcow2', sizes.map((n, i) => snap({
    id: String(i),
    name: `s${i}`,
    vmStateSizeLarge: n & ((1n << 64n) - 1n),
    vmClockNsec: (n * 7919n) & ((1n << 64n) - 1n),
    dateSec: Number(n % 4294967296n),
  })));
  q('create', '-f', 'qcow2', '$DIR/too-much-extra.qcow2', '1M');
  q('snapshot', '-c', 'tmp', '$DIR/too-much-extra.qcow2');
  writeSnapshots('too-much-extra.qcow2', [
    snap({}),
    snap({ id: '2', extraDataSize: 1100, unknownExtraData: new Uint8Array(1100 - 24) }),
  ]);
  // bitmaps: enabled, other granularity, disabled; in use (left open by a killed qemu-io);
  // and an image whose bitmaps a bitmap-unaware program invalidated (autoclear bit cleared)
  q('create', '-f', 'qcow2', '$DIR/bitmaps.qcow2', '64M');
  q('bitmap', '--add', '$DIR/bitmaps.qcow2', 'bm0');
  q('bitmap', '--add', '-g', '128k', '$DIR/bitmaps.qcow2', 'bm1');
  q('bitmap', '--add', '--disable', '$DIR/bitmaps.qcow2', 'bm2');
  q('create', '-f', 'qcow2', '$DIR/inuse.qcow2', '64M');
  q('bitmap', '--add', '$DIR/inuse.qcow2', 'live');
  q('bitmap', '--add', '--disable', '$DIR/inuse.qcow2', 'off');
  qemuIo(['-c', 'write 0 64k', '-c', 'abort', join(dir, 'inuse.qcow2')]);
  q('create', '-f', 'qcow2', '$DIR/bitmaps-stale.qcow2', '64M');
  q('bitmap', '--add', '$DIR/bitmaps-stale.qcow2', 'bm0');
  pokeBits('bitmaps-stale.qcow2', 95, 0, 1);
  // flags: dirty (lazy refcounts, killed writer), corrupt, an unknown incompatible feature
  q('create', '-f', 'qcow2', '-o', 'lazy_refcounts=on', '$DIR/dirty.qcow2', '10M');
  qemuIo(['-c', 'write 0 64k', '-c', 'abort', join(dir, 'dirty.qcow2')]);
  q('create', '-f', 'qcow2', '$DIR/corrupt.qcow2', '10M');
  pokeBits('corrupt.qcow2', 79, 2);
  q('create', '-f', 'qcow2', '$DIR/unknown-feature.qcow2', '10M');
  pokeBits('unknown-feature.qcow2', 79, 0x20);
  pokeBits('unknown-feature.qcow2', 72, 0x80);
  q('create', '-f', 'qcow2', '$DIR/zstd-bit-missing.qcow2', '10M', '-o', 'compression_type=zstd');
  pokeBits('zstd-bit-missing.qcow2', 79, 0, 8);
  // encryption (LUKS; info needs no key)
  q('create', '-f', 'qcow2', '--object', 'secret,id=sec0,data=123456', '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=500', '$DIR/luks.qcow2', '64M');
  q('create', '-f', 'qcow2', '--object', 'secret,id=sec0,data=123456', '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=500,encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha512', '$DIR/luks-essiv.qcow2', '64M');
  // damaged headers and metadata: each must fail (or not) exactly as qemu's open does
  q('create', '-f', 'qcow2', '$DIR/h.qcow2', '1G');
  variant('bad-version.qcow2', 'h.qcow2', [[4, u32(4)]]);
  variant('bad-cluster-bits.qcow2', 'h.qcow2', [[20, u32(22)]]);
  variant('bad-header-length.qcow2', 'h.qcow2', [[100, u32(100)]]);
  variant('bad-backing-offset.qcow2', 'h.qcow2', [[8, u64(0x20000n)], [16, u32(4)]]);
  variant('no-reftable.qcow2', 'h.qcow2', [[56, u32(0)]]);
  variant('reftable-unaligned.qcow2', 'h.qcow2', [[48, u64(0x10200n)]]);
  variant('reftable-huge.qcow2', 'h.qcow2', [[56, u32(129)]]);
  variant('l1-small.qcow2', 'h.qcow2', [[36, u32(1)]]);
  variant('l1-unaligned.qcow2', 'h.qcow2', [[40, u64(0x30008n)]]);
  variant('l1-huge.qcow2', 'h.qcow2', [[36, u32(4 * 1024 * 1024 + 1)]]);
  variant('snapshots-many.qcow2', 'h.qcow2', [[60, u32(65537)]]);
  variant('snapshots-unaligned.qcow2', 'h.qcow2', [[60, u32(1)], [64, u64(0x10100n)]]);
  variant('too-big.qcow2', 'h.qcow2', [[24, u64(1n << 52n)]]);
  variant('crypt-method.qcow2', 'h.qcow2', [[32, u32(3)]]);
  variant('compression-unknown.qcow2', 'h.qcow2', [[104, new Uint8Array([5])], [79, new Uint8Array([8])]]);
  variant('incompat-named.qcow2', 'h.qcow2', [[0x139, new Uint8Array([5])], [79, new Uint8Array([0x20])]]);
  variant('incompat-many.qcow2', 'h.qcow2', [[72, u64(0x8000_0000_0000_0060n)]]);
  variant('backing-fmt-long.qcow2', 'rel.qcow2', [[(f) => findU32(f, 0xe2792aca) + 4, u32(16)]]);
  q('create', '-f', 'qcow2', '-o', 'cluster_size=8k', '$DIR/c8k.qcow2', '1M');
  variant('extl2-8k.qcow2', 'c8k.qcow2', [[79, new Uint8Array([0x10])]]);
  const bitmapsExt = (f: string): number => findU32(f, 0x23852875);
  variant('bitmaps-zero.qcow2', 'bitmaps.qcow2', [[(f) => bitmapsExt(f) + 8, u32(0)]]);
  variant('bitmaps-too-many.qcow2', 'bitmaps.qcow2', [[(f) => bitmapsExt(f) + 8, u32(65536)]]);
  variant('bitmaps-more.qcow2', 'bitmaps.qcow2', [[(f) => bitmapsExt(f) + 8, u32(2)]]);
  variant('bitmaps-less.qcow2', 'bitmaps.qcow2', [[(f) => bitmapsExt(f) + 8, u32(4)]]);
  variant('bitmaps-dir-unaligned.qcow2', 'bitmaps.qcow2', [[(f) => bitmapsExt(f) + 24, u64(0x10008n)]]);
  variant('bitmaps-reserved.qcow2', 'bitmaps.qcow2', [[(f) => bitmapsExt(f) + 12, u32(1)]]);
  variant('bitmaps-ext-length.qcow2', 'bitmaps.qcow2', [[(f) => bitmapsExt(f) + 4, u32(16)]]);
  variant('ext-too-long.qcow2', 'bitmaps.qcow2', [[(f) => bitmapsExt(f) + 32, u64(0x10008n)]]);
  variant('backing-name-long.qcow2', 'rel.qcow2', [[16, u32(2000)]]);
  variant('bitmaps-dir-huge.qcow2', 'bitmaps.qcow2', [[(f) => bitmapsExt(f) + 16, u64(100_000_000n)]]);
  const dirOffset = (f: string): number => Number(new DataView(peek(f, bitmapsExt(f) + 24, 8).buffer).getBigUint64(0));
  variant('bitmap-granularity.qcow2', 'bitmaps.qcow2', [[(f) => dirOffset(f) + 17, new Uint8Array([40])]]);
  variant('bitmap-flags.qcow2', 'bitmaps.qcow2', [[(f) => dirOffset(f) + 12, u32(7)]]);
  variant('bitmap-extra.qcow2', 'bitmaps.qcow2', [[(f) => dirOffset(f) + 20, u32(8)]]);
  const tableOffset = (f: string): number => Number(new DataView(peek(f, dirOffset(f), 8).buffer).getBigUint64(0));
  variant('bitmap-table-entry.qcow2', 'bitmaps.qcow2', [[tableOffset, u64(0xff00000000000000n)]]);
  variant('bitmap-table-size.qcow2', 'bitmaps.qcow2', [[(f) => dirOffset(f) + 8, u32(2)]]);
  variant('inuse-table-size.qcow2', 'inuse.qcow2', [[(f) => dirOffset(f) + 8, u32(2)]]);
  const luksExt = (f: string): number => findU32(f, 0x0537be77);
  const luksOffset = (f: string): number => Number(new DataView(peek(f, luksExt(f) + 8, 8).buffer).getBigUint64(0));
  variant('luks-stripes.qcow2', 'luks.qcow2', [[(f) => luksOffset(f) + 208 + 44, u32(3999)]]);
  variant('luks-slot-state.qcow2', 'luks.qcow2', [[(f) => luksOffset(f) + 208 + 48, u32(1)]]);
  variant('luks-magic.qcow2', 'luks.qcow2', [[(f) => luksOffset(f), u32(0)]]);
  variant('luks-version.qcow2', 'luks.qcow2', [[(f) => luksOffset(f) + 6, new Uint8Array([0, 2])]]);
  variant('luks-ext-unaligned.qcow2', 'luks.qcow2', [[(f) => luksExt(f) + 8, u64(0x10200n)]]);
  // (a LUKS image without its crypto header extension crashes qemu-img 7.2's info: not compared)
  variant('crypto-ext-plain.qcow2', 'luks.qcow2', [[32, u32(0)]]);
  variant('aes.qcow2', 'h.qcow2', [[32, u32(1)]]);
  // odd files: too short for a qcow2 header, not an image at all, a name needing JSON escapes
  writeFileSync(join(dir, 'short.qcow2'), peek('plain.qcow2', 0, 50));
  writeFileSync(join(dir, 'text.img'), 'hello world\n');
  q('create', '-f', 'qcow2', '$DIR/odd "name" \\ é.qcow2', '1M');
  mkdirSync(join(dir, 'adir'));
});

afterAll(() => cleanup());

/** Runs `info <args>` with both tools in the image directory and compares everything. */
function crossCheck(args: string[]): void {
  const a = qemuImg(['info', ...args], { cwd: dir });
  const b = tsimg(['info', ...args], { cwd: dir });
  const expectedErr = asTsimg(a.stderr).replaceAll("Try 'qemu-img --help'", "Try 'tsimg --help'");
  expect({ stdout: b.stdout, stderr: b.stderr, status: b.status }).toEqual({ stdout: a.stdout, stderr: expectedErr, status: a.status });
}

const images = [
  'sparse.raw', 'full.raw', 'odd.raw', 'empty.raw',
  'plain.qcow2', 'v2.qcow2', 'lazy.qcow2', 'extl2.qcow2', 'extl2-16k.qcow2', 'zstd.qcow2', 'odd-size.qcow2',
  'big.qcow2', 'mid-size.qcow2', 'prealloc.qcow2', 'data.qcow2', 'v2-backing.qcow2', 'hl104.qcow2',
  ...['512', '1k', '2k', '4k', '8k', '16k', '32k', '128k', '256k', '512k', '1M', '2M'].map((c) => `cs-${c}.qcow2`),
  ...['1', '2', '4', '8', '32', '64'].map((r) => `rb-${r}.qcow2`),
  'rel.qcow2', 'abs.qcow2', 'nofmt.qcow2', 'sub/chain-top.qcow2', 'missing-backing.qcow2', 'loop.qcow2',
  'ext-raw.qcow2', 'ext.qcow2', 'ext-gone.qcow2',
  'snap.qcow2', 'crafted.qcow2', 'sizes.qcow2', 'too-much-extra.qcow2',
  'bitmaps.qcow2', 'inuse.qcow2', 'bitmaps-stale.qcow2',
  'dirty.qcow2', 'corrupt.qcow2', 'unknown-feature.qcow2', 'zstd-bit-missing.qcow2',
  'luks.qcow2', 'luks-essiv.qcow2',
  'short.qcow2', 'text.img', 'odd "name" \\ é.qcow2',
  'bad-version.qcow2', 'bad-cluster-bits.qcow2', 'bad-header-length.qcow2', 'bad-backing-offset.qcow2',
  'no-reftable.qcow2', 'reftable-unaligned.qcow2', 'reftable-huge.qcow2', 'l1-small.qcow2', 'l1-unaligned.qcow2',
  'l1-huge.qcow2', 'snapshots-many.qcow2', 'snapshots-unaligned.qcow2', 'too-big.qcow2', 'crypt-method.qcow2',
  'compression-unknown.qcow2', 'incompat-named.qcow2', 'incompat-many.qcow2', 'backing-fmt-long.qcow2', 'extl2-8k.qcow2',
  'bitmaps-zero.qcow2', 'bitmaps-too-many.qcow2', 'bitmaps-more.qcow2', 'bitmaps-less.qcow2',
  'bitmaps-dir-unaligned.qcow2', 'bitmaps-dir-huge.qcow2', 'bitmap-granularity.qcow2', 'bitmap-flags.qcow2',
  'bitmap-extra.qcow2', 'bitmap-table-entry.qcow2', 'bitmap-table-size.qcow2', 'inuse-table-size.qcow2',
  'luks-stripes.qcow2', 'luks-slot-state.qcow2', 'luks-magic.qcow2', 'luks-version.qcow2', 'luks-ext-unaligned.qcow2',
  'crypto-ext-plain.qcow2', 'aes.qcow2', 'bitmaps-reserved.qcow2', 'bitmaps-ext-length.qcow2', 'ext-too-long.qcow2',
  'backing-name-long.qcow2',
];

describeQemu('tsimg info matches qemu-img info', () => {
  for (const img of images) {
    it(`${img}: human`, () => crossCheck([img]));
    it(`${img}: json`, () => crossCheck(['--output=json', img]));
  }

  it.each([
    [['--backing-chain', 'sub/chain-top.qcow2']],
    [['--backing-chain', '--output=json', 'sub/chain-top.qcow2']],
    [['--backing-chain', '--output', 'json', 'rel.qcow2']],
    [['--backing-chain', 'abs.qcow2']],
    [['--backing-chain', 'nofmt.qcow2']],
    [['--backing-chain', 'plain.qcow2']],
    [['--backing-chain', '--output=json', 'plain.qcow2']],
    [['--backing-chain', 'missing-backing.qcow2']],
    [['--backing-chain', 'loop.qcow2']],
    [['--backing-chain', '--output=json', 'loop.qcow2']],
  ])('backing chain %j', (args) => crossCheck(args));

  it.each(['America/New_York', 'Europe/Berlin', 'Asia/Kolkata', 'Australia/Lord_Howe'])(
    'snapshot dates in local time (TZ=%s)',
    (tz) => {
      process.env.TZ = tz;
      try {
        crossCheck(['sizes.qcow2']);
        crossCheck(['snap.qcow2']);
      } finally {
        process.env.TZ = 'UTC';
      }
    },
  );

  it('relative and absolute image names', () => {
    crossCheck(['./sub/../rel.qcow2']);
    crossCheck([join(dir, 'rel.qcow2')]);
    crossCheck(['--output=json', join(dir, 'sub/chain-top.qcow2')]);
  });

  it.each([
    [['-f', 'qcow2', 'plain.qcow2']],
    [['-f', 'raw', 'plain.qcow2']],
    [['--format=raw', '--output=json', 'plain.qcow2']],
    [['-f', 'raw', 'sparse.raw']],
    [['-f', 'qcow2', 'sparse.raw']],
    [['-f', 'qcow2', 'short.qcow2']],
    [['-f', 'foo', 'plain.qcow2']],
    [['-U', 'plain.qcow2']],
    [['--force-share', '--output=json', 'plain.qcow2']],
    [['plain.qcow2', '--output=json']],
    [['--out=json', 'plain.qcow2']],
    [['--backing', 'rel.qcow2']],
    [['--object', 'secret,id=sec0,data=123456', 'luks.qcow2']],
    [['--image-opts', 'driver=qcow2,file.filename=plain.qcow2']],
    [['--image-opts', 'file.filename=rel.qcow2']],
    [['--image-opts', '--output=json', 'driver=raw,file.filename=sparse.raw']],
    [['--image-opts', 'driver=qcow2,file.driver=file,file.filename=rel.qcow2']],
    [['--image-opts', 'driver=file,filename=odd.raw']],
    [['--image-opts', 'rel.qcow2']],
    [['--image-opts', 'driver=qcow2']],
    [['--image-opts', 'driver=qcow2,file.filename=rel.qcow2,foo=1']],
    [['--image-opts', 'file=rel.qcow2,driver=qcow2,file.driver=file']],
    [['--image-opts', 'file.filename=a,,b']],
    [['-f', 'file', 'odd.raw']],
    [['file:rel.qcow2']],
    [['file:']],
    [['foo:bar']],
    [['json:{"file":{"driver":"file","filename":"rel.qcow2"}}']],
    [['--output=json', 'json:{"driver":"qcow2","file.filename":"sub/chain-top.qcow2"}']],
    [['--backing-chain', 'json:{"driver":"qcow2","file":{"filename":"sub/chain-top.qcow2"}}']],
    [['json:{"driver":"raw","file":{"driver":"file","filename":"plain.qcow2"}}']],
    [['json:{"file":{"driver":"file"}}']],
  ])('options %j', (args) => crossCheck(args));

  it.each([
    [['missing.qcow2']],
    [['--output=json', 'missing.qcow2']],
    [['adir']],
    [[]],
    [['plain.qcow2', 'rel.qcow2']],
    [['--output=xml', 'plain.qcow2']],
    [['-x', 'plain.qcow2']],
    [['--bogus', 'plain.qcow2']],
    [['-f']],
    [['plain.qcow2', '--output']],
    [['--image-opts', '-f', 'qcow2', 'driver=qcow2,file.filename=plain.qcow2']],
  ])('errors %j', (args) => crossCheck(args));
});
