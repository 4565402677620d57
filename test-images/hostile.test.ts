/**
 * Hostile input: small qemu-made images, mutated deterministically (fixed seeds: absurd header
 * fields, random bytes in the header and in metadata clusters, bit flips, truncations), run
 * through `tsimg info`, `check`, `map`, `convert -O raw` and `checksum` (the ones registered; the
 * others are skipped loudly). checksum has no qemu-img counterpart: it must succeed exactly where
 * qemu-img convert -O raw does, with the value tsimg gives qemu-img's raw output. Every run must end within seconds under a 256 MiB heap, succeed or fail with
 * `tsimg: ...` lines (never a stack trace or a JavaScript error text), exit with qemu-img's
 * status (every command, every image: a difference fails the test), print check's report line
 * for line as qemu-img does, and where qemu-img can convert the image, produce the same bytes.
 * `check -r all` must make the same repairs as qemu-img, except on the images listed in
 * KNOWN_REPAIR_DIFFERENCES (qemu 7.2's own deliberate-deviation cases, explained there); that
 * list is asserted exactly, so a case that starts to match qemu-img fails until it is removed.
 *
 * The tsimg runs happen in one child process (`node --max-old-space-size=256`) that calls the
 * CLI's `main` once per run, so hundreds of runs stay cheap; a watchdog kills it on a hang and
 * carries on with the next run. Reproduce a failure with the printed seed and mutation.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeQemu, must, run, tempDir, tsimg } from './qemu.js';
import { mutateQcow2, prng, type Mutation } from './mutate.js';

const COMMANDS = ['info', 'check', 'map', 'convert', 'checksum'] as const;
type Command = (typeof COMMANDS)[number];
const CASES_PER_BASE = Number(process.env.TSIMG_HOSTILE_CASES ?? 60);
const REPAIR_CASES_PER_BASE = Number(process.env.TSIMG_HOSTILE_REPAIR_CASES ?? 15);
const RUN_TIMEOUT_MS = 10_000;
/** The runner keeps at most this much of each run's stdout and stderr. */
const OUTPUT_CAP = 8 * 1024 * 1024;
const cliEntry = fileURLToPath(new URL('../packages/cli/dist/index.js', import.meta.url));

/** Text that means a JavaScript failure leaked out instead of a qemu-style message. */
const JS_ERROR = /\n\s+at |TypeError|RangeError|ReferenceError|SyntaxError|Cannot read propert|is not a function|is not iterable|undefined|NaN|Invalid array length|Maximum call stack|ERR_[A-Z_]+|Array buffer allocation/;

interface RunOutcome {
  status: number;
  stdout: string;
  stderr: string;
  ms: number;
  heapMiB: number;
  crashed?: string;
}

