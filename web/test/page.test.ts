// The page in headless Chromium (Debian's chromium, driven by playwright-core): it opens images
// by file (setInputFiles) and by URL from a local server, and what it shows (info text,
// snapshots, map JSON) and downloads (raw, qcow2) is compared with qemu-img's answers on the
// same files and URLs. Without chromium this skips loudly; with CI set it fails.
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corpus } from '../../test-images/corpus.js';
import { startHttpServer } from '../../test-images/http-server.mjs';
import { hasQemu } from '../../test-images/qemu.js';

const CHROMIUM = '/usr/bin/chromium';
const here = dirname(fileURLToPath(import.meta.url));
const web = dirname(here);
const fixtures = join(web, '..', 'test-images', 'fixtures');
const pexec = promisify(execFile);
const ready = existsSync(CHROMIUM) && hasQemu;

if (!ready) {
  const why = `needs ${CHROMIUM} (apt-get install -y chromium) and qemu-img (qemu-utils, qemu-block-extra)`;
  if (process.env.CI) {
    describe('browser page', () => it(`${why} (CI is set, so this fails instead of skipping)`, () => expect.fail(why)));
  } else {
    console.warn(`\n!!! SKIPPING browser tests: ${why} !!!\n`);
  }
}

/**
 * qemu-img's stdout (asynchronously: the server runs in this process). Its curl driver (7.2)
 * hangs now and then with every request answered: a run that takes 15 s is killed and run
 * again, up to three times.
 */
async function qemu(args: string[], cwd?: string): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    try {
      return (await pexec('qemu-img', args, { cwd, maxBuffer: 1 << 26, timeout: 15_000 })).stdout;
    } catch (err) {
      if (!(err as { killed?: boolean }).killed || attempt >= 3) throw err;
    }
  }
}

