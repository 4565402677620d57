/**
 * `tsimg convert` against `qemu-img convert` (7.2), one table row per command line: the same
 * arguments run through both in twin directories; exit status, stdout (progress lines
 * included) and stderr must be the same (with `qemu-img` read as `tsimg`), and so must the files
 * written — byte for byte, except with -c, where node:zlib's deflate may choose other bytes than
 * the system zlib (then: same guest contents, a clean `qemu-img check`, size within 1%).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { describeQemu, tempDir } from '../../../test-images/qemu.js';
import { compareFiles, expectedText, limiter, runCase, textOf, type ConvertCase } from './convert-harness.js';
import { makeSources } from './convert-sources.js';

const S = (name: string): string => `../../src/${name}`;
/** An existing target copied from the sources into the case directory as `out`. */
const existing = (name: string) => (dir: string) => copyFileSync(join(dir, '..', '..', 'src', name), join(dir, 'out'));


const QCOW2_SOURCES = ['mixed.qcow2', 'c4k.qcow2', 'zstd.qcow2', 'extl2.qcow2', 'top.qcow2', 'df.qcow2', 'pmeta.qcow2', 'pfalloc.qcow2', 'snap.qcow2'];
const RAW_SOURCES = ['sparse.raw', 'dense.raw', 'odd.raw'];

