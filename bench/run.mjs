#!/usr/bin/env node
// Benchmarks: time tsimg against qemu-img on the same inputs in the same run, and print the
// ratio tsimg / qemu-img (wall time, median of N runs, the two alternating), the ratio of the two
// fastest runs, the CPU time ratio (steadier than wall time on a shared machine) and tsimg's
// peak memory. Never part of
// `npm test`. Results and what they mean: docs/performance.md.
//
//   npm run bench               # all rows
//   npm run bench -- convert    # rows whose name contains "convert"
//   BENCH_RUNS=5 npm run bench
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, openSync, writeSync, closeSync, ftruncateSync, statSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpus, totalmem } from 'node:os';
import { prng } from '../test-images/prng.mjs';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const out = join(root, 'bench', 'out');
const tsimg = join(root, 'packages', 'cli', 'bin', 'tsimg.js');
const floorScript = join(root, 'bench', 'floor.mjs');
const FLOOR = '(Node floor)';
const runs = Number(process.env.BENCH_RUNS ?? 3);
const filter = process.argv[2] ?? '';
mkdirSync(out, { recursive: true });


/**
 * A raw image of `size` bytes, in 1 MiB blocks: 40% holes, 20% zero-filled but allocated,
 * 20% random, 20% text-like (compressible). Made once and reused.
 */
function makeMixed(path, size) {
  if (existsSync(path) && statSync(path).size === size) return;
  const fd = openSync(path, 'w');
  ftruncateSync(fd, size);
  const rnd = prng(0x5eed);
  const block = Buffer.alloc(1 << 20);
  const words = ['qemu', 'image', 'cluster', 'table', 'refcount', 'block', 'data', 'zero', 'tsimg', 'sector'];
  for (let off = 0; off < size; off += block.length) {
    const kind = rnd() % 10;
    if (kind < 4) continue; // hole
    if (kind < 6) block.fill(0);
    else if (kind < 8) for (let i = 0; i < block.length; i += 4) block.writeUInt32LE(rnd(), i);
    else {
      let i = 0;
      while (i < block.length) {
        const w = words[rnd() % words.length] + (rnd() % 7 === 0 ? '\n' : ' ');
        i += block.write(w, i);
      }
    }
    writeSync(fd, block, 0, block.length, off);
  }
  closeSync(fd);
}

// NODE_EXTRA_CA_CERTS makes every Node process read and parse that certificate bundle before
// running any code (~30 ms of a 45 ms `node -e 0` on this machine kind, whose sandbox sets it
// for every program). tsimg makes no TLS connections and users' machines rarely set it, so
// both tools run without it; the header line says when it was removed.
const env = { ...process.env };
const strippedCa = env.NODE_EXTRA_CA_CERTS !== undefined;
delete env.NODE_EXTRA_CA_CERTS;

// /usr/bin/time (GNU) adds CPU time and peak memory; without it only wall time is shown.
const gnuTime = existsSync('/usr/bin/time') ? '/usr/bin/time' : undefined;

/**
 * One run: wall seconds, CPU seconds (user + sys, children included) and peak RSS in MiB.
 * Before it (untimed), `output` is removed and dirty pages are written back: otherwise a run
 * pays for truncating the previous run's output, and the kernel throttles whichever tool
 * happens to write while earlier runs' gigabytes are still being flushed — the same command
 * then varied 0.1–1.1 s here.
 */