(ready ? describe : describe.skip)('browser page', () => {
  type Browser = Awaited<ReturnType<typeof import('playwright-core').chromium.launchPersistentContext>>;
  let browser: Browser;
  let server: Awaited<ReturnType<typeof startHttpServer>>;
  let profile: string;
  let downloads: string;
  let corpusDir: string;

  beforeAll(async () => {
    execFileSync(process.execPath, [join(web, 'build.mjs')], { stdio: 'pipe' });
    corpusDir = (await corpus()).dir;
    server = await startHttpServer(web, 0, { mounts: { '/images/': fixtures, '/corpus/': corpusDir } });
    profile = mkdtempSync(join(tmpdir(), 'tsimg-chromium-'));
    downloads = mkdtempSync(join(tmpdir(), 'tsimg-downloads-'));
    const { chromium } = await import('playwright-core');
    // A fresh profile directory (--user-data-dir) per run, given as playwright wants it.
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      acceptDownloads: true,
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync',
      ],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await server?.close();
    rmSync(profile, { recursive: true, force: true });
    rmSync(downloads, { recursive: true, force: true });
  });

  /** The page, ready; `init` runs in it before any of its scripts (see addInitScript). */
  async function page(init?: () => void): Promise<Awaited<ReturnType<Browser['newPage']>>> {
    const p = await browser.newPage();
    p.on('pageerror', (err) => console.error('page error:', err));
    if (init !== undefined) await p.addInitScript(init);
    await p.goto(`${server.url}/`);
    await p.waitForFunction(() => document.getElementById('status')?.textContent === 'idle');
    return p;
  }

  async function shown(p: Awaited<ReturnType<typeof page>>): Promise<{ info: string; map: string; snapshots: string[]; error: string }> {
    await p.waitForFunction(() => ['ready', 'failed'].includes(document.getElementById('status')?.textContent ?? ''));
    return p.evaluate(() => ({
      info: document.getElementById('info')!.textContent!,
      map: document.getElementById('map-json')!.textContent!,
      snapshots: [...document.querySelectorAll('#snapshots tbody tr td:nth-child(2)')].map((td) => td.textContent!),
      error: document.getElementById('error')!.textContent!,
    }));
  }

  async function download(p: Awaited<ReturnType<typeof page>>, button: string): Promise<Buffer> {
    const [dl] = await Promise.all([p.waitForEvent('download'), p.click(button)]);
    return readFileSync((await dl.path())!);
  }

  /** qemu-img's answers for the image at `url` (its curl driver). */
  async function expected(url: string): Promise<{ info: string; map: string }> {
    const info = await qemu(['info', url]);
    const map = await qemu(['map', '--output=json', url]);
    return { info, map };
  }

  const cases = [
    { dir: '/images/', local: fixtures, files: ['small-v3.qcow2'] },
    { dir: '/images/', local: fixtures, files: ['small-v2.qcow2'] },
    { dir: '/images/', local: fixtures, files: ['small-zstd.qcow2'] },
    { dir: '/images/', local: fixtures, files: ['small-backing.qcow2', 'small-v3.qcow2'] },
    { dir: '/corpus/', local: '', files: ['snapshots.qcow2'] },
    { dir: '/corpus/', local: '', files: ['compressed-zstd.qcow2'] },
  ];

  it.each(cases.map((c) => [c.files[0]!, c] as const))('%s by file and by URL', async (_name, c) => {
    const local = c.local || corpusDir;
    const url = `${server.url}${c.dir}${c.files[0]}`;
    const p = await page();
    try {
      // By file: the names qemu would show for the local file opened from its directory.
      await p.setInputFiles('#file', c.files.map((f) => join(local, f)));
      const byFile = await shown(p);
      // qemu-img on the local file by its name, from its directory; a File has no disk size.
      const want = { ...(await expected(url)), info: (await qemu(['info', c.files[0]!], local)).replace(/^disk size: .*$/m, 'disk size: unavailable') };
      expect(byFile.error).toBe('');
      expect(byFile.info).toBe(want.info);
      expect(byFile.map).toBe(want.map);
      const names = (await qemu(['snapshot', '-l', join(local, c.files[0]!)])).split('\n').slice(2).filter(Boolean).map((l) => l.split(/\s+/)[1]);
      expect(byFile.snapshots).toEqual(names);

      const raw = await download(p, '#download-raw');
      const out = join(downloads, `${c.files[0]}.raw`);
      await qemu(['convert', '-O', 'raw', url, out]);
      expect(raw.equals(readFileSync(out))).toBe(true);
      const qcow2 = await download(p, '#download-qcow2');
      const outq = join(downloads, `${c.files[0]}.qcow2`);
      await qemu(['convert', '-O', 'qcow2', url, outq]);
      expect(qcow2.equals(readFileSync(outq))).toBe(true);

      // By URL: exactly qemu-img's curl answers.
      await p.fill('#url', url);
      await p.click('#open-url');
      const byUrl = await shown(p);
      const wantUrl = await expected(url);
      expect(byUrl.error).toBe('');
      expect(byUrl.info).toBe(wantUrl.info);
      expect(byUrl.map).toBe(wantUrl.map);
    } finally {
      await p.close();
    }
  });

  it('writes a conversion into the origin private file system and offers it from there', async () => {
    const p = await page();
    try {
      const files = ['small-backing.qcow2', 'small-v3.qcow2'];
      await p.setInputFiles('#file', files.map((f) => join(fixtures, f)));
      expect((await shown(p)).error).toBe('');
      const qcow2 = await download(p, '#download-qcow2');
      expect(await p.textContent('#saved')).toBe('OPFS converted.qcow2');
      // Read back in the page: the OPFS file's bytes, and the image through the library
      // (OpfsDevice under openImage) converted to raw in memory.
      // A string, not a function: vitest would rewrite the import() of a function's body. Bytes
      // come back as base64 (playwright's serializing of long arrays takes seconds).
      const back = (await p.evaluate(`(async () => {
        const b64 = (u) => {
          let s = '';
          for (let i = 0; i < u.length; i += 32768) s += String.fromCharCode(...u.subarray(i, i + 32768));
          return btoa(s);
        };
        const lib = await import(location.origin + '/dist/tsimg.js');
        const root = await navigator.storage.getDirectory();
        const bytes = new Uint8Array(await (await (await root.getFileHandle('converted.qcow2')).getFile()).arrayBuffer());
        const dev = await lib.OpfsDevice.open('converted.qcow2', { create: false });
        const image = await lib.openImage('converted.qcow2', { files: (n) => (n === 'converted.qcow2' ? dev : undefined), format: 'qcow2' });
        const raw = new lib.MemoryDevice({ size: image.size() });
        await lib.convertCopy([image], raw, { minSparse: 4096, hasZeroInit: true, clusterSize: 0 });
        await image.close();
        return { file: b64(bytes), raw: b64(raw.contents()) };
      })()`)) as { file: string; raw: string };
      expect(Buffer.from(back.file, 'base64').equals(qcow2)).toBe(true);
      const out = join(downloads, 'opfs.qcow2');
      writeFileSync(out, qcow2);
      expect(await qemu(['check', out])).toMatch(/^No errors were found on the image\.\n/);
      expect(await qemu(['compare', '-f', 'qcow2', '-F', 'qcow2', out, join(fixtures, files[0]!)])).toBe('Images are identical.\n');
      const want = join(downloads, 'opfs-source.raw');
      await qemu(['convert', '-O', 'raw', join(fixtures, files[0]!), want]);
      expect(Buffer.from(back.raw, 'base64').equals(readFileSync(want))).toBe(true);
      // Raw goes the same way.
      const raw = await download(p, '#download-raw');
      expect(await p.textContent('#saved')).toBe('OPFS converted.raw');
      expect(raw.equals(readFileSync(want))).toBe(true);
    } finally {
      await p.close();
    }
  });

  it('reads zlib clusters through pako where DecompressionStream is missing, loading it only then', async () => {
    const url = `${server.url}/corpus/compressed-zlib.qcow2`;
    const want = join(downloads, 'zlib.raw');
    await qemu(['convert', '-O', 'raw', url, want]);
    const pako = (): boolean => server.requests.some((r) => /^\/dist\/chunks\/deflate-pako-[\w-]+\.js$/.test(r.path));
    for (const missing of [false, true]) {
      server.requests.length = 0;
      const p = await page(
        missing
          ? () => {
              delete (globalThis as { DecompressionStream?: unknown }).DecompressionStream;
              delete (globalThis as { CompressionStream?: unknown }).CompressionStream;
            }
          : undefined,
      );
      try {
        expect(await p.evaluate(() => typeof DecompressionStream)).toBe(missing ? 'undefined' : 'function');
        await p.fill('#url', url);
        await p.click('#open-url');
        const r = await shown(p);
        expect(r.error).toBe('');
        expect(r.info).toBe(await qemu(['info', url]));
        const raw = await download(p, '#download-raw');
        expect(raw.equals(readFileSync(want))).toBe(true);
        expect(pako()).toBe(missing);
      } finally {
        await p.close();
      }
    }
  });

  it('reports a server without byte ranges in one line', async () => {
    const p = await page();
    try {
      const url = `${server.url}/images/small-v3.qcow2`;
      server.faults.noRange = true;
      await p.fill('#url', url);
      await p.click('#open-url');
      const r = await shown(p);
      expect(r.error).toBe(`tsimg: Could not open '${url}': CURL: Error opening file: Server does not support 'range' (byte ranges).`);
    } finally {
      delete server.faults.noRange;
      await p.close();
    }
  });
});
