// Every read-only command over HTTP: for each corpus image served by a local node:http server,
// tsimg's output on the URL is qemu-img's (curl driver, qemu-block-extra) on the same URL, and
// tsimg's output on the local file apart from the name and the disk size a URL cannot report.
// Then the names (json:, --image-opts, relative backing names, redirects) and failures.
import { execFile } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../src/main.js';
import { corpus, type CorpusImage } from '../../../test-images/corpus.js';
import { startHttpServer } from '../../../test-images/http-server.mjs';
import { describeQemu, hasQemu, tempDir, tsimgBin } from '../../../test-images/qemu.js';

const pexec = promisify(execFile);
/** qemu-img has its curl driver (Debian's qemu-block-extra) when `--help` lists http. */
const hasCurl = hasQemu && (await pexec('qemu-img', ['--help'])).stdout.includes(' http ');
if (hasQemu && !hasCurl) {
  if (process.env.CI) throw new Error('qemu-img has no curl driver: install qemu-block-extra');
  console.warn('\n!!! SKIPPING http cross-checks: qemu-img has no curl driver (apt-get install -y qemu-block-extra) !!!\n');
}
const c = hasCurl ? await corpus() : { dir: '', images: [] as CorpusImage[] };

interface Out {
  stdout: string;
  stderr: string;
  status: number;
}

/** tsimg in this process (the server answers meanwhile), from `cwd`-relative names. */
async function tsimg(args: string[]): Promise<Out> {
  let stdout = '';
  let stderr = '';
  const status = await main(args, { stdout: (t) => void (stdout += t), stderr: (t) => void (stderr += t), isTTY: false });
  return { stdout, stderr, status };
}

/**
 * qemu-img, asynchronously (a synchronous spawn would stall the server in this process). Its
 * curl driver (7.2) hangs now and then with every request answered (1 run in 6–15 of a 16 MiB
 * convert here, with several requests in flight; strace shows it polling none of its sockets):
 * a run that takes 15 s is killed and run again, up to five times.
 */
async function qemu(args: string[]): Promise<Out> {
  for (let attempt = 1; ; attempt++) {
    try {
      const { stdout, stderr } = await pexec('qemu-img', args, { maxBuffer: 1 << 26, timeout: 15_000 });
      return { stdout, stderr: tsimgPrefix(stderr), status: 0 };
    } catch (err) {
      const e = err as { stdout: string; stderr: string; code: number | null; killed?: boolean };
      if (e.killed && attempt < 5) continue;
      return { stdout: e.stdout, stderr: tsimgPrefix(e.stderr), status: e.code ?? -1 };
    }
  }
}

/** qemu's lines as tsimg prints them; GLib's assertion noise from curl's failed opens dropped. */
function tsimgPrefix(text: string): string {
  return text
    .split('\n')
    .filter((l) => !l.startsWith('qemu-img: GLib: '))
    .map((l) => l.replace(/^qemu-img: /, 'tsimg: '))
    .join('\n');
}

/** A URL has no allocated size: qemu says "disk size: unavailable" and leaves actual-size out. */
function withoutDiskSize(text: string): string {
  return text.replace(/^disk size: .*$/gm, 'disk size: unavailable').replace(/^\s*"actual-size": \d+,\n/gm, '');
}

/** raw's get_info asks its file, which the curl driver cannot answer: no dirty-flag. */
function withoutRawDirtyFlag(text: string): string {
  return text.replace(/("format": "raw"),\n\s*"dirty-flag": false\n/g, '$1\n');
}

let server: Awaited<ReturnType<typeof startHttpServer>>;
let tmp: ReturnType<typeof tempDir>;
beforeAll(async () => {
  server = await startHttpServer(hasCurl ? c.dir : '.');
  tmp = tempDir('tsimg-http-cli-');
});
afterAll(async () => {
  await server?.close();
  tmp?.cleanup();
});

