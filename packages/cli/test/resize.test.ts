/**
 * Cross-checks of `tsimg resize` against `qemu-img resize` (QEMU 7.2) on qcow2 layouts: for each
 * fixture and command line, qemu-img and tsimg run on two copies of the same files and must print
 * the same stdout and stderr, exit with the same status and leave every file byte-identical:
 * several cluster sizes and refcount widths, extended L2, v2, lazy refcounts; growing with each
 * preallocation mode (L1 table growth across clusters, refcount table growth), shrinking with and
 * without data past the new end. Needs `npm run build` first (resize-cli.test.ts has the rest).
 */
import { afterAll, beforeAll, it } from 'vitest';
import { describeQemu } from '../../../test-images/qemu.js';
import { ResizeBench } from './resize-harness.js';

let bench: ResizeBench;
const expectAllSame = (setup: string, argLists: string[][]): void => bench.expectAllSame(setup, argLists);

const WRITE_SOME = "qemu-io -c 'write -P 1 0 300k' -c 'write -P 3 900k 5k' a.qcow2";

describeQemu('tsimg resize vs qemu-img resize: qcow2 layouts', () => {
  beforeAll(() => {
    bench = new ResizeBench('tsimg-resize-');
  });
  afterAll(() => bench.cleanup());

  it('grows and shrinks qcow2 images of every cluster size and refcount width alike', () => {
    for (const [cs, rb] of [['512', '16'], ['4k', '1'], ['64k', '64'], ['2M', '16']] as const) {
      expectAllSame(`qemu-img create -f qcow2 -o cluster_size=${cs},refcount_bits=${rb} a.qcow2 1M && ${WRITE_SOME}`, [
        ['a.qcow2', '+1M'],
        ['a.qcow2', '5G'],
        ['--shrink', 'a.qcow2', '-512K'],
        ['--shrink', 'a.qcow2', '100K'],
        ['--preallocation=metadata', 'a.qcow2', '6M'],
        ['--preallocation=falloc', 'a.qcow2', '6M'],
        ['--preallocation=full', 'a.qcow2', '+3M'],
      ]);
    }
  });

  it('grows the L1 table across clusters and the refcount table on big grows', () => {
    // 512-byte clusters: one L1 cluster maps 2 MiB, one refcount table cluster 8 MiB.
    expectAllSame(`qemu-img create -f qcow2 -o cluster_size=512 a.qcow2 1M && ${WRITE_SOME}`, [
      ['a.qcow2', '+100M'],
      ['--preallocation=metadata', 'a.qcow2', '12M'],
      ['--preallocation=falloc', 'a.qcow2', '12M'],
      ['--preallocation=full', 'a.qcow2', '10M'],
    ]);
    // Shrinking frees L2 tables and refcount blocks, and cuts the file.
    expectAllSame("qemu-img create -f qcow2 -o cluster_size=512,refcount_bits=64 a.qcow2 10M && qemu-io -c 'write -P 1 0 3M' a.qcow2", [
      ['--preallocation=falloc', 'a.qcow2', '14M'],
      ['--shrink', 'a.qcow2', '10k'],
      ['--shrink', 'a.qcow2', '1M'],
    ]);
  });

  it('handles unaligned ends, extended L2, v2 and lazy refcounts alike', () => {
    for (const opts of ['extended_l2=on', 'cluster_size=32k,extended_l2=on', 'compat=0.10', 'lazy_refcounts=on']) {
      expectAllSame(`qemu-img create -f qcow2 -o ${opts} a.qcow2 1000k && ${WRITE_SOME}`, [
        ['a.qcow2', '+1M'],
        ['--shrink', 'a.qcow2', '-512K'],
        ['--shrink', 'a.qcow2', '999k'],
        ['--preallocation=metadata', 'a.qcow2', '3M'],
        ['--preallocation=falloc', 'a.qcow2', '3M'],
        ['--preallocation=full', 'a.qcow2', '+1000k'],
        ['--preallocation=metadata', 'a.qcow2', '+1001k'],
      ]);
    }
  });
});
