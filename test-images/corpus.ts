/**
 * The qemu-made test-image corpus, built once and shared by every test worker.
 *
 * `corpus()` runs `build-corpus.mjs` into a directory under the system temp dir whose name is a
 * hash of the build script and the qemu-img version, so the build happens once per machine
 * state (a changed script or qemu gives a fresh directory) and parallel vitest workers share it:
 * the first worker takes a lock directory and builds; the others wait for manifest.json, which
 * the build writes last. `TSIMG_CORPUS_DIR` overrides the place (built there if it has no
 * manifest; nothing in it is ever deleted). After a fresh build, builds for other script versions
 * untouched for an hour are removed.
 *
 * The corpus is shared: tests must not write to its images. Copy an image first to modify it.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** One image of the corpus, as listed in its manifest.json (plus the absolute `path`). */
export interface CorpusImage {
  /** File name inside the corpus directory. */
  file: string;
  /** Absolute path of the image. */
  path: string;
  format: 'raw' | 'qcow2';
  /** What the image exercises. */
  description: string;
  /** Virtual size in bytes, as qemu-img info reports it. */
  virtualSize: number;
  /** Names of the internal snapshots, in table order. */
  snapshots: string[];
  /** Names of the persistent dirty bitmaps, when there are any. */
  bitmaps?: string[];
  /** qcow2 compression type from the header. */
  compressionType?: 'zlib' | 'zstd';
  /** The backing file (another corpus entry) and its format, for images with one. */
  backing?: { file: string; format: 'raw' | 'qcow2' };
  /** External data file name (in the corpus directory), for images with one. */
  dataFile?: string;
  /** False when `qemu-img check` is expected to report errors (e.g. a dirty lazy-refcount image). */
  check: boolean;
  /** The qcow2 dirty bit is set. */
  dirty: boolean;
  /** Too big to read whole (terabytes of virtual size): read only what is allocated. */
  huge: boolean;
  /** Feature tags for picking images: 'v2', 'v3', 'raw', 'compressed-zstd', 'snapshots', ... */
  tags: string[];
}

/** The manifest.json a corpus directory holds. */
export interface CorpusManifest {
  version: number;
  /** First line of `qemu-img --version` of the build. */
  qemuImg: string;
  images: Omit<CorpusImage, 'path'>[];
}

/** The build script, next to this file. */
export const buildScript: string = fileURLToPath(new URL('./build-corpus.mjs', import.meta.url));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function cacheDir(): Promise<string> {
  if (process.env.TSIMG_CORPUS_DIR) return resolve(process.env.TSIMG_CORPUS_DIR);
  const { stdout } = await run('qemu-img', ['--version']);
  // the script and the PRNG it imports decide the corpus's bytes
  const prngScript = fileURLToPath(new URL('./prng.mjs', import.meta.url));
  const hash = createHash('sha256').update(readFileSync(buildScript)).update(readFileSync(prngScript)).update(stdout).digest('hex').slice(0, 16);
  return join(tmpdir(), `tsimg-corpus-${hash}`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the build lock, or returns false when a live process holds it. Clears a dead holder's lock. */
function tryLock(lock: string): boolean {
  try {
    mkdirSync(lock);
    writeFileSync(join(lock, 'pid'), String(process.pid));
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  let holder = NaN;
  try {
    holder = Number(readFileSync(join(lock, 'pid'), 'utf8'));
  } catch {
    // The holder has made the directory but not yet written its pid: treat it as alive.
    return false;
  }
  if (Number.isInteger(holder) && !alive(holder)) rmSync(lock, { recursive: true, force: true });
  return false;
}

/** Builds in place: data-file names are absolute, so the directory cannot be built elsewhere and moved. */
async function build(dir: string): Promise<void> {
  await run(process.execPath, [buildScript, dir], { maxBuffer: 1 << 24 });
}

/** Corpus builds of older script versions not touched for this long are removed after a new build. */
const STALE_MS = 60 * 60 * 1000;

/** Removes old builds (other hashes) so that editing the script does not pile up copies in /tmp. */
function removeStaleBuilds(current: string): void {
  const parent = dirname(current);
  for (const name of readdirSync(parent)) {
    if (!/^tsimg-corpus-[0-9a-f]{16}$/.test(name) || join(parent, name) === current) continue;
    const path = join(parent, name);
    if (existsSync(`${path}.lock`)) continue;
    try {
      if (Date.now() - statSync(join(path, 'manifest.json')).mtimeMs < STALE_MS) continue;
    } catch {
      continue; // No manifest: possibly being built right now by another run.
    }
    rmSync(path, { recursive: true, force: true });
  }
}

let cached: Promise<{ dir: string; images: CorpusImage[] }> | undefined;

/**
 * The corpus directory and its images, building it first if no complete build exists yet.
 * Needs qemu-img and qemu-io: call it only inside `describeQemu`.
 */
export function corpus(): Promise<{ dir: string; images: CorpusImage[] }> {
  cached ??= load();
  return cached;
}

async function load(): Promise<{ dir: string; images: CorpusImage[] }> {
  const owned = !process.env.TSIMG_CORPUS_DIR;
  const dir = await cacheDir();
  const manifestPath = join(dir, 'manifest.json');
  const lock = `${dir}.lock`;
  const deadline = Date.now() + 180_000;
  while (!existsSync(manifestPath)) {
    if (tryLock(lock)) {
      try {
        // Another worker may have finished between our check and the lock.
        if (!existsSync(manifestPath)) {
          // A build without a manifest was interrupted: ours to replace (never a user-named directory).
          if (owned && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
          await build(dir);
          if (owned) removeStaleBuilds(dir);
        }
      } finally {
        rmSync(lock, { recursive: true, force: true });
      }
      break;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for the corpus build in ${dir} (lock ${lock})`);
    await sleep(200);
  }
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as CorpusManifest;
  return { dir, images: manifest.images.map((i) => ({ ...i, path: join(dir, i.file) })) };
}

/** The corpus image named `file`; throws if the manifest has no such entry. */
export function findImage(images: CorpusImage[], file: string): CorpusImage {
  const image = images.find((i) => i.file === file);
  if (!image) throw new Error(`no corpus image ${file}`);
  return image;
}