/** The read-only commands whose output is compared, for one image named `p`. */
function commands(img: CorpusImage, p: string): string[][] {
  const list = [['info', p], ['info', '--output=json', p], ['map', p], ['map', '--output=json', p], ['measure', '-O', 'qcow2', p]];
  if (img.backing) list.push(['info', '--backing-chain', p]);
  if (img.format === 'qcow2') list.push(['check', p], ['check', '--output=json', p]);
  return list;
}

describeQemu('read-only commands over HTTP match qemu-img and the local file', () => {
  // Data files are opened by their stored names (relative to the working directory), so an
  // image with one reads the same local file either way: nothing of HTTP to check there.
  const images = c.images.filter((i) => i.dataFile === undefined);
  it.each(images.map((i) => [i.file, i] as const))('%s', async (_name, img) => {
    const url = `${server.url}/${img.file}`;
    for (const args of commands(img, url)) {
      const [ours, theirs] = await Promise.all([tsimg(args), qemu(args)]);
      expect(ours, args.join(' ')).toEqual(theirs);
      // A local file's holes are known (SEEK_HOLE), a URL's are not: map and measure differ.
      if (args[0] === 'map' || args[0] === 'measure') continue;
      const local = await tsimg(args.map((a) => (a === url ? img.path : a)));
      const asUrl = local.stdout.split(c.dir).join(server.url);
      expect(ours.stdout, `${args.join(' ')} (local)`).toBe(withoutRawDirtyFlag(withoutDiskSize(asUrl)));
    }
    const cmp = await tsimg(['compare', url, img.path]);
    expect(cmp).toEqual({ stdout: 'Images are identical.\n', stderr: '', status: 0 });
    if (!img.huge && img.virtualSize <= 64 << 20) {
      const ours = join(tmp.dir, `${img.file}.t.raw`);
      const theirs = join(tmp.dir, `${img.file}.q.raw`);
      const [t, q] = await Promise.all([tsimg(['convert', '-O', 'raw', url, ours]), qemu(['convert', '-O', 'raw', url, theirs])]);
      expect(t).toEqual(q);
      expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
      const dd = ['dd', `if=${url}`, 'bs=64k', 'count=8', 'skip=1'];
      const [dt, dq] = await Promise.all([tsimg([...dd, `of=${ours}.dd`]), qemu([...dd, `of=${theirs}.dd`])]);
      expect(dt).toEqual(dq);
      expect(readFileSync(`${ours}.dd`).equals(readFileSync(`${theirs}.dd`))).toBe(true);
    }
  });
});

