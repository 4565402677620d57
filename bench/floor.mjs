#!/usr/bin/env node
// The least a Node program can take for the bench's commit and rebase rows: only the data I/O
// those commands must do, with no qcow2 metadata, block status, locks or chain to open. It
// shows what is left for tsimg between Node's start-up and the kernel's copies (bench rows
// "… Node floor"; docs/performance.md, seventh session).
//
//   node bench/floor.mjs commit TOP BASE [IN_FLIGHT]
//     reads 512 MiB of TOP in 1 MiB requests and writes them into BASE (the first half over
//     BASE's clusters, the second half appended, as the bench chain's commit does), IN_FLIGHT
//     pieces at once (1: one write at a time in order with four reads ahead, as tsimg's commit
//     loop does), then fdatasync and the truncate that empties TOP.
//   node bench/floor.mjs rebase OLD NEW TOP
//     reads 207 MiB of OLD and of NEW (what img_rebase reads on the bench chain) in 1 MiB
//     requests, 4 pairs at once, compares them 64 KiB at a time, rewrites TOP's first cluster.
//
// Host offsets are the bench images' data area from their first cluster on, not the exact
// clusters the commands touch: the volume and request sizes are theirs.
import fs from 'node:fs';

const MiB = 1 << 20;
const FIRST = 0x50000; // the bench images' first data cluster

const pread = (fd, buf, pos) => new Promise((resolve, reject) => fs.read(fd, buf, 0, buf.length, pos, (e) => (e ? reject(e) : resolve())));
const pwrite = (fd, buf, pos) => new Promise((resolve, reject) => fs.write(fd, buf, 0, buf.length, pos, (e) => (e ? reject(e) : resolve())));
/** A 1 MiB buffer in its own wasm memory: page-aligned, as tsimg's request buffers are. */
const buffer = () => Buffer.from(new WebAssembly.Memory({ initial: 16 }).buffer, 0, MiB);

/** Runs `job(i, w)` for i in [0, count) on `width` workers w, each taking the next i when its last is done. */
async function inParallel(count, width, job) {
  let next = 0;
  const worker = async (_, w) => {
    while (next < count) await job(next++, w);
  };
  await Promise.all(Array.from({ length: width }, worker));
}

async function commit(topPath, basePath, inFlight = 1) {
  const top = fs.openSync(topPath, 'r+');
  const base = fs.openSync(basePath, 'r+');
  const baseSize = fs.fstatSync(base).size;
  const pieces = 512;
  const target = (i) => (i < pieces / 2 ? FIRST + i * MiB : baseSize + (i - pieces / 2) * MiB);
  if (inFlight === 1) {
    // One write at a time in order, the reads of the next four pieces under way meanwhile: the
    // shape of tsimg's commit loop.
    const ring = Array.from({ length: 4 }, buffer);
    const reads = ring.map((buf, i) => pread(top, buf, FIRST + i * MiB));
    for (let i = 0; i < pieces; i++) {
      await reads[i];
      await pwrite(base, ring[i % 4], target(i));
      if (i + 4 < pieces) reads.push(pread(top, ring[i % 4], FIRST + (i + 4) * MiB));
    }
  } else {
    // Each of `inFlight` workers reads a piece and writes it: writes overlap, as qemu's 16
    // mirror operations do.
    const buffers = Array.from({ length: inFlight }, buffer);
    await inParallel(pieces, inFlight, async (i, w) => {
      await pread(top, buffers[w], FIRST + i * MiB);
      await pwrite(base, buffers[w], target(i));
    });
  }
  fs.fdatasyncSync(base);
  fs.ftruncateSync(top, 4 * 65536);
}

async function rebase(oldPath, newPath, topPath) {
  const a = fs.openSync(oldPath, 'r');
  const b = fs.openSync(newPath, 'r');
  let differ = 0;
  const pairs = Array.from({ length: 4 }, () => [buffer(), buffer()]);
  await inParallel(207, 4, async (i, w) => {
    const [x, y] = pairs[w];
    await Promise.all([pread(a, x, FIRST + i * MiB), pread(b, y, FIRST + i * MiB)]);
    for (let j = 0; j < MiB; j += 65536) if (x.compare(y, j, j + 65536, j, j + 65536) !== 0) differ++;
  });
  const top = fs.openSync(topPath, 'r+');
  const header = Buffer.alloc(65536);
  fs.readSync(top, header, 0, header.length, 0);
  fs.writeSync(top, header, 0, header.length, 0);
  fs.fdatasyncSync(top);
  return differ;
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'commit') await commit(args[0], args[1], Number(args[2] ?? 1));
else if (mode === 'rebase') await rebase(args[0], args[1], args[2]);
else {
  console.error('usage: floor.mjs commit TOP BASE [IN_FLIGHT] | rebase OLD NEW TOP');
  process.exit(2);
}