const cases: ConvertCase[] = [
  // Every source to raw and to qcow2 with default options.
  ...[...RAW_SOURCES, ...QCOW2_SOURCES].flatMap((src): ConvertCase[] => [
    { name: `${src} -> raw`, args: [S(src), 'out'] },
    { name: `${src} -> qcow2`, args: ['-O', 'qcow2', S(src), 'out'] },
  ]),
  { name: 'explicit -f raw', args: ['-f', 'raw', S('sparse.raw'), '-O', 'qcow2', 'out'] },
  { name: 'explicit -f qcow2', args: ['-f', 'qcow2', S('mixed.qcow2'), '-O', 'qcow2', 'out'] },
  { name: 'qcow2 read as raw (-f raw)', args: ['-f', 'raw', S('mixed.qcow2'), '-O', 'qcow2', 'out'] },

  // Target create options.
  ...['512', '4k', '16k', '2M'].map((cs): ConvertCase => ({ name: `cluster_size=${cs}`, args: ['-O', 'qcow2', '-o', `cluster_size=${cs}`, S('mixed.qcow2'), 'out'] })),
  { name: 'compat=0.10', args: ['-O', 'qcow2', '-o', 'compat=0.10', S('mixed.qcow2'), 'out'] },
  { name: 'compat=v3', args: ['-O', 'qcow2', '-o', 'compat=v3', S('c4k.qcow2'), 'out'] },
  ...['1', '2', '16', '64'].map((rb): ConvertCase => ({ name: `refcount_bits=${rb}`, args: ['-O', 'qcow2', '-o', `refcount_bits=${rb}`, S('mixed.qcow2'), 'out'] })),
  { name: 'lazy_refcounts=on', args: ['-O', 'qcow2', '-o', 'lazy_refcounts=on', S('mixed.qcow2'), 'out'] },
  { name: 'extended_l2=on', args: ['-O', 'qcow2', '-o', 'extended_l2=on', S('mixed.qcow2'), 'out'] },
  { name: 'extended_l2 source to extended_l2 target', args: ['-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=32k', S('extl2.qcow2'), 'out'] },
  { name: 'compression_type=zstd (no -c)', args: ['-O', 'qcow2', '-o', 'compression_type=zstd', S('mixed.qcow2'), 'out'] },
  ...['off', 'metadata', 'falloc', 'full'].map((p): ConvertCase => ({ name: `qcow2 preallocation=${p}`, args: ['-O', 'qcow2', '-o', `preallocation=${p}`, S('mixed.qcow2'), 'out'] })),
  ...['off', 'falloc', 'full'].map((p): ConvertCase => ({ name: `raw preallocation=${p}`, args: ['-o', `preallocation=${p}`, S('mixed.qcow2'), 'out'] })),
  { name: 'data_file', args: ['-O', 'qcow2', '-o', 'data_file=out.data', S('mixed.qcow2'), 'out'], files: ['out', 'out.data'] },
  { name: 'data_file + data_file_raw', args: ['-O', 'qcow2', '-o', 'data_file=out.data,data_file_raw=on', S('mixed.qcow2'), 'out'], files: ['out', 'out.data'] },
  { name: 'data_file_raw without data_file', args: ['-O', 'qcow2', '-o', 'data_file_raw=on', S('mixed.qcow2'), 'out'] },
  { name: 'several -o accumulate', args: ['-O', 'qcow2', '-o', 'cluster_size=4k', '-o', 'refcount_bits=8', S('mixed.qcow2'), 'out'] },
  { name: '-o unknown option', args: ['-O', 'qcow2', '-o', 'bogus=1', S('mixed.qcow2'), 'out'] },
  { name: '-o bad cluster_size', args: ['-O', 'qcow2', '-o', 'cluster_size=3k', S('mixed.qcow2'), 'out'] },
  { name: '-o bad compat', args: ['-O', 'qcow2', '-o', 'compat=2', S('mixed.qcow2'), 'out'] },
  { name: '-o size= is overridden', args: ['-O', 'qcow2', '-o', 'size=1G', S('mixed.qcow2'), 'out'] },
  { name: '-o help qcow2', args: ['-O', 'qcow2', '-o', 'help'] },
  { name: '-o help raw', args: ['-o', 'help', S('mixed.qcow2'), 'out'] },
  { name: '-o ? qcow2', args: ['-O', 'qcow2', '-o', '?', S('mixed.qcow2'), 'out'] },

  // Option combinations qcow2 create refuses, and a few more that it takes.
  { name: 'compat=0.10 with lazy_refcounts', args: ['-O', 'qcow2', '-o', 'compat=0.10,lazy_refcounts=on', S('mixed.qcow2'), 'out'] },
  { name: 'compat=0.10 with extended_l2', args: ['-O', 'qcow2', '-o', 'compat=0.10,extended_l2=on', S('mixed.qcow2'), 'out'] },
  { name: 'compat=0.10 with zstd', args: ['-O', 'qcow2', '-o', 'compat=0.10,compression_type=zstd', S('mixed.qcow2'), 'out'] },
  { name: 'extended_l2 with 2M clusters', args: ['-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=2M', S('mixed.qcow2'), 'out'] },
  { name: 'extended_l2 with 512-byte clusters', args: ['-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=512', S('mixed.qcow2'), 'out'] },
  { name: 'refcount_bits=3', args: ['-O', 'qcow2', '-o', 'refcount_bits=3', S('mixed.qcow2'), 'out'] },
  { name: 'compat=0.10 with refcount_bits=8', args: ['-O', 'qcow2', '-o', 'compat=0.10,refcount_bits=8', S('mixed.qcow2'), 'out'] },
  { name: 'preallocation=full, 512-byte clusters', args: ['-O', 'qcow2', '-o', 'preallocation=full,cluster_size=512', S('c4k.qcow2'), 'out'] },
  { name: 'preallocation=metadata with -B', args: ['-O', 'qcow2', '-o', 'preallocation=metadata', '-B', S('flatbase.qcow2'), '-F', 'qcow2', S('top.qcow2'), 'out'] },
  { name: 'preallocation=bogus', args: ['-O', 'qcow2', '-o', 'preallocation=bogus', S('mixed.qcow2'), 'out'] },
  { name: 'data_file with -B', args: ['-O', 'qcow2', '-o', 'data_file=out.data', '-B', S('flatbase.qcow2'), '-F', 'qcow2', S('top.qcow2'), 'out'], files: ['out', 'out.data'] },
  { name: 'data_file with -c', args: ['-c', '-O', 'qcow2', '-o', 'data_file=out.data', S('mixed.qcow2'), 'out'], files: ['out', 'out.data'] },
  { name: 'data_file_raw with preallocation=metadata', args: ['-O', 'qcow2', '-o', 'data_file=out.data,data_file_raw=on,preallocation=metadata', S('mixed.qcow2'), 'out'], files: ['out', 'out.data'] },
  { name: 'raw target from an extended-L2 source, -S 4k', args: ['-S', '4k', S('extl2.qcow2'), 'out'] },
  { name: '4k-cluster source to 64k, -S 64k', args: ['-S', '64k', '-O', 'qcow2', S('c4k.qcow2'), 'out'] },
  { name: 'zstd source to zlib -c', args: ['-c', '-O', 'qcow2', S('zstd.qcow2'), 'out'], check: 'compressed' },
  { name: 'lazy_refcounts + cluster_size + refcount_bits', args: ['-O', 'qcow2', '-o', 'lazy_refcounts=on,cluster_size=8k,refcount_bits=32', S('top.qcow2'), 'out'] },

  { name: 'cluster_size=4M', args: ['-O', 'qcow2', '-o', 'cluster_size=4M', S('mixed.qcow2'), 'out'] },
  { name: 'cluster_size=256', args: ['-O', 'qcow2', '-o', 'cluster_size=256', S('mixed.qcow2'), 'out'] },
  { name: 'refcount_bits=128', args: ['-O', 'qcow2', '-o', 'refcount_bits=128', S('mixed.qcow2'), 'out'] },
  { name: 'encrypt.format=luks without a secret', args: ['-O', 'qcow2', '-o', 'encrypt.format=luks', S('mixed.qcow2'), 'out'] },
  { name: 'raw target with a qcow2 option', args: ['-o', 'cluster_size=4k', S('mixed.qcow2'), 'out'] },
  { name: 'qcow2 target with nocow', args: ['-O', 'qcow2', '-o', 'nocow=on', S('mixed.qcow2'), 'out'] },
  { name: 'empty -o', args: ['-O', 'qcow2', '-o', '', S('mixed.qcow2'), 'out'] },

  // -c
  { name: '-c zlib', args: ['-c', '-O', 'qcow2', S('mixed.qcow2'), 'out'], check: 'compressed', spawn: true },
  { name: '-c zstd', args: ['-c', '-O', 'qcow2', '-o', 'compression_type=zstd', S('mixed.qcow2'), 'out'], check: 'compressed' },
  { name: '-c from raw, 4k clusters', args: ['-c', '-O', 'qcow2', '-o', 'cluster_size=4k', S('sparse.raw'), 'out'], check: 'compressed' },
  { name: '-c odd-size source', args: ['-c', '-O', 'qcow2', S('odd.raw'), 'out'], check: 'compressed' },
  { name: '-c over a backing file', args: ['-c', '-O', 'qcow2', '-B', S('flatbase.qcow2'), '-F', 'qcow2', S('top.qcow2'), 'out'], check: 'compressed' },
  // Status runs end where the source's L2 tables do (as qemu's): here shorter than a target
  // cluster, so qemu writes every cluster, past the backing's end too (zero or compressed).
  { name: '-c -B over a 512-byte-cluster source', args: ['-c', '-O', 'qcow2', '-B', S('base0.raw'), '-F', 'raw', S('small-top.qcow2'), 'out'], check: 'compressed' },
  { name: '-c -B -o compat=0.10 over a 512-byte-cluster source', args: ['-c', '-O', 'qcow2', '-o', 'compat=0.10', '-B', S('base0.raw'), '-F', 'raw', S('small-top.qcow2'), 'out'], check: 'compressed' },
  {
    name: '-c -S 0',
    args: ['-c', '-S', '0', '-O', 'qcow2', S('sparse.raw'), 'out'],
    check: 'compressed',
  },
  { name: '-c to raw', args: ['-c', S('mixed.qcow2'), 'out'] },
  { name: '-c with preallocation', args: ['-c', '-O', 'qcow2', '-o', 'preallocation=metadata', S('mixed.qcow2'), 'out'] },
  { name: '-c with preallocation=off', args: ['-c', '-O', 'qcow2', '-o', 'preallocation=off', S('sparse.raw'), 'out'], check: 'compressed' },
  { name: '-c with encryption', args: ['-c', '-O', 'qcow2', '-o', 'encryption=on', S('mixed.qcow2'), 'out'] },

  // -S
  ...['0', '512', '4k', '16k', '1M'].flatMap((sz): ConvertCase[] => [
    { name: `-S ${sz} -> raw`, args: ['-S', sz, S('dense.raw'), 'out'] },
    { name: `-S ${sz} -> qcow2`, args: ['-S', sz, '-O', 'qcow2', S('mixed.qcow2'), 'out'] },
  ]),
  { name: '-S 4k from a 4k-cluster qcow2 to qcow2', args: ['-S', '4k', '-O', 'qcow2', '-o', 'cluster_size=4k', S('c4k.qcow2'), 'out'] },
  { name: '-S 0 from preallocated', args: ['-S', '0', '-O', 'qcow2', S('pmeta.qcow2'), 'out'] },
  { name: '-S 100 (not a sector multiple)', args: ['-S', '100', S('dense.raw'), 'out'] },
  { name: '-S 17M (too big)', args: ['-S', '17M', S('dense.raw'), 'out'] },
  { name: '-S 16M (largest)', args: ['-S', '16M', S('dense.raw'), 'out'] },
  { name: '-S junk', args: ['-S', 'x', S('dense.raw'), 'out'] },
  { name: '-S negative', args: ['-S', '-1', S('dense.raw'), 'out'] },

  // -B / -F
  { name: 'flatten a chain', args: ['-O', 'qcow2', S('top.qcow2'), 'out'] },
  { name: '-B -F: only differences from the backing', args: ['-O', 'qcow2', '-B', S('flatbase.qcow2'), '-F', 'qcow2', S('top.qcow2'), 'out'] },
  { name: '-B -F over the source own backing', args: ['-O', 'qcow2', '-B', S('base.qcow2'), '-F', 'qcow2', S('top.qcow2'), 'out'] },
  { name: '-B -F with a shorter backing (zeroes past its end)', args: ['-O', 'qcow2', '-B', S('base0.raw'), '-F', 'raw', S('top.qcow2'), 'out'] },
  { name: '-B without -F', args: ['-O', 'qcow2', '-B', S('flatbase.qcow2'), S('top.qcow2'), 'out'] },
  { name: '-o backing_file without backing_fmt', args: ['-O', 'qcow2', '-o', `backing_file=${S('flatbase.qcow2')}`, S('top.qcow2'), 'out'] },
  { name: '-o backing_file,backing_fmt', args: ['-O', 'qcow2', '-o', `backing_file=${S('flatbase.qcow2')},backing_fmt=qcow2`, S('top.qcow2'), 'out'] },
  { name: '-B to raw', args: ['-B', S('flatbase.qcow2'), '-F', 'qcow2', S('top.qcow2'), 'out'] },
  { name: '-F without -B', args: ['-O', 'qcow2', '-F', 'qcow2', S('top.qcow2'), 'out'] },
  { name: '-B with a missing backing file', args: ['-O', 'qcow2', '-B', 'nonexistent.qcow2', '-F', 'qcow2', S('top.qcow2'), 'out'] },
  { name: '-B with the wrong -F', args: ['-O', 'qcow2', '-B', S('flatbase.qcow2'), '-F', 'raw', S('top.qcow2'), 'out'] },
  { name: '-B -S 0', args: ['-O', 'qcow2', '-S', '0', '-B', S('flatbase.qcow2'), '-F', 'qcow2', S('top.qcow2'), 'out'] },
  { name: '-B with two sources', args: ['-O', 'qcow2', '-B', S('flatbase.qcow2'), '-F', 'qcow2', S('top.qcow2'), S('mixed.qcow2'), 'out'] },

  { name: '-o backing_file and -B both', args: ['-O', 'qcow2', '-o', `backing_file=${S('base.qcow2')},backing_fmt=qcow2`, '-B', S('flatbase.qcow2'), '-F', 'qcow2', S('top.qcow2'), 'out'] },
  { name: '-B with -o backing_fmt', args: ['-O', 'qcow2', '-o', 'backing_fmt=qcow2', '-B', S('flatbase.qcow2'), S('top.qcow2'), 'out'] },
  { name: '-B and -o backing_fmt differing from -F', args: ['-O', 'qcow2', '-o', 'backing_fmt=raw', '-B', S('flatbase.qcow2'), '-F', 'qcow2', S('top.qcow2'), 'out'] },
  { name: '-B -F with cluster_size and -S 4k', args: ['-O', 'qcow2', '-o', 'cluster_size=4k', '-S', '4k', '-B', S('flatbase.qcow2'), '-F', 'qcow2', S('top.qcow2'), 'out'] },
  { name: '-B a raw source over a raw backing', args: ['-O', 'qcow2', '-B', S('base0.raw'), '-F', 'raw', S('sparse.raw'), 'out'] },

  // -n
  { name: '-n into an existing qcow2', args: ['-n', '-O', 'qcow2', S('mixed.qcow2'), 'out'], before: existing('tgt4m.qcow2') },
  { name: '-n into a qcow2 full of data', args: ['-n', '-O', 'qcow2', S('mixed.qcow2'), 'out'], before: existing('dirty.qcow2') },
  // Zero writes free the target's clusters (compressed ones too) and, as the target is opened
  // with discard=unmap, drop them from the file: the files must be identical byte for byte.
  { name: '-n a sparse raw into a filled qcow2', args: ['-n', '-O', 'qcow2', S('sparse.raw'), 'out'], before: existing('filled.qcow2') },
  { name: '-n a qcow2 into a filled qcow2', args: ['-n', '-O', 'qcow2', S('mixed.qcow2'), 'out'], before: existing('filled.qcow2') },
  { name: '-n -S 0 into a filled qcow2 (no unmap)', args: ['-n', '-S', '0', '-O', 'qcow2', S('sparse.raw'), 'out'], before: existing('filled.qcow2') },
  { name: '-n -S 64k into a filled qcow2', args: ['-n', '-S', '64k', '-O', 'qcow2', S('mixed.qcow2'), 'out'], before: existing('filled.qcow2') },
  { name: '-n into a filled extended-L2 qcow2', args: ['-n', '-O', 'qcow2', S('mixed.qcow2'), 'out'], before: existing('filledx.qcow2') },
  {
    name: '-n into a filled qcow2 with a data file',
    args: ['-n', '-O', 'qcow2', S('mixed.qcow2'), 'out'],
    before: (d) => {
      existing('filleddf.qcow2')(d);
      copyFileSync(join(d, '..', '..', 'src', 'out.data'), join(d, 'out.data'));
    },
    files: ['out', 'out.data'],
  },
  { name: '-n --target-is-zero', args: ['-n', '--target-is-zero', '-O', 'qcow2', S('mixed.qcow2'), 'out'], before: existing('tgt4m.qcow2') },
  { name: '-n into a larger raw', args: ['-n', S('mixed.qcow2'), 'out'], before: existing('tgt8m.raw') },
  { name: '-n into a smaller target', args: ['-n', '-O', 'qcow2', S('mixed.qcow2'), 'out'], before: existing('tgt1m.qcow2') },
  { name: '-n with a missing target', args: ['-n', '-O', 'qcow2', S('mixed.qcow2'), 'out'] },
  { name: '-n with -o', args: ['-n', '-O', 'qcow2', '-o', 'cluster_size=4k', S('mixed.qcow2'), 'out'], before: existing('tgt4m.qcow2') },
  { name: '--target-is-zero without -n', args: ['--target-is-zero', '-O', 'qcow2', S('mixed.qcow2'), 'out'] },
  { name: '--target-is-zero with -B', args: ['-n', '--target-is-zero', '-O', 'qcow2', '-B', S('flatbase.qcow2'), '-F', 'qcow2', S('top.qcow2'), 'out'], before: existing('tgt4m.qcow2') },
  { name: '--target-image-opts without -n', args: ['--target-image-opts', S('mixed.qcow2'), 'driver=raw,file.filename=out'] },
  { name: '-n --target-image-opts', args: ['-n', '--target-image-opts', S('mixed.qcow2'), 'driver=qcow2,file.filename=out'], before: existing('tgt4m.qcow2') },
  { name: '-n -S 0 --target-is-zero', args: ['-n', '-S', '0', '--target-is-zero', '-O', 'qcow2', S('mixed.qcow2'), 'out'], before: existing('tgt4m.qcow2') },
  { name: '-n -c', args: ['-n', '-c', '-O', 'qcow2', S('sparse.raw'), 'out'], before: existing('tgt4m.qcow2'), check: 'compressed' },

  // Snapshots
  { name: '-l by name', args: ['-l', 's1', S('snap.qcow2'), 'out'] },
  { name: '-l by id', args: ['-l', '2', '-O', 'qcow2', S('snap.qcow2'), 'out'] },
  { name: '-l snapshot.name=', args: ['-l', 'snapshot.name=s2', S('snap.qcow2'), 'out'] },
  { name: '-l snapshot.id=', args: ['-l', 'snapshot.id=1', '-O', 'qcow2', S('snap.qcow2'), 'out'] },
  { name: '-l snapshot.id= and name= that match', args: ['-l', 'snapshot.id=1,snapshot.name=s1', S('snap.qcow2'), 'out'] },
  { name: '-l snapshot.id= and name= that do not match', args: ['-l', 'snapshot.id=1,snapshot.name=s2', S('snap.qcow2'), 'out'] },
  { name: '-l missing snapshot', args: ['-l', 'nosuch', S('snap.qcow2'), 'out'] },
  { name: '-l bad snapshot param', args: ['-l', 'snapshot.foo=1', S('snap.qcow2'), 'out'] },
  { name: '-s (old flag, now unknown)', args: ['-s', 's1', S('snap.qcow2'), 'out'] },
  { name: '-l on raw', args: ['-l', 's1', S('sparse.raw'), 'out'] },
  { name: '-l with two sources', args: ['-l', 's1', S('snap.qcow2'), S('mixed.qcow2'), 'out'] },
  { name: '-l snapshot.name= with two sources', args: ['-l', 'snapshot.name=s1', S('snap.qcow2'), S('mixed.qcow2'), 'out'] },

  { name: '-l with -n', args: ['-n', '-l', 's1', '-O', 'qcow2', S('snap.qcow2'), 'out'], before: existing('tgt4m.qcow2') },
  { name: '-l with --image-opts', args: ['--image-opts', '-l', 's2', `driver=qcow2,file.filename=${S('snap.qcow2')}`, 'out'] },
  { name: '-l on a chain top without snapshots', args: ['-l', 's1', S('top.qcow2'), 'out'] },

  // Several sources
  { name: 'two sources -> raw', args: [S('mixed.qcow2'), S('odd.raw'), 'out'] },
  { name: 'three sources -> qcow2', args: ['-O', 'qcow2', S('odd.raw'), S('sparse.raw'), S('c4k.qcow2'), 'out'] },
  { name: 'odd-size sources -> qcow2 -c', args: ['-c', '-O', 'qcow2', S('odd.raw'), S('odd.raw'), 'out'], check: 'compressed' },

  // Flags that change nothing in the output
  { name: '-U', args: ['-U', '-O', 'qcow2', S('mixed.qcow2'), 'out'] },
  { name: '-p', args: ['-p', '-O', 'qcow2', S('mixed.qcow2'), 'out'], spawn: true },
  { name: '-p to raw from a chain', args: ['-p', S('top.qcow2'), 'out'] },
  { name: '-p -S 0', args: ['-p', '-S', '0', S('sparse.raw'), 'out'] },
  { name: '-p -c', args: ['-p', '-c', '-O', 'qcow2', S('mixed.qcow2'), 'out'], check: 'compressed' },
  { name: '-p -B', args: ['-p', '-O', 'qcow2', '-B', S('flatbase.qcow2'), '-F', 'qcow2', S('top.qcow2'), 'out'] },
  { name: '-p -q', args: ['-p', '-q', S('mixed.qcow2'), 'out'] },
  { name: '-p with an error', args: ['-p', 'nonexistent', 'out'] },
  { name: '-q', args: ['-q', '-O', 'qcow2', S('mixed.qcow2'), 'out'] },
  { name: '-W', args: ['-W', '-O', 'qcow2', S('mixed.qcow2'), 'out'], check: 'contents' },
  { name: '-W -m 16 to raw', args: ['-W', '-m', '16', S('mixed.qcow2'), 'out'] },
  { name: '-m 1', args: ['-m', '1', '-O', 'qcow2', S('mixed.qcow2'), 'out'] },
  { name: '-m 16', args: ['-m', '16', '-O', 'qcow2', S('mixed.qcow2'), 'out'] },
  { name: '-m 0', args: ['-m', '0', S('mixed.qcow2'), 'out'] },
  { name: '-m 17', args: ['-m', '17', S('mixed.qcow2'), 'out'] },
  { name: '-m x', args: ['-m', 'x', S('mixed.qcow2'), 'out'] },
  { name: '-m 0x10', args: ['-m', '0x10', S('mixed.qcow2'), 'out'] },
  { name: '-m 4k', args: ['-m', '4k', S('mixed.qcow2'), 'out'] },
  ...['none', 'writeback', 'writethrough', 'directsync', 'unsafe'].map((t): ConvertCase => ({ name: `-t ${t}`, args: ['-t', t, '-O', 'qcow2', S('mixed.qcow2'), 'out'] })),
  { name: '-t bogus', args: ['-t', 'bogus', '-O', 'qcow2', S('mixed.qcow2'), 'out'] },
  ...['none', 'writeback', 'unsafe'].map((t): ConvertCase => ({ name: `-T ${t}`, args: ['-T', t, '-O', 'qcow2', S('mixed.qcow2'), 'out'] })),
  { name: '-T bogus', args: ['-T', 'bogus', S('mixed.qcow2'), 'out'] },
  { name: '-r 1G', args: ['-r', '1G', '-O', 'qcow2', S('mixed.qcow2'), 'out'] },
  { name: '-r junk', args: ['-r', 'junk', S('mixed.qcow2'), 'out'] },
  { name: '-r 0', args: ['-r', '0', S('mixed.qcow2'), 'out'] },
  { name: '-r -1', args: ['-r', '-1', S('mixed.qcow2'), 'out'] },
  { name: '-r 1.5 (fraction without a suffix)', args: ['-r', '1.5', S('mixed.qcow2'), 'out'] },
  { name: '-r 1e3', args: ['-r', '1e3', S('mixed.qcow2'), 'out'] },
  { name: '-r empty', args: ['-r', '', S('mixed.qcow2'), 'out'] },
  { name: '-r 8E (out of range)', args: ['-r', '8E', S('mixed.qcow2'), 'out'] },
  { name: '-r 2^63 (out of range)', args: ['-r', '9223372036854775808', S('mixed.qcow2'), 'out'] },
  { name: '-r 2^63-1', args: ['-r', '9223372036854775807', '-O', 'qcow2', S('mixed.qcow2'), 'out'] },
  // Fast enough that neither waits noticeably, slow enough that the bucket is in use.
  { name: '-r 64M -n into a full target', args: ['-r', '64M', '-n', S('odd.raw'), 'out'], before: existing('dense.raw') },

  // -C
  { name: '-C', args: ['-C', '-O', 'qcow2', S('mixed.qcow2'), 'out'] },
  { name: '-C to raw', args: ['-C', S('sparse.raw'), 'out'] },
  { name: '-C -c', args: ['-C', '-c', '-O', 'qcow2', S('mixed.qcow2'), 'out'] },
  { name: '-C -S', args: ['-C', '-S', '4k', S('mixed.qcow2'), 'out'] },
  { name: '-C --salvage', args: ['-C', '--salvage', S('mixed.qcow2'), 'out'] },

  // --salvage and read errors
  {
    name: 'corrupt compressed cluster',
    args: [S('corrupt.qcow2'), 'out'],
    // Same message and status; what qemu wrote before failing depends on which of its 8
    // coroutines got there first (a later failed read cancels earlier chunks' writes).
    check: 'none',
  },
  { name: 'corrupt compressed cluster, -m 1', args: ['-m', '1', S('corrupt.qcow2'), '-O', 'qcow2', 'out'] },
  { name: 'corrupt compressed cluster, --salvage', args: ['--salvage', S('corrupt.qcow2'), 'out'] },
  { name: 'corrupt compressed cluster, --salvage -q', args: ['--salvage', '-q', '-O', 'qcow2', S('corrupt.qcow2'), 'out'] },
  { name: '--salvage on a good image', args: ['--salvage', '-O', 'qcow2', S('mixed.qcow2'), 'out'] },

  { name: '--salvage -p on the corrupt image', args: ['--salvage', '-p', S('corrupt.qcow2'), 'out'] },
  { name: '--salvage -S 0 to qcow2', args: ['--salvage', '-S', '0', '-O', 'qcow2', S('corrupt.qcow2'), 'out'] },
  { name: '-n -S 4k into a raw full of data', args: ['-n', '-S', '4k', S('odd.raw'), 'out'], before: existing('dense.raw') },
  { name: '-n -S 0 into a raw full of data', args: ['-n', '-S', '0', S('odd.raw'), 'out'], before: existing('dense.raw') },
  { name: '-n -C into a raw', args: ['-n', '-C', S('mixed.qcow2'), 'out'], before: existing('tgt8m.raw') },
  { name: '-l with -B', args: ['-l', 's1', '-O', 'qcow2', '-B', S('flatbase.qcow2'), '-F', 'qcow2', S('snap.qcow2'), 'out'] },

  // Block-status errors: qcow2's corruption line once (read-only: "Image is corrupt"), then
  // qemu-img's error; with --salvage each failing sector is warned about (in the first pass
  // and again in the copy) and copied as data, so its read error is warned about too.
  { name: 'unaligned L2 offset', args: [S('badl1.qcow2'), 'out'] },
  { name: 'unaligned L2 offset, --salvage', args: ['--salvage', S('badl1.qcow2'), 'out'] },
  { name: 'unaligned L2 offset, --salvage -q', args: ['--salvage', '-q', '-O', 'qcow2', S('badl1.qcow2'), 'out'] },
  { name: 'unaligned L2 offset, --salvage -p', args: ['--salvage', '-p', S('badl1.qcow2'), 'out'] },
  { name: 'unaligned L2 offset, --salvage -c', args: ['--salvage', '-c', '-O', 'qcow2', S('badl1.qcow2'), 'out'], check: 'compressed' },
  { name: 'unaligned L2 offset after good data', args: [S('badl1late.qcow2'), 'out'] },
  { name: 'unaligned L2 offset after good data, -p', args: ['-p', S('badl1late.qcow2'), '-O', 'qcow2', 'out'] },
  { name: 'unaligned L2 offset after good data, --salvage', args: ['--salvage', '-O', 'qcow2', S('badl1late.qcow2'), 'out'] },
  { name: 'unaligned L2 offset after good data, --salvage -S 0', args: ['--salvage', '-S', '0', S('badl1late.qcow2'), 'out'] },
  { name: 'unaligned cluster in an L2 entry', args: [S('badl2.qcow2'), 'out'] },
  { name: 'unaligned cluster in an L2 entry, --salvage', args: ['--salvage', S('badl2.qcow2'), 'out'] },
  { name: 'unaligned cluster in an L2 entry, --salvage to qcow2', args: ['--salvage', '-O', 'qcow2', S('badl2.qcow2'), 'out'] },
  { name: 'unaligned cluster in an L2 entry, --salvage -p -q', args: ['--salvage', '-p', '-q', S('badl2.qcow2'), 'out'] },
  { name: 'unaligned cluster in an L2 entry, --salvage -n into a filled qcow2', args: ['--salvage', '-n', '-O', 'qcow2', S('badl2.qcow2'), 'out'], before: existing('filled.qcow2') },
  { name: '-B relative to a target in a subdirectory', args: ['-O', 'qcow2', '-B', '../../../src/flatbase.qcow2', '-F', 'qcow2', S('top.qcow2'), 'sub/out'], before: (d) => mkdirSync(join(d, 'sub')), files: ['sub/out'] },
  { name: '-p with two sources', args: ['-p', S('mixed.qcow2'), S('top.qcow2'), '-O', 'qcow2', 'out'] },
  { name: '-p -n', args: ['-p', '-n', S('mixed.qcow2'), 'out'], before: existing('tgt8m.raw') },

  // --image-opts
  { name: '--image-opts', args: ['--image-opts', `driver=qcow2,file.filename=${S('mixed.qcow2')}`, '-O', 'qcow2', 'out'] },
  { name: '--image-opts without driver', args: ['--image-opts', `file.filename=${S('mixed.qcow2')}`, 'out'] },
  { name: '--image-opts with -f', args: ['--image-opts', '-f', 'qcow2', `driver=qcow2,file.filename=${S('mixed.qcow2')}`, 'out'] },
  { name: '--image-opts bad syntax', args: ['--image-opts', 'driver=qcow2,,,=', 'out'] },
  { name: '--image-opts with an unknown driver', args: ['--image-opts', `driver=nosuch,file.filename=${S('mixed.qcow2')}`, 'out'] },
  { name: 'file: prefix on the source', args: [`file:${S('mixed.qcow2')}`, 'out'] },
  { name: 'file: prefix on a missing source', args: ['file:nonexistent', 'out'] },

  // Errors
  { name: 'no arguments', args: [], spawn: true },
  { name: 'only an output name', args: ['out'] },
  { name: 'missing source', args: ['nonexistent.qcow2', 'out'] },
  { name: 'unknown source format', args: ['-f', 'bogus', S('mixed.qcow2'), 'out'] },
  { name: 'wrong source format', args: ['-f', 'vmdk', S('mixed.qcow2'), 'out'], knownDifference: 'tsimg has no vmdk driver to reject the file with' },
  { name: 'unknown output format', args: ['-O', 'bogus', S('mixed.qcow2'), 'out'] },
  { name: 'output format without create', args: ['-O', 'host_device', S('mixed.qcow2'), 'out'], knownDifference: 'tsimg has no host_device driver' },
  { name: 'missing option argument', args: [S('mixed.qcow2'), 'out', '-O'] },
  { name: 'unknown option', args: ['-Z', S('mixed.qcow2'), 'out'] },
  { name: 'unknown long option', args: ['--bogus', S('mixed.qcow2'), 'out'] },
  { name: '--skip-broken-bitmaps without --bitmaps', args: ['--skip-broken-bitmaps', S('mixed.qcow2'), 'out'] },
  { name: '--bitmaps with two sources', args: ['--bitmaps', '-O', 'qcow2', S('mixed.qcow2'), S('mixed.qcow2'), 'out'] },
  { name: '--bitmaps to raw', args: ['--bitmaps', S('mixed.qcow2'), 'out'] },
  { name: 'output in a missing directory', args: ['-O', 'qcow2', S('mixed.qcow2'), 'nodir/out'] },
  { name: 'source is a directory', args: ['.', 'out'] },
  { name: 'file: prefix on the target', args: ['-O', 'qcow2', S('mixed.qcow2'), 'file:out'] },
  { name: 'target is the source (image lock)', args: [S('sparse.raw'), S('sparse.raw')], files: [] },
  { name: 'target is the source backing file (image lock)', args: ['-O', 'qcow2', S('top.qcow2'), S('base0.raw')], files: [] },
  { name: 'target is the source data file (image lock)', args: [S('df.qcow2'), S('df.data')], files: [] },
  { name: '-n target is the source (image lock)', args: ['-n', S('sparse.raw'), S('sparse.raw')], files: [] },
  { name: 'target is a symlink to the source (image lock)', args: [S('sparse.raw'), 'link'], before: (d) => symlinkSync(join(d, '..', '..', 'src', 'sparse.raw'), join(d, 'link')), files: [] },
];