/** The in-process runner: reads runs (JSON lines) on stdin, answers with one JSON line each. */
const RUNNER = `
import { main } from ${JSON.stringify(`file://${cliEntry}`)};
import { createInterface } from 'node:readline';
let current;
process.on('uncaughtException', (e) => { console.log(JSON.stringify({ id: current, crashed: String(e && e.stack || e) })); process.exit(70); });
process.on('unhandledRejection', (e) => { console.log(JSON.stringify({ id: current, crashed: 'unhandled rejection: ' + String(e && e.stack || e) })); process.exit(70); });
const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  const job = JSON.parse(line);
  current = job.id;
  console.log(JSON.stringify({ start: job.id }));
  let out = '', err = '';
  const io = { stdout: (t) => { if (out.length < ${OUTPUT_CAP}) out += t; }, stderr: (t) => { if (err.length < ${OUTPUT_CAP}) err += t; }, isTTY: false };
  const t0 = Date.now();
  let status;
  try {
    status = await Promise.race([main(job.args, io), new Promise((r) => setTimeout(() => r('timeout'), ${RUN_TIMEOUT_MS}).unref())]);
  } catch (e) {
    status = 'threw: ' + String(e && e.stack || e);
  }
  const heapMiB = Math.round(process.memoryUsage().heapUsed / 1048576);
  console.log(JSON.stringify({ id: job.id, status, stdout: out, stderr: err, ms: Date.now() - t0, heapMiB }));
}
`;

/** Runs every job through the runner process, restarting it after a crash or a hang. */
async function runAll(jobs: Array<{ id: number; args: string[] }>): Promise<Map<number, RunOutcome>> {
  const results = new Map<number, RunOutcome>();
  let pending = jobs.slice();
  while (pending.length > 0) {
    const batch = pending;
    await new Promise<void>((resolve) => {
      const child = spawn(process.execPath, ['--max-old-space-size=256', '--input-type=module', '-e', RUNNER], {
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let buf = '';
      let started: number | undefined;
      let lastStart = Date.now();
      let stderr = '';
      const watchdog = setInterval(() => {
        if (started !== undefined && Date.now() - lastStart > RUN_TIMEOUT_MS + 5000) child.kill('SIGKILL');
      }, 500);
      child.stderr.on('data', (d: Buffer) => {
        if (stderr.length < 8192) stderr += d.toString();
      });
      child.stdout.on('data', (d: Buffer) => {
        buf += d.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line.startsWith('{')) continue;
          const msg = JSON.parse(line) as Record<string, unknown>;
          if (typeof msg.start === 'number') {
            started = msg.start;
            lastStart = Date.now();
          } else if (typeof msg.id === 'number') {
            const status = typeof msg.status === 'number' ? msg.status : -1;
            results.set(msg.id, {
              status,
              stdout: String(msg.stdout ?? ''),
              stderr: String(msg.stderr ?? ''),
              ms: Number(msg.ms ?? 0),
              heapMiB: Number(msg.heapMiB ?? 0),
              crashed:
                typeof msg.crashed === 'string' ? msg.crashed : status === -1 ? `runner: ${String(msg.status)}` : undefined,
            });
            started = undefined;
          }
        }
      });
      child.on('exit', (code, signal) => {
        clearInterval(watchdog);
        if (started !== undefined && !results.has(started)) {
          results.set(started, {
            status: -1,
            stdout: '',
            stderr,
            ms: Date.now() - lastStart,
            heapMiB: -1,
            crashed: signal === 'SIGKILL' ? 'hang (killed by the watchdog)' : `runner exited (code ${code}, signal ${signal}): ${stderr.slice(-2000)}`,
          });
        }
        resolve();
      });
      for (const j of batch) child.stdin.write(`${JSON.stringify(j)}\n`);
      child.stdin.end();
    });
    const next = batch.filter((j) => !results.has(j.id));
    if (next.length === batch.length) {
      // The runner died before its first job: report them all rather than loop.
      for (const j of next) results.set(j.id, { status: -1, stdout: '', stderr: '', ms: 0, heapMiB: -1, crashed: 'runner failed to start' });
      break;
    }
    pending = next;
  }
  return results;
}

interface Base {
  name: string;
  create: string[];
  io: string[];
  prepare?: (f: string) => void;
}

const BASES: Base[] = [
  {
    name: 'v3-64k',
    create: ['-o', 'cluster_size=65536'],
    io: ['write -P 0xab 0 192k', 'write -c -P 0x11 1M 64k', 'write -z 2M 64k'],
    prepare: (f) => {
      must('qemu-img', ['snapshot', '-c', 's1', f]);
      must('qemu-io', ['-c', 'write -P 0xee 64k 64k', f]);
    },
  },
  { name: 'v2-512', create: ['-o', 'compat=0.10,cluster_size=512'], io: ['write -P 0xab 0 8k', 'write -P 0xcd 1M 4k'] },
  {
    name: 'dirty-rc8',
    create: ['-o', 'lazy_refcounts=on,refcount_bits=8,cluster_size=4096'],
    io: ['write -P 0x31 0 40k', 'write -c -P 0x32 1M 4k'],
    // qemu-io's abort leaves the dirty bit set and the refcounts stale
    prepare: (f) => void run('qemu-io', ['-c', 'write -P 0x33 2M 24k', '-c', 'abort', f]),
  },
  {
    name: 'extl2-bitmap',
    create: ['-o', 'extended_l2=on,cluster_size=32768'],
    io: ['write -P 0xab 0 100k', 'write -P 0x5a 3M 4k'],
    prepare: (f) => must('qemu-img', ['bitmap', '--add', f, 'b0']),
  },
];

function registeredCommands(): Set<string> {
  const help = tsimg(['--help']).stdout;
  // The help lists each command by its synopsis: "  info [--object objectdef] ...".
  return new Set(COMMANDS.filter((c) => new RegExp(`^\\s+${c}(\\s|$)`, 'm').test(help)));
}

function argsFor(cmd: Command, file: string, out: string): string[] {
  switch (cmd) {
    case 'info':
      return ['info', file];
    case 'check':
      return ['check', file];
    case 'map':
      return ['map', '--output=json', file];
    case 'convert':
      return ['convert', '-O', 'raw', file, out];
    case 'checksum':
      return ['checksum', file];
  }
}

/**
 * The repair cases where tsimg deliberately differs from qemu 7.2, by base image and seed, with
 * the reason. 'snapshots': qemu opens an image for `check -r` by rewriting its header when it has
 * persistent bitmaps (the extl2-bitmap base) or unknown autoclear bits, and that rewrite drops
 * every internal snapshot (check mode has not read them yet) or skips the snapshot table's
 * checks; tsimg keeps and checks them. (tsimg's check -r stores the bitmaps again after the
 * repair, as qemu's close does, so the bitmap images otherwise match.) 'failed-check': the check cannot complete on a dirty
 * lazy-refcounts image, and qemu still marks it clean on close, rewriting the header from its
 * half-loaded state; tsimg leaves an image whose check failed as it found it.
 */
const KNOWN_REPAIR_DIFFERENCES: Record<string, 'snapshots' | 'failed-check'> = {
  'v3-64k seed 51011': 'snapshots', // random header bytes reach the autoclear field
  'dirty-rc8 seed 53008': 'failed-check',
  'dirty-rc8 seed 53010': 'failed-check',
  'extl2-bitmap seed 54002': 'snapshots', // an invalid snapshot table offset qemu never looks at
  'extl2-bitmap seed 54003': 'snapshots', // an absurd snapshot count qemu never looks at
};

describeQemu('hostile images', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('tsimg-hostile-'));
  });
  afterAll(() => cleanup());

  it(`${CASES_PER_BASE * BASES.length} mutated images: no crash, no hang, qemu-img's status, same bytes`, async () => {
    const registered = registeredCommands();
    // Every command is registered now: one going missing must fail, not skip.
    expect(COMMANDS.filter((c) => !registered.has(c))).toEqual([]);
    const cmds = COMMANDS.filter((c) => registered.has(c));
    const cases: Array<{ file: string; base: string; seed: number; mutation: Mutation }> = [];
    for (const [bi, base] of BASES.entries()) {
      const src = join(dir, `${base.name}.qcow2`);
      must('qemu-img', ['create', '-f', 'qcow2', ...base.create, src, '4M']);
      for (const c of base.io) must('qemu-io', ['-c', c, src]);
      base.prepare?.(src);
      for (let k = 0; k < CASES_PER_BASE; k++) {
        const seed = 1000 * (bi + 1) + k;
        const file = join(dir, `${base.name}-${seed}.qcow2`);
        copyFileSync(src, file);
        const rand = prng(seed);
        const mutation = mutateQcow2(file, rand);
        cases.push({ file, base: base.name, seed, mutation });
      }
    }
    const jobs: Array<{ id: number; args: string[] }> = [];
    const meta: Array<{ c: (typeof cases)[number]; cmd: Command; out: string }> = [];
    cases.forEach((c) => {
      for (const cmd of cmds) {
        const out = `${c.file}.${cmd}.t.raw`;
        meta.push({ c, cmd, out });
        jobs.push({ id: jobs.length, args: argsFor(cmd, c.file, out) });
      }
    });
    const t0 = Date.now();
    const results = await runAll(jobs);
    const tsimgMs = Date.now() - t0;

    // Failures: crashes, hangs, slow runs, JavaScript error texts, converted bytes that differ
    // from qemu-img's, any exit status that differs from qemu-img's, and for check (whose
    // report is compared line by line) any difference past opening. The open-path differences
    // (exit statuses of runs where either tool failed to open, check's open-error wording) are
    // listed apart so the report says where they come from, but they fail the test as well.
    const failures: string[] = [];
    const soft: string[] = [];
    let maxMs = 0;
    let maxHeap = 0;
    for (const [id, m] of meta.entries()) {
      const r = results.get(id)!;
      const where = `${m.c.base} seed ${m.c.seed} (${m.c.mutation.kind}: ${m.c.mutation.detail}) — tsimg ${argsFor(m.cmd, 'IMG', 'OUT').join(' ')}`;
      maxMs = Math.max(maxMs, r.ms);
      maxHeap = Math.max(maxHeap, r.heapMiB);
      if (r.ms > 5000) failures.push(`${where}: slow (${r.ms} ms)`);
      if (r.crashed) {
        failures.push(`${where}: CRASH ${r.crashed.split('\n').slice(0, 4).join(' | ')}`);
        continue;
      }
      const qArgs = m.cmd === 'checksum' ? ['convert', '-O', 'raw', m.c.file, `${m.c.file}.checksum.q.raw`] : argsFor(m.cmd, m.c.file, `${m.c.file}.${m.cmd}.q.raw`);
      const q = run('qemu-img', qArgs);
      if (JS_ERROR.test(r.stderr)) failures.push(`${where}: JS error text: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
      if (r.status === 1 && !/^tsimg: /m.test(r.stderr)) failures.push(`${where}: status 1 without a tsimg: message`);
      if (m.cmd === 'check' && r.status === q.status) {
        // check is reported line by line: the same lines as qemu-img, file name aside
        const norm = (t: string): string => t.replaceAll(m.c.file, 'IMG').replace(/^qemu-img: /gm, 'tsimg: ');
        if (norm(r.stdout) !== norm(q.stdout) || norm(r.stderr) !== norm(q.stderr)) {
          const ql = norm(q.stdout + q.stderr).split('\n');
          const tl = norm(r.stdout + r.stderr).split('\n');
          if (r.stderr.length >= OUTPUT_CAP) {
            // the runner keeps the first OUTPUT_CAP characters: compare complete lines only
            tl.length = Math.max(0, tl.length - 1);
            ql.length = Math.min(ql.length, tl.length);
          }
          let k = 0;
          while (k < ql.length && ql[k] === tl[k]) k++;
          if (k === ql.length && k === tl.length) continue;
          // tsimg failing to open (the shared header code) where qemu-img got further, or two open errors worded differently
          const openOnly = tl.length <= 2 && tl[0]!.includes('Could not open');
          (openOnly ? soft : failures).push(`${where}: check output differs at line ${k + 1}:\n  qemu-img: ${ql.slice(k, k + 3).join(' | ')}\n  tsimg:    ${tl.slice(k, k + 3).join(' | ')}`);
        }
      }
      if (r.status !== q.status) {
        // A check that fails to open where qemu-img opens (or the reverse) is the shared open path's doing.
        const atOpen = /Could not open/.test(r.stderr + q.stderr);
        (m.cmd === 'check' && !atOpen ? failures : soft).push(
          `${where}: status ${r.status} (qemu-img ${q.status}); tsimg: ${r.stderr.trim().split('\n').slice(-1)[0] ?? ''} / qemu-img: ${q.stderr.trim().split('\n').slice(-1)[0] ?? ''}`,
        );
      }
      if (m.cmd === 'convert' && q.status === 0 && r.status === 0) {
        const qo = `${m.c.file}.convert.q.raw`;
        // cmp streams: a mutated size field can make the outputs gigabytes (sparse) large
        if (!existsSync(m.out) || run('cmp', ['-s', m.out, qo]).status !== 0) failures.push(`${where}: converted bytes differ from qemu-img's`);
      }
      if (m.cmd === 'checksum' && q.status === 0 && r.status === 0) {
        const ref = tsimg(['checksum', '-f', 'raw', `${m.c.file}.checksum.q.raw`]).stdout.split(' ')[0];
        if (r.stdout !== `${ref}  ${m.c.file}\n`) failures.push(`${where}: checksum ${r.stdout.trim()} is not that of qemu-img's raw output (${ref})`);
      }
      for (const f of [m.out, `${m.c.file}.${m.cmd}.q.raw`]) rmSync(f, { force: true });
    }
    console.log(
      `hostile images: ${cases.length} images × ${cmds.length} commands, tsimg total ${tsimgMs} ms, slowest run ${maxMs} ms, max heap ${maxHeap} MiB, ${failures.length} failures, ${soft.length} open-path differences from qemu-img`,
    );
    if (failures.length) console.log(`FAILURES:\n${failures.join('\n')}`);
    if (soft.length) console.warn(`\n!!! hostile images: ${soft.length} differences from qemu-img (engine/open, see the report):\n${soft.join('\n')}\n`);
    expect(failures).toEqual([]);
    expect(soft).toEqual([]);
    // 1,200 tsimg runs plus qemu-img's: 250 s when the full suite shares the two cores.
  }, 400_000);

  it(`check -r all on ${REPAIR_CASES_PER_BASE * BASES.length} mutated images: the same repairs as qemu-img`, async () => {
    if (!registeredCommands().has('check')) {
      expect.fail('tsimg check is not registered: the repair cases cannot run');
      return;
    }
    // Known, deliberate deviation: qemu 7.2 opens an image for `check -r` by rewriting its
    // header when it has persistent bitmaps or unknown autoclear bits, and that rewrite drops
    // every internal snapshot (check mode has not read them yet). tsimg keeps them, so such
    // images are compared as soft differences only.
    const cases: Array<{ q: string; t: string; key: string; where: string; deviates: boolean }> = [];
    for (const [bi, base] of BASES.entries()) {
      const src = join(dir, `${base.name}.qcow2`);
      for (let k = 0; k < REPAIR_CASES_PER_BASE; k++) {
        const seed = 50_000 + 1000 * (bi + 1) + k;
        const q = join(dir, `r-${base.name}-${seed}.q.qcow2`);
        const t = join(dir, `r-${base.name}-${seed}.t.qcow2`);
        copyFileSync(src, q);
        const mutation = mutateQcow2(q, prng(seed));
        copyFileSync(q, t);
        const hdr = readFileSync(q).subarray(0, 104);
        const v3 = hdr.length >= 104 && hdr.readUInt32BE(4) === 3;
        const autoclear = v3 ? hdr.readBigUInt64BE(88) : 0n;
        const deviates = base.name.includes('bitmap') || (autoclear & ~3n) !== 0n;
        cases.push({ q, t, deviates, key: `${base.name} seed ${seed}`, where: `${base.name} seed ${seed} (${mutation.kind}: ${mutation.detail}) — tsimg check -r all` });
      }
    }
    const results = await runAll(cases.map((c, id) => ({ id, args: ['check', '-r', 'all', c.t] })));
    const failures: string[] = [];
    const soft: string[] = [];
    /** The KNOWN_REPAIR_DIFFERENCES keys of the soft differences seen, each once. */
    const seen = new Set<string>();
    cases.forEach((c, id) => {
      const r = results.get(id)!;
      if (r.crashed) {
        failures.push(`${c.where}: CRASH ${r.crashed.split('\n').slice(0, 4).join(' | ')}`);
        return;
      }
      const q = run('qemu-img', ['check', '-r', 'all', c.q]);
      const norm = (text: string, f: string): string => text.replaceAll(f, 'IMG').replace(/^qemu-img: /gm, 'tsimg: ');
      const tOut = norm(r.stdout + r.stderr, c.t);
      const qOut = norm(q.stdout + q.stderr, c.q);
      const atOpen = /Could not open/.test(tOut + qOut) || c.deviates;
      if (JS_ERROR.test(r.stderr)) failures.push(`${c.where}: JS error text: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
      if (r.status !== q.status || tOut !== qOut) {
        const ql = qOut.split('\n');
        const tl = tOut.split('\n');
        let k = 0;
        while (k < ql.length && ql[k] === tl[k]) k++;
        if (atOpen) seen.add(c.key);
        (atOpen ? soft : failures).push(
          `${c.where}: status ${r.status} (qemu-img ${q.status}), output differs at line ${k + 1}:\n  qemu-img: ${ql.slice(k, k + 3).join(' | ')}\n  tsimg:    ${tl.slice(k, k + 3).join(' | ')}`,
        );
        return;
      }
      // after the repair, qemu-img must think of tsimg's file what it thinks of its own.
      // Known, deliberate deviation: when the check cannot complete (status 1) on a dirty
      // lazy-refcounts image, qemu still marks it clean on close and rewrites the header from
      // its half-loaded state (e.g. a zeroed snapshot pointer), leaving stale refcounts behind
      // a clean bit; tsimg leaves an image whose check failed as it found it.
      const failedCheck = q.status === 1;
      const qa = run('qemu-img', ['check', c.q]);
      const ta = run('qemu-img', ['check', c.t]);
      if (qa.status !== ta.status || norm(qa.stdout + qa.stderr, c.q) !== norm(ta.stdout + ta.stderr, c.t)) {
        if (c.deviates || failedCheck) seen.add(c.key);
        (c.deviates || failedCheck ? soft : failures).push(`${c.where}: after repair qemu-img check says ${ta.status} for tsimg's file, ${qa.status} for its own`);
      }
      rmSync(c.q, { force: true });
      rmSync(c.t, { force: true });
    });
    console.log(`hostile repairs: ${cases.length} images, ${failures.length} failures, ${soft.length} known deliberate differences`);
    if (failures.length) console.log(`FAILURES:\n${failures.join('\n')}`);
    if (soft.length) console.warn(`\n!!! hostile repairs: ${soft.length} known deliberate differences:\n${soft.join('\n')}\n`);
    expect(failures).toEqual([]);
    // Exactly the listed cases differ (those this run made): a new one fails, and so does a
    // listed one that now matches qemu-img, so the table stays true.
    const inRun = new Set(cases.map((c) => c.key));
    expect([...seen].sort()).toEqual(Object.keys(KNOWN_REPAIR_DIFFERENCES).filter((k) => inRun.has(k)).sort());
  }, 180_000);
});