function time(cmd, args, output) {
  if (output !== undefined) rmSync(output, { force: true });
  spawnSync('sync');
  const t0 = process.hrtime.bigint();
  // qemu-img's curl driver has hung on this row (no progress, no exit): coreutils' timeout
  // kills a run after ten minutes, which fails its row rather than the whole bench.
  const limited = ['timeout', '-s', 'KILL', '600', cmd, ...args];
  const opts = { stdio: ['ignore', 'ignore', 'pipe'], env };
  const r = gnuTime ? spawnSync(gnuTime, ['-f', '@@ %U %S %M', ...limited], opts) : spawnSync(limited[0], limited.slice(1), opts);
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const err = String(r.stderr);
  // timeout answers 137 after its SIGKILL (124 with other signals).
  if ((r.status === 137 || r.status === 124) && wall >= 600) throw new Error(`${cmd} ${args.join(' ')} took over 600 s`);
  // qemu's PBKDF2 calibration (LUKS rows) sometimes measures 0 ms of CPU and gives up: run again.
  if (r.status !== 0 && err.includes('Unable to get accurate CPU usage')) return time(cmd, args, output);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${err}`);
  const m = /@@ ([\d.]+) ([\d.]+) (\d+)/.exec(err);
  return { wall, cpu: m ? Number(m[1]) + Number(m[2]) : NaN, rss: m ? Number(m[3]) / 1024 : NaN };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const GiB = 1 << 30;
const MiB = 1 << 20;
const mixed = join(out, 'mixed-1g.raw');
const small = join(out, 'mixed-256m.raw');
const qcow = join(out, 'mixed-1g.qcow2');
const qcowZ = join(out, 'mixed-256m-zstd.qcow2');
const qcowC = join(out, 'mixed-256m-zlib.qcow2');
const sparse = join(out, 'sparse-8t.qcow2');
const copy = join(out, 'mixed-1g-copy.qcow2');

console.log(`inputs in ${out} (node ${process.version}, ${cpus().length} cores, ${Math.round(totalmem() / GiB)} GiB)`);
if (strippedCa) console.log('NODE_EXTRA_CA_CERTS removed from the environment of the timed commands (see bench/run.mjs)');
makeMixed(mixed, GiB);
makeMixed(small, 256 * MiB);
execFileSync('qemu-img', ['convert', '-O', 'qcow2', mixed, qcow]);
execFileSync('qemu-img', ['convert', '-O', 'qcow2', mixed, copy]);
execFileSync('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', small, qcowZ]);
execFileSync('qemu-img', ['convert', '-c', '-O', 'qcow2', small, qcowC]);
execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', sparse, '8T']);
execFileSync('qemu-io', ['-c', 'write -P 1 0 1M', '-c', 'write -P 2 4T 1M', '-c', 'write -P 3 8191G 1M', sparse]);

// LUKS: a small iter-time, so that unlocking is cheap and both tools' PBKDF2 calibration
// (about half a second of CPU each, qemu's rule) is the only key work of the encrypting row.
const luks = join(out, 'mixed-1g-luks.qcow2');
const secret = ['--object', 'secret,id=sec0,data=bench'];
const luksCreate = 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10';
for (let i = 0; ; i++) {
  // This qemu's calibration sometimes measures 0 ms and gives up ("Unable to get accurate CPU usage").
  const r = spawnSync('qemu-img', ['convert', ...secret, '-O', 'qcow2', '-o', luksCreate, mixed, luks], { encoding: 'utf8' });
  if (r.status === 0) break;
  if (i >= 4) throw new Error(r.stderr);
}
const luksOpts = `driver=qcow2,file.filename=${luks},encrypt.key-secret=sec0`;

// Chain and snapshot workloads change their image: each run gets a fresh copy (untimed).
const prealloc = join(out, 'prealloc-8g.qcow2');
const snapped = join(out, 'prealloc-8g-snap.qcow2');
const huge = join(out, 'sparse-1t.qcow2');
const base = join(out, 'base-1g.qcow2');
const top = join(out, 'top-1g.qcow2');
const newBase = join(out, 'newbase-1g.qcow2');
execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', prealloc, '8G']);
execFileSync('cp', ['--sparse=always', prealloc, snapped]);
execFileSync('qemu-img', ['snapshot', '-c', 's0', snapped]);
execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', huge, '1T']);
execFileSync('qemu-io', ['-c', 'write -P 1 0 1M', '-c', 'write -P 2 1023G 1M', huge]);
execFileSync('qemu-img', ['convert', '-O', 'qcow2', mixed, base]);
// Relative backing name: each tool's copy of the chain (in out/t, out/q) commits into its own base.
execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base-1g.qcow2', '-F', 'qcow2', top, '1G']);
for (const d of ['t', 'q']) execFileSync('mkdir', ['-p', join(out, d)]);
execFileSync('qemu-io', ['-c', 'write -P 7 0 256M', '-c', 'write -P 8 512M 256M', top]);
// The new base: the old one with 10 % of its clusters changed.
execFileSync('cp', ['--sparse=always', base, newBase]);
execFileSync('qemu-io', ['-c', 'write -P 9 100M 50M', '-c', 'write -P 9 700M 52M', newBase]);

// Remote reads: a 1 GiB cloud-style (compressed) qcow2 served by test-images/http-server.mjs in a
// process of its own (the timed commands run synchronously here). Made once, only when a row
// that reads it is asked for: compressing 1 GiB takes a while.
const HTTP_ROW = 'convert 1 GiB -c qcow2→raw over http';
const HTTP_VS_FILE = `${HTTP_ROW} (vs tsimg on the file)`;
const HTTP_VS_QEMU = `${HTTP_ROW} (vs qemu over http)`;
const qcowC1g = join(out, 'mixed-1g-zlib.qcow2');
let httpServer;
let httpUrl = 'http://127.0.0.1:9';
if (!filter || HTTP_VS_FILE.includes(filter) || HTTP_VS_QEMU.includes(filter)) {
  if (!existsSync(qcowC1g)) execFileSync('qemu-img', ['convert', '-c', '-W', '-m', '8', '-O', 'qcow2', mixed, qcowC1g]);
  // --big-reads: ranges sent in one piece, as sendfile servers do (test-images/http-server.mjs).
  httpServer = spawn(process.execPath, [join(root, 'test-images', 'http-server.mjs'), out, '0', '--big-reads'], { stdio: ['ignore', 'pipe', 'inherit'] });
  httpUrl = await new Promise((resolve, reject) => {
    httpServer.stdout.once('data', (d) => resolve(String(d).trim()));
    httpServer.once('exit', (code) => reject(new Error(`http server exited (${code})`)));
  });
}

/**
 * Fresh copies ([from, to] pairs) before each run of the side about to run: `t` for tsimg (or
 * the floor), `q` for the other command. Only that side's: a chain row's copies are ~1 GB.
 */
const fresh = (t, q) => (side) => {
  for (const [from, to] of side === 't' ? t : q) execFileSync('cp', ['--sparse=always', from, to]);
};

const o = (name) => join(out, name);
// The HTTP rows compare reading over HTTP with reading the file: their outputs go to /dev/shm,
// where a run does not pay for the other's gigabyte of disk writeback (here that swung one
// run of the same command from 1.7 to 5 s, mostly system time in pwrite).
const shm = existsSync('/dev/shm') ? join('/dev/shm', `tsimg-bench-${process.pid}`) : out;
mkdirSync(shm, { recursive: true });
const inShm = (name) => join(shm, name);
/** Each tool's own copy of the bench chain (top over its base), for the commit and rebase rows. */
const freshChain = fresh([[base, o('t/base-1g.qcow2')], [top, o('t/top.qcow2')]], [[base, o('q/base-1g.qcow2')], [top, o('q/top.qcow2')]]);
// [name, tsimg args, qemu-img args (or a shell line), target ratio]
const rows = [
  ['convert raw→qcow2', ['convert', '-O', 'qcow2', mixed, o('t.qcow2')], ['convert', '-O', 'qcow2', mixed, o('q.qcow2')], 1.0],
  ['convert qcow2→raw', ['convert', '-O', 'raw', qcow, o('t.raw')], ['convert', '-O', 'raw', qcow, o('q.raw')], 1.0],
  [
    'convert -c zstd (vs qemu -W -m 8)',
    ['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', small, o('tz.qcow2')],
    ['convert', '-c', '-W', '-m', '8', '-O', 'qcow2', '-o', 'compression_type=zstd', small, o('qz.qcow2')],
    1.0,
  ],
  [
    'convert -c zlib (vs qemu -W -m 8)',
    ['convert', '-c', '-O', 'qcow2', small, o('tc.qcow2')],
    ['convert', '-c', '-W', '-m', '8', '-O', 'qcow2', small, o('qc.qcow2')],
    0.6,
  ],
  ['convert LUKS qcow2→raw', ['convert', ...secret, '--image-opts', luksOpts, '-O', 'raw', o('tl.raw')],
    ['convert', ...secret, '--image-opts', luksOpts, '-O', 'raw', o('ql.raw')], 1.0],
  ['convert raw→LUKS qcow2', ['convert', ...secret, '-O', 'qcow2', '-o', luksCreate, mixed, o('tl.qcow2')],
    ['convert', ...secret, '-O', 'qcow2', '-o', luksCreate, mixed, o('ql.qcow2')], 1.0],
  ['convert compressed qcow2→raw', ['convert', '-O', 'raw', qcowC, o('tcr.raw')], ['convert', '-O', 'raw', qcowC, o('qcr.raw')], 1.0],
  // qemu-img cannot write to a pipe ("Could not resize file"): its raw copy goes to a file.
  ['checksum (qemu: -O raw + sha256sum)', ['checksum', qcow],
    `qemu-img convert -O raw ${qcow} ${o('qsum.raw')} && sha256sum ${o('qsum.raw')} && rm -f ${o('qsum.raw')}`, 1.0],
  ['convert raw→qcow2 - (qemu: a file)', ['convert', '-O', 'qcow2', mixed, '-'], ['convert', '-O', 'qcow2', mixed, o('qst.qcow2')], 1.0],
  ['compare 1 GiB qcow2 pair', ['compare', qcow, copy], ['compare', qcow, copy], 1.0],
  ['map 8 TiB sparse', ['map', '--output=json', sparse], ['map', '--output=json', sparse], 1.0],
  // Start-up bound: qemu-img answers in ~5 ms, `node -e 0` alone takes ~60 ms. No target.
  ['info', ['info', qcow], ['info', qcow], null],
  // [name, tsimg args, qemu-img args, target, prepare(side) (before each run of that side, untimed)]
  ['snapshot -c, 8 GiB allocated', ['snapshot', '-c', 's1', o('ts.qcow2')], ['snapshot', '-c', 's1', o('qs.qcow2')], 1.0,
    fresh([[prealloc, o('ts.qcow2')]], [[prealloc, o('qs.qcow2')]])],
  ['snapshot -d, 8 GiB allocated', ['snapshot', '-d', 's0', o('tsd.qcow2')], ['snapshot', '-d', 's0', o('qsd.qcow2')], 1.0,
    fresh([[snapped, o('tsd.qcow2')]], [[snapped, o('qsd.qcow2')]])],
  ['resize 1 TiB +1T', ['resize', o('tr.qcow2'), '+1T'], ['resize', o('qr.qcow2'), '+1T'], 1.0,
    fresh([[huge, o('tr.qcow2')]], [[huge, o('qr.qcow2')]])],
  ['commit 1 GiB top (512 MiB written)', ['commit', o('t/top.qcow2')], ['commit', o('q/top.qcow2')], 1.0,
    freshChain],
  ['rebase 1 GiB onto a base 10 % apart', ['rebase', '-b', newBase, '-F', 'qcow2', o('t/top.qcow2')], ['rebase', '-b', newBase, '-F', 'qcow2', o('q/top.qcow2')], 1.0,
    freshChain],
  // [name, tsimg args, other args, target, prepare, 'tsimg': the other command is tsimg too,
  //  'floor': bench/floor.mjs runs instead of tsimg]
  // What is left for tsimg on the two rows above: bench/floor.mjs does only their data I/O from
  // Node (no qcow2, no metadata), against the same qemu-img command. No target: a floor at or
  // over 1.0 means no Node program can meet the row's.
  [`commit ${FLOOR}, one write at a time`, ['commit', o('t/top.qcow2'), o('t/base-1g.qcow2'), '1'], ['commit', o('q/top.qcow2')], null,
    freshChain, 'floor'],
  [`commit ${FLOOR}, 8 writes at once`, ['commit', o('t/top.qcow2'), o('t/base-1g.qcow2'), '8'], ['commit', o('q/top.qcow2')], null,
    freshChain, 'floor'],
  [`rebase ${FLOOR}`, ['rebase', base, newBase, o('t/top.qcow2')], ['rebase', '-b', newBase, '-F', 'qcow2', o('q/top.qcow2')], null,
    freshChain, 'floor'],
  [HTTP_VS_FILE, ['convert', '-O', 'raw', `${httpUrl}/mixed-1g-zlib.qcow2`, inShm('th.raw')],
    ['convert', '-O', 'raw', qcowC1g, inShm('tl.raw')], 1.5, undefined, 'tsimg'],
  // qemu-img's curl driver on the same URL (it hung once here, under load, for minutes).
  [HTTP_VS_QEMU, ['convert', '-O', 'raw', `${httpUrl}/mixed-1g-zlib.qcow2`, inShm('th.raw')],
    ['convert', '-O', 'raw', `${httpUrl}/mixed-1g-zlib.qcow2`, inShm('qh.raw')], 1.0],
];

console.log(
  `\n${'workload'.padEnd(36)} ${'tsimg s'.padStart(8)} ${'qemu s'.padStart(8)} ${'ratio'.padStart(6)} ${'min'.padStart(5)} ${'target'.padStart(7)}` +
    `  ${'cpu t/q'.padStart(12)} ${'cpu ratio'.padStart(9)} ${'tsimg MiB'.padStart(9)}`,
);
for (const [name, targs, qargs, target, prepare, other] of rows) {
  if (filter && !name.includes(filter)) continue;
  // tsimg and qemu-img alternate, so a burst of load elsewhere on the machine hits both.
  const t = [];
  const q = [];
  try {
    for (let i = 0; i < runs; i++) {
      // A convert's output is its last argument.
      const output = (args) => (args[0] === 'convert' ? args[args.length - 1] : undefined);
      // Fresh copies before each of the two commands, not once for both: on ext4 here the
      // command run first after the copies took twice as long as the one run second (qemu-img
      // commit 0.63–0.80 s first, 0.31–0.35 s second; bench/floor.mjs the same way round).
      prepare?.('t');
      t.push(time(process.execPath, [other === 'floor' ? floorScript : tsimg, ...targs], other === 'floor' ? undefined : output(targs)));
      prepare?.('q');
      q.push(typeof qargs === 'string' ? time('sh', ['-c', qargs]) : other === 'tsimg' ? time(process.execPath, [tsimg, ...qargs], output(qargs)) : time('qemu-img', qargs, output(qargs)));
    }
  } catch (err) {
    console.log(`${name.padEnd(36)} failed: ${String(err.message).split('\n')[0]}`);
    continue;
  }
  const tw = median(t.map((x) => x.wall));
  const qw = median(q.map((x) => x.wall));
  const tc = median(t.map((x) => x.cpu));
  const qc = median(q.map((x) => x.cpu));
  const rss = Math.max(...t.map((x) => x.rss));
  const ratio = tw / qw;
  const minRatio = Math.min(...t.map((x) => x.wall)) / Math.min(...q.map((x) => x.wall));
  console.log(
    `${name.padEnd(36)} ${tw.toFixed(3).padStart(8)} ${qw.toFixed(3).padStart(8)} ${ratio.toFixed(2).padStart(6)} ${minRatio.toFixed(2).padStart(5)} ${(target === null ? '—' : '≤ ' + target.toFixed(1)).padStart(7)}` +
      `  ${(tc.toFixed(2) + '/' + qc.toFixed(2)).padStart(12)} ${(tc / qc).toFixed(2).padStart(9)} ${rss.toFixed(0).padStart(9)}` +
      (target === null || ratio <= target ? '' : '  (over)'),
  );
}
httpServer?.kill();
if (shm !== out) rmSync(shm, { recursive: true, force: true });
