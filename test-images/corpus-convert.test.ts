/**
 * Corpus convert cross-check: every image of the shared corpus goes through `qemu-img convert`
 * and `tsimg convert` with the same arguments — to raw (the active layer, and each internal
 * snapshot with -l) the outputs must be the same bytes, and to qcow2 (with -p: the same
 * progress lines) the same file byte for byte.
 *
 * tsimg runs in this process (the CLI's `main`; a Node start-up per image would cost more than
 * the conversions), qemu-img as a process alongside it. The terabyte-sized sparse image is
 * compared as qcow2 only (its raw rendering would be a 4 TiB sparse file to compare).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { closeSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { main } from '@tsimg/cli';
import { corpus, type CorpusImage } from './corpus.js';
import { describeQemu, hasQemu, tempDir, type RunResult } from './qemu.js';

const c = hasQemu ? await corpus() : { dir: '', images: [] as CorpusImage[] };

function qemuConvert(args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('qemu-img', ['convert', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ stdout, stderr, status: code ?? -1 }));
  });
}

async function tsimgConvert(args: string[]): Promise<RunResult> {
  let stdout = '';
  let stderr = '';
  const status = await main(['convert', ...args], {
    stdout: (t) => void (stdout += t),
    stderr: (t) => void (stderr += t),
    isTTY: false,
  });
  return { stdout, stderr, status };
}

/** First difference of two files, compared 4 MiB at a time; undefined when equal. */
function diffFiles(a: string, b: string): string | undefined {
  const sa = statSync(a).size;
  const sb = statSync(b).size;
  if (sa !== sb) return `sizes differ: qemu ${sa}, tsimg ${sb}`;
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    const CHUNK = 4 << 20;
    const x = Buffer.alloc(CHUNK);
    const y = Buffer.alloc(CHUNK);
    for (let pos = 0; pos < sa; pos += CHUNK) {
      const n = Math.min(CHUNK, sa - pos);
      readSync(fa, x, 0, n, pos);
      readSync(fb, y, 0, n, pos);
      if (x.subarray(0, n).equals(y.subarray(0, n))) continue;
      let i = 0;
      while (x[i] === y[i]) i++;
      return `first difference at byte ${pos + i} (0x${(pos + i).toString(16)}): qemu 0x${x[i]!.toString(16)}, tsimg 0x${y[i]!.toString(16)}`;
    }
    return undefined;
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

interface Job {
  name: string;
  image: CorpusImage;
  /** Arguments after `convert` up to the output name. */
  args: string[];
}

function jobsFor(image: CorpusImage): Job[] {
  const src = ['-U', '-f', image.format, image.path];
  const jobs: Job[] = [];
  if (!image.huge) jobs.push({ name: 'to raw', image, args: [...src, '-O', 'raw'] });
  // -p here: the progress lines (stdout) of every image are compared too.
  jobs.push({ name: 'to qcow2, with -p', image, args: ['-p', ...src, '-O', 'qcow2'] });
  for (const snap of image.snapshots) jobs.push({ name: `snapshot ${snap} to raw`, image, args: ['-l', snap, ...src, '-O', 'raw'] });
  return jobs;
}

describeQemu('corpus convert cross-check: tsimg convert writes what qemu-img convert writes', () => {
  let work: { dir: string; cleanup: () => void };
  const jobs = c.images.flatMap(jobsFor);
  const results = new Map<Job, Promise<{ qemu: RunResult; ts: RunResult; q: string; t: string }>>();

  beforeAll(() => {
    work = tempDir('tsimg-corpus-convert-');
    // One job at a time (qemu-img and tsimg side by side); each test awaits its own.
    let chain: Promise<unknown> = Promise.resolve();
    jobs.forEach((job, i) => {
      const q = join(work.dir, `${i}.q`);
      const t = join(work.dir, `${i}.t`);
      const p = chain.then(async () => {
        const [qemu, ts] = await Promise.all([qemuConvert([...job.args, q]), tsimgConvert([...job.args, t])]);
        return { qemu, ts, q, t };
      });
      p.catch(() => undefined);
      chain = p.catch(() => undefined);
      results.set(job, p);
    });
  });
  afterAll(() => work.cleanup());

  for (const image of c.images) {
    describe(image.file, () => {
      for (const job of jobsFor(image)) {
        it(job.name, async () => {
          const key = [...results.keys()].find((j) => j.image.file === image.file && j.name === job.name)!;
          const r = await results.get(key)!;
          try {
            expect({ status: r.ts.status, stderr: r.ts.stderr }).toEqual({
              status: r.qemu.status,
              stderr: r.qemu.stderr.replaceAll('qemu-img:', 'tsimg:'),
            });
            if (r.qemu.status !== 0) return; // qemu refuses the image: so must tsimg, with its words
            expect(diffFiles(r.q, r.t), `${job.args.join(' ')}`).toBeUndefined();
          } finally {
            rmSync(r.q, { force: true });
            rmSync(r.t, { force: true });
          }
        });
        if (!job.args.includes('-p')) continue;
        it("-p prints qemu's progress lines", async () => {
          const key = [...results.keys()].find((j) => j.image.file === image.file && j.name === job.name)!;
          const r = await results.get(key)!;
          expect(r.ts.stdout.split('\r')).toEqual(r.qemu.stdout.split('\r'));
        });
      }
    });
  }
});