describeQemu('HTTP names and options as qemu takes them', () => {
  const cases = (base: string): string[][] => {
    const top = c.images.find((i) => i.backing !== undefined && i.dataFile === undefined)!;
    const u = `${base}/${top.file}`;
    const plain = c.images.find((i) => i.backing === undefined && i.dataFile === undefined && i.file.endsWith('.qcow2'))!;
    const lone = `${base}/${plain.file}`;
    return [
      ['info', '--backing-chain', `${base}/redirect/${top.file}`],
      ['info', `json:{"file.driver":"http","file.url":"${u}"}`],
      ['info', `json:{"driver":"qcow2","file":{"driver":"http","url":"${u}","readahead":"64k","timeout":3}}`],
      ['info', '--image-opts', `driver=qcow2,file.driver=http,file.url=${u},file.readahead=1M,file.timeout=2`],
      ['info', '--image-opts', `driver=http,url=${u}`],
      ['map', '--image-opts', `driver=http,url=${u}`],
      ['check', '--image-opts', `driver=qcow2,file.driver=http,file.url=${u}`],
      ['compare', u, `${base}/${top.backing!.file}`],
      // Failures: each is one line and qemu's exit status.
      ['info', `${base}/missing.qcow2`],
      ['info', '--image-opts', `driver=qcow2,file.driver=http,file.url=${u},file.readahead=1000`],
      ['info', '--image-opts', `driver=qcow2,file.driver=http,file.url=${u},file.timeout=100000`],
      ['info', '--image-opts', `driver=qcow2,file.driver=http,file.url=${u},file.bogus=1`],
      ['info', '--image-opts', 'driver=qcow2,file.driver=http'],
      ['info', `json:{"file.driver":"https","file.url":"${u}"}`],
      ['info', '--image-opts', `driver=qcow2,file.driver=http,file.url=${u},file.cookie=a,file.cookie-secret=b`],
      // The curl driver's secrets come from --object secret (a missing one: qemu's lookup error).
      // Strong options give the node a json: name, which no relative backing name can follow
      // (qemu: "Cannot generate a base directory"): an image without a backing file, then.
      ['info', '--image-opts', `driver=qcow2,file.driver=http,file.url=${lone},file.password-secret=nope`],
      ['map', '--output=json', '--object', 'secret,id=pw,data=x', '--image-opts', `driver=qcow2,file.driver=http,file.url=${lone},file.username=me,file.password-secret=pw`],
      ['map', '--output=json', '--object', 'secret,id=c,data=k=v', '--image-opts', `driver=qcow2,file.driver=http,file.url=${lone},file.cookie-secret=c`],
      ['map', '--output=json', '--image-opts', `driver=qcow2,file.driver=http,file.url=${lone},file.sslverify=off`],
      // Strong curl options (sslverify off, a cookie, a user name; curl_refresh_filename) name
      // the node json:{...} — of the format node over the curl node, or of a bare curl node —
      // and a relative backing name then has no base directory (bdrv_dirname's error).
      ...[
        `driver=qcow2,file.driver=http,file.url=${u},file.username=me`,
        `driver=qcow2,file.driver=http,file.url=${u},file.sslverify=off,file.readahead=64k`,
      ].flatMap((o) => [
        ['info', '--image-opts', o], ['info', '--output=json', '--image-opts', o], ['info', '--backing-chain', '--image-opts', o],
        ['map', '--image-opts', o], ['check', '--image-opts', o], ['measure', '-O', 'qcow2', '--image-opts', o],
        ['compare', '--image-opts', o, o], ['convert', '-O', 'raw', '--image-opts', o, join(tmp.dir, 'strong.raw')],
        ['dd', '--image-opts', `if=${o}`, `of=${join(tmp.dir, 'strong.dd')}`],
      ]),
      ...[
        `json:{"driver":"qcow2","file":{"driver":"http","url":"${lone}","sslverify":false,"timeout":3}}`,
        `json:{"file.driver":"http","file.url":"${lone}","file.sslverify":"off","file.cookie":""}`,
        `json:{"driver":"raw","file":{"driver":"http","url":"${lone}","username":"u"}}`,
        `json:{"driver":"qcow2","file":{"driver":"http","url":"${lone}","sslverify":true,"username":"u"}}`,
        `json:{"driver":"http","url":"${lone}","username":"u","proxy-username":"p","readahead":"64k"}`,
        `json:{"driver":"qcow2","file":{"driver":"http","url":"${u}","cookie":"a=b"}}`,
      ].flatMap((n) => [['info', n], ['info', '--output=json', n], ['map', n], ...(/"driver":"(raw|http)"/.test(n) ? [] : [['check', n]])]),
      // sslverify=on is the default: the URL names the node, and relative names resolve.
      ['info', '--backing-chain', '--image-opts', `driver=qcow2,file.driver=http,file.url=${u},file.sslverify=on`],
      ['info', '--image-opts', `driver=http,url=${lone},username=me`],
      ['map', '--image-opts', `driver=http,url=${lone},username=me`],
      ['resize', u, '+1M'],
      ['snapshot', '-c', 'x', u],
      ['commit', u],
      ['check', '-r', 'all', u],
      ['amend', '-o', 'compat=0.10', u],
      // Nothing is created or written over HTTP.
      ['convert', '-O', 'raw', top.path, `${base}/out.raw`],
      ['convert', '-n', '-O', 'raw', top.path, u],
      ['create', '-f', 'qcow2', `${base}/new.qcow2`, '1M'],
      ['dd', `if=${top.path}`, `of=${base}/out.raw`],
    ];
  };
  it('gives qemu-img output for each', async () => {
    for (const args of cases(server.url)) {
      const [ours, theirs] = await Promise.all([tsimg(args), qemu(args)]);
      expect(ours, args.join(' ')).toEqual(theirs);
    }
  });
  it('refuses a server without ranges before reading the image', async () => {
    const img = c.images[0]!;
    server.faults.noRange = true;
    server.requests.length = 0;
    try {
      const args = ['info', `${server.url}/${img.file}`];
      const [ours, theirs] = await Promise.all([tsimg(args), qemu(args)]);
      expect(ours).toEqual(theirs);
      expect(ours.stderr).toBe(`tsimg: Could not open '${args[1]}': CURL: Error opening file: Server does not support 'range' (byte ranges).\n`);
      expect(server.requests.some((r) => r.method === 'GET')).toBe(false);
    } finally {
      delete server.faults.noRange;
    }
  });
  it('the tsimg command exits as soon as it is done, with keep-alive connections open at the server', async () => {
    // The tests above run tsimg in this process; a connection (or a retry) outliving the device
    // kept the real command from exiting for as long as the server keeps idle connections
    // (this server: for ever, as its keepAliveTimeout is 0; nginx: 75 s).
    const top = c.images.find((i) => i.backing !== undefined && i.dataFile === undefined && !i.huge)!;
    const zipped = c.images.find((i) => i.tags.some((t) => t.startsWith('compressed')) && !i.backing && !i.huge)!;
    const out = join(tmp.dir, 'exit.raw');
    for (const img of [top, zipped]) {
      const u = `${server.url}/${img.file}`;
      for (const args of [
        ['info', '--backing-chain', u], ['map', u], ['map', '--output=json', u], ['check', u], ['measure', '-O', 'qcow2', u],
        ['compare', u, img.path], ['convert', '-O', 'raw', u, out], ['dd', `if=${u}`, `of=${out}`, 'count=3'], ['info', `${server.url}/missing.qcow2`],
      ]) {
        const r = await pexec(process.execPath, [tsimgBin, ...args], { timeout: 20_000 }).then(
          () => ({ killed: false, status: 0 }),
          (e: { killed?: boolean; code?: number }) => ({ killed: e.killed === true, status: e.code }),
        );
        // (human map refuses compressed clusters: status 1; the missing image: 1)
        expect({ args: args.join(' '), killed: r.killed }).toEqual({ args: args.join(' '), killed: false });
        expect(r.status).toBe((await tsimg(args)).status);
      }
    }
  });
  it('fails a convert whose source changes under it, in one line', async () => {
    const img = c.images.filter((i) => i.format === 'qcow2' && !i.huge && i.dataFile === undefined && !i.backing).sort((a, b) => statSync(b.path).size - statSync(a.path).size)[0]!;
    const out = join(tmp.dir, 'changed.raw');
    server.requests.length = 0;
    expect((await tsimg(['convert', '-O', 'raw', `${server.url}/${img.file}`, out])).status).toBe(0);
    // The file changes half-way through the same convert (after its open).
    server.faults.changeAfter = Math.floor(server.requests.filter((r) => r.method === 'GET').length / 2);
    try {
      const r = await tsimg(['convert', '-O', 'raw', `${server.url}/${img.file}`, out]);
      expect(r.status).toBe(1);
      // qemu's line for a failed read (the HttpError says why; the CLI prints its errno).
      // Which read meets the change first (data, or an L2 table under block status) depends
      // on the read-ahead; either way one line.
      expect(r.stderr).toMatch(/^tsimg: error while reading (at byte|block status at offset) \d+: Input\/output error\n$/);
    } finally {
      delete server.faults.changeAfter;
      delete server.faults.etag;
    }
  });
});
