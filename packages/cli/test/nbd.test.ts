/**
 * tsimg-nbd against qemu-nbd 7.2, and tsimg's NBD client against qemu-img: real clients
 * (qemu-img info/map/convert/compare, qemu-io, libnbd's nbdinfo and nbdcopy with several
 * connections) get the same answers from tsimg-nbd as from qemu-nbd serving a copy of the same
 * image, over TCP on loopback and over a Unix socket; writes through either leave identical,
 * clean images; tsimg's commands on an export print what qemu-img prints; and tsimg-nbd's
 * messages and exit statuses are qemu-nbd's. Servers run with --fork and --pid-file, so they
 * are ready when started and are killed by pid after each test.
 * Needs `npm run build` (or `tsc -b`) first: it runs bin/tsimg-nbd.js and bin/tsimg.js.
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeQemu, qemuImg, qemuIo, run, tempDir, tsimg, type RunResult } from '../../../test-images/qemu.js';

const nbdBin = fileURLToPath(new URL('../bin/tsimg-nbd.js', import.meta.url));
const hasLibnbd = spawnSync('nbdinfo', ['--version']).status === 0;
if (!hasLibnbd) {
  if (process.env.CI) throw new Error('nbdinfo/nbdcopy not found: install libnbd-bin (apt-get install -y libnbd-bin)');
  console.warn('\n!!! SKIPPING the nbdinfo / nbdcopy rows: libnbd-bin is not installed. !!!\n');
}

type Server = 'qemu' | 'tsimg';
let dir: string;
let cleanup: () => void;
const pidFiles: string[] = [];

beforeEach(() => {
  ({ dir, cleanup } = tempDir('tsimg-nbdcli-'));
});

afterEach(() => {
  for (const f of pidFiles.splice(0)) {
    if (!existsSync(f)) continue;
    const pid = Number(readFileSync(f, 'utf8'));
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone (a non-persistent server whose client left)
    }
  }
  cleanup();
});

const p = (name: string): string => join(dir, name);

/** Runs qemu-nbd or tsimg-nbd with `args` (without --fork/--pid-file). */
function nbd(server: Server, args: string[]): RunResult {
  return server === 'qemu' ? run('qemu-nbd', args) : run(process.execPath, [nbdBin, ...args]);
}

/** A free loopback port (bound and released at once; servers bind it right after). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Starts a forked, persistent server; returns the URI clients use. */
async function start(server: Server, image: string, transport: 'tcp' | 'unix', extra: string[] = []): Promise<string> {
  const pidFile = p(`${server}-${pidFiles.length}.pid`);
  pidFiles.push(pidFile);
  let where: string[];
  let uri: string;
  if (transport === 'tcp') {
    const port = await freePort();
    where = ['-b', '127.0.0.1', '-p', String(port)];
    uri = `nbd://127.0.0.1:${port}/e`;
  } else {
    const sock = p(`${server}-${pidFiles.length}.sock`);
    where = ['-k', sock];
    uri = `nbd+unix:///e?socket=${sock}`;
  }
  const r = nbd(server, ['--fork', '--pid-file', pidFile, '-t', '-x', 'e', ...where, ...extra, image]);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return uri;
}