describeQemu('tsimg convert matches qemu-img convert', () => {
  let work: { dir: string; cleanup: () => void };
  // One row at a time: in-process runs chdir (qemu-img and tsimg of a row run side by side).
  const gate = limiter(1);
  const results = new Map<number, ReturnType<typeof runCase>>();
  beforeAll(() => {
    work = tempDir('tsimg-convert-');
    makeSources(work.dir);
    // Start every case now; each test awaits its own.
    cases.forEach((c, i) => {
      const p = gate(() => runCase(work.dir, i, c));
      p.catch(() => undefined);
      results.set(i, p);
    });
  });
  // CONVERT_KEEP=1 keeps the case directories for a closer look.
  afterAll(() => (process.env.CONVERT_KEEP ? console.log(`kept ${work.dir}`) : work.cleanup()));

  describe.each(cases.map((c, i) => [c.name, i, c] as const))('%s', (_name, i, c) => {
    (c.failing ? it.fails : it)(c.failing ? `known bug: ${c.failing}` : 'same status, output and files', async () => {
      const r = await results.get(i)!;
      const ts = textOf(r.ts);
      const want = expectedText(r.qemu);
      if (c.knownDifference) {
        ts.stderr = want.stderr = '';
        ts.stdout = want.stdout = '';
      }
      // Strings, so a failure shows the whole text of both sides.
      expect(JSON.stringify(ts, null, 1), `qemu-img convert ${c.args.join(' ')}`).toBe(JSON.stringify(want, null, 1));
      const check = c.knownDifference && c.check !== 'none' ? 'contents' : c.check;
      expect(compareFiles({ ...c, check }, r)).toEqual([]);
    });
  });
});
