/** HttpDevice over HTTPS: certificates are checked unless sslVerify is false (qemu's sslverify=off). */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpDevice, HttpError } from '../src/index.js';
import { socketsTo } from '../../../test-images/http-server.mjs';

const hasOpenssl = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const DATA = new Uint8Array(8192).map((_, i) => i & 0xff);

describe.runIf(hasOpenssl || process.env.CI)('HttpDevice over HTTPS with a self-signed certificate', () => {
  let dir: string;
  let server: Server;
  let url: string;
  /** Milliseconds before each range answer. */
  let rangeDelay = 0;
  /** Range requests answered or being answered. */
  let ranges = 0;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tsimg-tls-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
    server = createServer({ key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) }, (req, res) => {
      const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '');
      const headers = { 'Accept-Ranges': 'bytes', 'Content-Type': 'application/octet-stream' };
      if (req.method === 'HEAD' || m === null) {
        res.writeHead(200, { ...headers, 'Content-Length': DATA.length });
        res.end(req.method === 'HEAD' ? undefined : DATA);
        return;
      }
      const [a, b] = [Number(m[1]), Math.min(Number(m[2]), DATA.length - 1)];
      ranges++;
      setTimeout(() => {
        res.writeHead(206, { ...headers, 'Content-Range': `bytes ${a}-${b}/${DATA.length}`, 'Content-Length': b - a + 1 });
        res.end(DATA.subarray(a, b + 1));
      }, rangeDelay);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `https://127.0.0.1:${(server.address() as { port: number }).port}/disk.img`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses the certificate by default', async () => {
    const err = await HttpDevice.open(url, { retries: 0 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HttpError);
  });

  it('reads with sslVerify false', async () => {
    const dev = await HttpDevice.open(url, { sslVerify: false });
    const back = new Uint8Array(1000);
    await dev.read(3000, back);
    expect(back).toEqual(DATA.subarray(3000, 4000));
    await dev.close();
  });

  it('makes no request after its close, and leaves no connection open (one would keep a command from exiting)', async () => {
    const dev = await HttpDevice.open(url, { sslVerify: false, readahead: 0, blockSize: 1024, backoff: 150 });
    rangeDelay = 100;
    try {
      // Reads one after the other: the read-ahead window is still being fetched at the close.
      for (let offset = 0; offset < 2048; offset += 512) await dev.read(offset, new Uint8Array(512));
      expect(socketsTo(url)).toBeGreaterThan(0);
      await dev.close();
      // Requests sent before the close may still reach the server; a retry would come after
      // its 150 ms back-off.
      await new Promise((r) => setTimeout(r, 50));
      const asked = ranges;
      await new Promise((r) => setTimeout(r, 500));
      expect({ requestsAfterClose: ranges - asked, sockets: socketsTo(url) }).toEqual({ requestsAfterClose: 0, sockets: 0 });
    } finally {
      rangeDelay = 0;
    }
  });
});