function ok(r: RunResult, what: string): string {
  if (r.status !== 0) throw new Error(`${what} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** What real clients see of an export, with the URI taken out. */
function clientView(uri: string, out: string): Record<string, string> {
  const hide = (s: string): string => s.replaceAll(uri, 'URI').replace(/nbd(\+unix)?:\/\/[^\s"]*/g, 'URI');
  const view: Record<string, string> = {
    info: hide(ok(qemuImg(['info', uri]), 'info')),
    infoJson: hide(ok(qemuImg(['info', '--output=json', uri]), 'info json')),
    map: hide(ok(qemuImg(['map', uri]), 'map')),
    mapJson: ok(qemuImg(['map', '--output=json', uri]), 'map json'),
    compare: ok(qemuImg(['compare', '-f', 'raw', '-F', 'raw', uri, join(dir, 'flat.raw')]), 'compare'),
    read: ok(qemuIo(['-r', '-f', 'raw', '-c', 'read -v 1048064 1024', uri]), 'qemu-io read').replace(/\d+\.\d+ sec.*\n/, ''),
  };
  ok(qemuImg(['convert', '-O', 'raw', uri, out]), 'convert');
  view.convert = readFileSync(out).toString('hex').length.toString() + ':' + spawnSync('sha256sum', [out], { encoding: 'utf8' }).stdout.split(' ')[0];
  if (hasLibnbd) {
    view.nbdinfo = hide(ok(run('nbdinfo', [uri]), 'nbdinfo')).replace(/\tcontent: .*\n/, '');
    view.nbdmap = ok(run('nbdinfo', ['--map', uri]), 'nbdinfo --map');
    ok(run('nbdcopy', ['--connections=4', '--requests=16', uri, `${out}.copy`]), 'nbdcopy');
    view.nbdcopy = spawnSync('sha256sum', [`${out}.copy`], { encoding: 'utf8' }).stdout.split(' ')[0]!;
  }
  return view;
}

/** A qcow2 image with data, zero clusters and holes, and its flat raw contents. */
function makeImage(): void {
  ok(qemuImg(['create', '-q', '-f', 'qcow2', p('base.qcow2'), '8M']), 'create');
  ok(qemuIo(['-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 3M 64k', '-c', 'write -z 5M 1M', '-c', 'write -P 0x33 1048576 512', p('base.qcow2')]), 'qemu-io');
  ok(qemuImg(['convert', '-O', 'raw', p('base.qcow2'), p('flat.raw')]), 'flat');
}

describeQemu('tsimg-nbd vs qemu-nbd, with real NBD clients', () => {
  it.each(['tcp', 'unix'] as const)('qemu-img, qemu-io, nbdinfo and nbdcopy see the same export (%s)', async (transport) => {
    makeImage();
    copyFileSync(p('base.qcow2'), p('q.qcow2'));
    copyFileSync(p('base.qcow2'), p('t.qcow2'));
    const qUri = await start('qemu', p('q.qcow2'), transport, ['-e', '4', '-f', 'qcow2']);
    const tUri = await start('tsimg', p('t.qcow2'), transport, ['-e', '4', '-f', 'qcow2']);
    const q = clientView(qUri, p('q.out'));
    const t = clientView(tUri, p('t.out'));
    expect(t).toEqual(q);
    expect(q.compare).toBe('Images are identical.\n');
  });

  it.each([
    [[]],
    [['--discard=unmap', '--detect-zeroes=unmap']],
    [['--cache=writethrough', '--detect-zeroes=on', '--aio=threads']],
  ])('writes through tsimg convert -n, qemu-io and nbdcopy leave identical, clean images (%j)', async (extra) => {
    makeImage();
    copyFileSync(p('base.qcow2'), p('q.qcow2'));
    copyFileSync(p('base.qcow2'), p('t.qcow2'));
    const args = ['-f', 'qcow2', '-e', '2', ...extra];
    const uris = { qemu: await start('qemu', p('q.qcow2'), 'unix', args), tsimg: await start('tsimg', p('t.qcow2'), 'unix', args) };
    for (const uri of Object.values(uris)) {
      ok(qemuIo(['-f', 'raw', '-c', 'write -P 0x12 2M 1M', p('flat.raw')]), 'flat write');
      ok(tsimg(['convert', '-n', '-f', 'raw', '-O', 'raw', p('flat.raw'), uri]), 'tsimg convert -n to the export');
      expect(tsimg(['compare', '-f', 'raw', '-F', 'raw', p('flat.raw'), uri]).stdout).toBe('Images are identical.\n');
      expect(tsimg(['check', uri]).stderr).toBe('tsimg: This image format does not support checks\n');
      ok(qemuIo(['-f', 'raw', '-c', 'write -P 0x44 512 7k', '-c', 'write -z 3M 32k', '-c', 'discard 0 64k', '-c', 'write -P 0x55 7M 4k', '-c', 'flush', uri]), 'qemu-io write');
      if (hasLibnbd) ok(run('nbdcopy', ['--connections=2', p('flat.raw'), uri]), 'nbdcopy in');
      ok(qemuIo(['-f', 'raw', '-c', 'write -P 0x66 6M 100k', '-c', 'write -P 0 6M 64k', '-c', 'discard 2M 128k', uri]), 'qemu-io write 2');
      expect(ok(qemuIo(['-r', '-f', 'raw', '-c', 'read -P 0x66 6356992 36k', uri]), 'read back')).toContain('read 36864/36864');
    }
    for (const pid of pidFiles.splice(0)) process.kill(Number(readFileSync(pid, 'utf8')), 'SIGTERM');
    // SIGTERM ends both cleanly; the images are closed once check can lock them.
    for (const img of ['q.qcow2', 't.qcow2']) {
      let r: RunResult;
      do r = qemuImg(['check', p(img)]);
      while (r.stderr.includes('lock'));
      expect(r.stdout).toContain('No errors were found on the image.');
    }
    expect(ok(qemuImg(['compare', p('q.qcow2'), p('t.qcow2')]), 'compare')).toBe('Images are identical.\n');
    expect(qemuImg(['map', '--output=json', p('t.qcow2')]).stdout).toBe(qemuImg(['map', '--output=json', p('q.qcow2')]).stdout);
  });

  it('tsimg info, map, convert and compare on an export print what qemu-img prints', async () => {
    makeImage();
    copyFileSync(p('base.qcow2'), p('q.qcow2'));
    copyFileSync(p('base.qcow2'), p('t.qcow2'));
    const uris = [
      await start('qemu', p('q.qcow2'), 'tcp', ['-f', 'qcow2', '-r', '-e', '8']),
      await start('tsimg', p('t.qcow2'), 'unix', ['-f', 'qcow2', '-r', '-e', '8']),
    ];
    for (const uri of uris) {
      const port = /:(\d+)\//.exec(uri)?.[1];
      const sock = /socket=(.*)$/.exec(uri)?.[1];
      const json = port
        ? `json:{"file.driver":"nbd","file.host":"127.0.0.1","file.port":"${port}","file.export":"e"}`
        : `json:{"file.driver":"nbd","file.server.type":"unix","file.server.path":"${sock}","file.export":"e"}`;
      const rows = [
        ['info', uri], ['info', '--output=json', uri], ['map', uri], ['map', '--output=json', uri],
        ['compare', '-f', 'raw', uri, p('flat.raw')], ['info', json], ['info', uri.replace('/e', '/nope')],
      ];
      for (const args of rows) {
        const q = qemuImg(args);
        const t = tsimg(args);
        expect({ args, out: t.stdout, err: t.stderr, status: t.status }).toEqual({ args, out: q.stdout, err: q.stderr.replaceAll('qemu-img:', 'tsimg:'), status: q.status });
      }
      for (const fmt of ['raw', 'qcow2']) {
        ok(qemuImg(['convert', '-O', fmt, uri, p(`qo.${fmt}`)]), 'qemu-img convert');
        ok(tsimg(['convert', '-O', fmt, uri, p(`to.${fmt}`)]), 'tsimg convert');
        expect(readFileSync(p(`to.${fmt}`)).equals(readFileSync(p(`qo.${fmt}`)))).toBe(true);
      }
    }
  });

  it('convert without -n writes a raw image onto an export, as qemu-img does (and refuses a small one)', async () => {
    makeImage();
    ok(qemuImg(['create', '-q', '-f', 'raw', p('q.raw'), '16M']), 'q.raw');
    ok(qemuImg(['create', '-q', '-f', 'raw', p('t.raw'), '16M']), 't.raw');
    ok(qemuImg(['create', '-q', '-f', 'raw', p('big.raw'), '32M']), 'big.raw');
    const q = await start('qemu', p('q.raw'), 'unix', ['-f', 'raw']);
    const t = await start('tsimg', p('t.raw'), 'unix', ['-f', 'raw']);
    ok(qemuImg(['convert', '-O', 'raw', p('base.qcow2'), q]), 'qemu-img convert');
    ok(tsimg(['convert', '-O', 'raw', p('base.qcow2'), t]), 'tsimg convert');
    const small = [qemuImg(['convert', '-O', 'raw', p('big.raw'), q]), tsimg(['convert', '-O', 'raw', p('big.raw'), t])];
    expect(small[1]).toEqual({ ...small[0], stderr: small[0]!.stderr.replace('qemu-img:', 'tsimg:').replace(q, t) });
    for (const pid of pidFiles.splice(0)) process.kill(Number(readFileSync(pid, 'utf8')), 'SIGTERM');
    let r: RunResult;
    do r = qemuImg(['compare', '-f', 'raw', '-F', 'raw', p('q.raw'), p('t.raw')]);
    while (r.stderr.includes('lock'));
    expect(r.stdout).toBe('Images are identical.\n');
  });

  it('convert -O qcow2 without -n formats an export in place, byte for byte as qemu-img does', async () => {
    makeImage();
    for (const extra of [[], ['-c', '-o', 'cluster_size=4096']]) {
      writeFileSync(p('fq.raw'), Buffer.alloc(16 << 20, 0x55));
      writeFileSync(p('ft.raw'), Buffer.alloc(16 << 20, 0x55));
      const q = await start('qemu', p('fq.raw'), 'unix', ['-f', 'raw']);
      const t = await start('tsimg', p('ft.raw'), 'unix', ['-f', 'raw']);
      ok(qemuImg(['convert', '-O', 'qcow2', ...extra, p('base.qcow2'), q]), 'qemu-img convert');
      ok(tsimg(['convert', '-O', 'qcow2', ...extra, p('base.qcow2'), t]), 'tsimg convert');
      expect(tsimg(['check', '-f', 'qcow2', t]).status).toBe(0);
      for (const pid of pidFiles.splice(0)) process.kill(Number(readFileSync(pid, 'utf8')), 'SIGTERM');
      // The export's whole content, the bytes past the image included.
      let same = false;
      for (let i = 0; i < 50 && !same; i++) {
        same = readFileSync(p('ft.raw')).equals(readFileSync(p('fq.raw')));
        if (!same) await new Promise((r) => setTimeout(r, 100)); // the servers' last writes
      }
      expect(same, extra.join(' ')).toBe(true);
    }
  });

  it('dd onto an export writes what qemu-img dd writes (every block, zero runs too), and refuses a small one', async () => {
    makeImage();
    // Exports full of 0x55, so that a skipped zero run would show.
    writeFileSync(p('dq.raw'), Buffer.alloc(24 << 20, 0x55));
    writeFileSync(p('dt.raw'), Buffer.alloc(24 << 20, 0x55));
    writeFileSync(p('tiny-q.raw'), Buffer.alloc(1 << 20, 0x55));
    writeFileSync(p('tiny-t.raw'), Buffer.alloc(1 << 20, 0x55));
    const q = await start('qemu', p('dq.raw'), 'unix', ['-f', 'raw']);
    const t = await start('tsimg', p('dt.raw'), 'unix', ['-f', 'raw']);
    const qTiny = await start('qemu', p('tiny-q.raw'), 'unix', ['-f', 'raw']);
    const tTiny = await start('tsimg', p('tiny-t.raw'), 'unix', ['-f', 'raw']);
    for (const extra of [['bs=64k', 'count=100'], ['bs=1M', 'skip=2']]) {
      ok(qemuImg(['dd', '-O', 'raw', `if=${p('base.qcow2')}`, `of=${q}`, ...extra]), 'qemu-img dd');
      ok(tsimg(['dd', '-O', 'raw', `if=${p('base.qcow2')}`, `of=${t}`, ...extra]), 'tsimg dd');
    }
    const small = [
      qemuImg(['dd', '-O', 'raw', `if=${p('base.qcow2')}`, `of=${qTiny}`]),
      tsimg(['dd', '-O', 'raw', `if=${p('base.qcow2')}`, `of=${tTiny}`]),
    ];
    expect(small[1]).toEqual({ ...small[0], stderr: small[0]!.stderr.replace('qemu-img:', 'tsimg:').replace(qTiny, tTiny) });
    for (const pid of pidFiles.splice(0)) process.kill(Number(readFileSync(pid, 'utf8')), 'SIGTERM');
    let r: RunResult;
    do r = qemuImg(['compare', '-f', 'raw', '-F', 'raw', p('dq.raw'), p('dt.raw')]);
    while (r.stderr.includes('lock'));
    expect(r.stdout).toBe('Images are identical.\n');
    expect(readFileSync(p('tiny-t.raw')).equals(readFileSync(p('tiny-q.raw')))).toBe(true);
  });

  it('--image-opts, -l snapshot.name=… and -v serve what qemu-nbd serves', async () => {
    makeImage();
    ok(qemuImg(['snapshot', '-c', 'sn', p('base.qcow2')]), 'snapshot');
    ok(qemuIo(['-c', 'write -P 0x5a 0 2M', p('base.qcow2')]), 'after the snapshot');
    const maps: string[][] = [];
    for (const server of ['qemu', 'tsimg'] as const) {
      const a = await start(server, `driver=qcow2,file.driver=file,file.filename=${p('base.qcow2')}`, 'unix', ['--image-opts', '-r', '-v']);
      const b = await start(server, p('base.qcow2'), 'unix', ['-l', 'snapshot.name=sn', '-f', 'qcow2']);
      maps.push([a, b].map((u) => ok(qemuImg(['map', '--output=json', u]), 'map') + ok(qemuIo(['-r', '-f', 'raw', '-c', 'read -v 0 32', u]), 'read').replace(/\d+\.\d+ sec.*\n/, '')));
    }
    expect(maps[1]).toEqual(maps[0]);
  });

  it('-s writes to a temporary overlay, -l serves a snapshot, -A and -B match qemu-nbd', async () => {
    makeImage();
    ok(qemuImg(['snapshot', '-c', 'sn', p('base.qcow2')]), 'snapshot');
    ok(qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('top.qcow2')]), 'top');
    ok(qemuImg(['bitmap', '--add', p('top.qcow2'), 'b']), 'bitmap');
    ok(qemuIo(['-c', 'write -P 0x77 2M 128k', '-c', 'write -P 0x78 6M 64k', p('top.qcow2')]), 'top data');
    const before = readFileSync(p('top.qcow2'));
    for (const server of ['qemu', 'tsimg'] as const) {
      const uri = await start(server, p('top.qcow2'), 'unix', ['-s', '-f', 'qcow2']);
      ok(qemuIo(['-f', 'raw', '-c', 'write -P 0x99 0 1M', uri]), 'write to overlay');
      expect(ok(qemuIo(['-r', '-f', 'raw', '-c', 'read -P 0x99 0 1M', uri]), 'read overlay')).toContain('read 1048576/1048576');
    }
    expect(readFileSync(p('top.qcow2')).equals(before)).toBe(true);
    if (!hasLibnbd) return;
    const views: Record<string, string>[] = [];
    for (const server of ['qemu', 'tsimg'] as const) {
      const a = await start(server, p('top.qcow2'), 'unix', ['-r', '-A', '-B', 'b', '-f', 'qcow2', '-e', '0']);
      const l = await start(server, p('base.qcow2'), 'unix', ['-l', 'sn', '-f', 'qcow2']);
      views.push({
        depth: ok(run('nbdinfo', ['--map=qemu:allocation-depth', a]), 'depth'),
        bitmap: ok(run('nbdinfo', ['--map=qemu:dirty-bitmap:b', a]), 'bitmap'),
        contexts: ok(run('nbdinfo', ['--list', '--json', a]), 'list').replace(/"uri": "[^"]*"/, '').replace(/"export-size": \d+,/, '$&'),
        snapshot: ok(qemuImg(['map', '--output=json', l]), 'snapshot map'),
      });
    }
    expect(views[1]).toEqual(views[0]);
  });
});

/** The option requests of a handshake, as [option, data] (numbers from the NBD spec). */
const u32 = (n: number): number[] => [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
const str = (t: string): number[] => [...u32(t.length), ...Buffer.from(t)];
const metaQuery = (exp: string, queries: string[]): number[] => [...str(exp), ...u32(queries.length), ...queries.flatMap(str)];
const infoQuery = (exp: string, items: number[]): number[] => [...str(exp), 0, items.length, ...items.flatMap((i) => [0, i])];
const OPTIONS: [number, number[]][] = [
  [3, []], // LIST
  [3, [1]], // LIST with data
  [5, []], // STARTTLS
  [99, [1, 2, 3]], // unknown
  [10, metaQuery('e', ['base:allocation'])], // SET_META_CONTEXT before structured replies
  [9, metaQuery('e', [])], // LIST_META_CONTEXT: all
  [9, metaQuery('e', ['qemu:', 'base:'])],
  [9, metaQuery('nope', ['base:allocation'])],
  [6, infoQuery('nope', [])], // INFO of a missing export
  [6, infoQuery('e', [1, 2, 3])], // INFO with name, description, block size
  [6, infoQuery('e', [])],
  [8, []], // STRUCTURED_REPLY
  [8, []], // again
  [8, [0]], // with data
  [10, metaQuery('e', ['base:allocation', 'qemu:dirty-bitmap:b', 'qemu:allocation-depth', 'qemu:nothing', 'other:x'])],
  [7, infoQuery('e', [3])], // GO
];

/** Runs the options against a server and returns every reply (header and data) as hex. */
async function optionReplies(sock: string): Promise<string[]> {
  const s = connect(sock);
  const chunks: Buffer[] = [];
  let waiter: (() => void) | undefined;
  s.on('data', (d: Buffer) => {
    chunks.push(d);
    waiter?.();
  });
  let closed = false;
  s.on('close', () => {
    closed = true;
    waiter?.();
  });
  const take = async (n: number): Promise<Buffer> => {
    while (Buffer.concat(chunks).length < n) {
      if (closed) throw new Error(`connection closed by the server after: ${out.slice(-3).join(' | ')}`);
      await new Promise<void>((r) => (waiter = r));
    }
    const all = Buffer.concat(chunks);
    chunks.splice(0, chunks.length, all.subarray(n));
    return all.subarray(0, n);
  };
  const out: string[] = [(await take(18)).toString('hex')];
  s.write(Buffer.from(u32(3)));
  for (const [option, data] of OPTIONS) {
    s.write(Buffer.from([0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, ...u32(option), ...u32(data.length), ...data]));
    for (;;) {
      const head = await take(20);
      const type = head.readUInt32BE(12);
      out.push(`${option}: ${head.toString('hex')} ${(await take(head.readUInt32BE(16))).toString('hex')}`);
      if (type === 1 || type >= 0x80000000) break; // ACK or an error ends the option's replies
    }
  }
  // Transmission: one request at a time, every chunk of its reply (qemu's texts included).
  const M = 1 << 20;
  const requests: [number, number, number, number][] = [
    [0, 0, 0, 4096], // READ data
    [0, 0, 2 * M, 4096], // READ a hole
    [0, 0, M - 4096, 2 * M], // READ across data and holes: sparse chunks
    [0x4, 0, M - 4096, 2 * M], // READ with DF: one chunk
    [0, 0, 8 * M - 512, 1024], // READ past the end
    [0, 0, 0, 32 * M + 1], // READ too long
    [0, 7, 0, 8 * M], // BLOCK_STATUS: every context
    [0x8, 7, 0, 8 * M], // BLOCK_STATUS REQ_ONE
    [0, 7, 0, 0], // BLOCK_STATUS of nothing
    [0x2, 0, 0, 512], // READ with a flag it does not take
    [0, 1, 0, 0], // WRITE to a read-only export
    [0, 4, 0, 4096], // TRIM on a read-only export
    [0, 5, 0, 65536], // CACHE
    [0, 3, 0, 0], // FLUSH
    [0x1, 0, 0, 512], // READ with FUA
    [0, 42, 0, 0], // an unknown command
  ];
  let handle = 1;
  for (const [flags, type, offset, length] of requests) {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(BigInt(handle++), 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    s.write(h);
    for (;;) {
      const magic = await take(4);
      if (magic.readUInt32BE(0) === 0x67446698) {
        // A simple reply: qemu answers successes without data this way even with structured replies.
        out.push(`cmd ${type}: ${magic.toString('hex')}${(await take(12)).toString('hex')}`);
        break;
      }
      const head = Buffer.concat([magic, await take(16)]);
      const data = await take(head.readUInt32BE(16));
      out.push(`cmd ${type}: ${head.toString('hex')} ${data.length > 64 ? `${data.length} bytes ${data.subarray(0, 16).toString('hex')}` : data.toString('hex')}`);
      if ((head.readUInt16BE(4) & 1) !== 0) break;
    }
  }
  s.destroy();
  return out;
}

describeQemu('the NBD handshake, byte for byte as qemu-nbd', () => {
  it('answers options (LIST, STARTTLS, unknown, meta contexts, INFO, GO) and requests with the same replies', async () => {
    makeImage();
    ok(qemuImg(['bitmap', '--add', p('base.qcow2'), 'b']), 'bitmap');
    const replies: string[][] = [];
    for (const server of ['qemu', 'tsimg'] as const) {
      const uri = await start(server, p('base.qcow2'), 'unix', ['-r', '-A', '-B', 'b', '-D', 'a disk', '-f', 'qcow2']);
      replies.push(await optionReplies(/socket=(.*)$/.exec(uri)![1]!));
    }
    expect(replies[1]).toEqual(replies[0]);
  });
});

describeQemu('tsimg-nbd messages and exit statuses', () => {
  it.each([
    [['nonexist.qcow2']],
    [['-k', 'rel.sock', 'x']],
    [[]],
    [['-e', '-1', 'x']],
    [['--cache=foo', 'x']],
    [['--discard=maybe', 'x']],
    [['--detect-zeroes=unmap', 'x']],
    [['-x']],
    [['--bogus', 'x']],
    [['-f', 'raw', '--image-opts', 'x']],
    [['-p', '1', '-r', 'IMG', '-B', 'nob']],
    [['-p', '1', 'IMG', '-l', 'nosnap']],
    [['--fork', '-p', '1', 'nonexist.qcow2']],
  ])('%j', (args) => {
    makeImage();
    const a = args.map((w) => w.replace('IMG', p('base.qcow2')));
    const q = nbd('qemu', a);
    const t = nbd('tsimg', a);
    expect({ err: t.stderr, status: t.status }).toEqual({ err: q.stderr.replaceAll('qemu-nbd', 'tsimg-nbd'), status: q.status });
  });

  it('refuses the kernel client modes (-c, -d) with one line', () => {
    for (const args of [['-c', '/dev/nbd0', 'x'], ['-d', '/dev/nbd0']]) {
      expect(nbd('tsimg', args)).toEqual({ stdout: '', stderr: 'tsimg-nbd: Kernel /dev/nbdN support not available\n', status: 1 });
    }
  });

  it('without -t, stops once its client has gone (status 0, socket removed)', async () => {
    makeImage();
    const sock = p('once.sock');
    const pidFile = p('once.pid');
    pidFiles.push(pidFile);
    const r = nbd('tsimg', ['--fork', '--pid-file', pidFile, '-k', sock, '-r', p('base.qcow2')]);
    expect(r.status).toBe(0);
    const pid = Number(readFileSync(pidFile, 'utf8'));
    expect(ok(qemuImg(['info', `nbd+unix://?socket=${sock}`]), 'info')).toContain('virtual size: 8 MiB');
    const alive = (): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 200 && alive(); i++) await new Promise((res) => setTimeout(res, 25));
    expect(alive()).toBe(false);
    expect(existsSync(sock)).toBe(false);
  });

  it('refuses an image another server holds, with qemu-nbd\'s lock message', async () => {
    makeImage();
    await start('qemu', p('base.qcow2'), 'unix');
    const port = String(await freePort());
    const q = nbd('qemu', ['-p', port, p('base.qcow2')]);
    const t = nbd('tsimg', ['-p', port, p('base.qcow2')]);
    expect(q.status).toBe(1);
    expect({ err: t.stderr, status: t.status }).toEqual({ err: q.stderr.replaceAll('qemu-nbd', 'tsimg-nbd'), status: q.status });
  });
});


