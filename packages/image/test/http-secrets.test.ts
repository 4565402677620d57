/** The curl driver's secret options (--object secret) and sslverify, from names to requests. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpDevice, UsageError } from '@tsimg/raw';
import { locateImageFromOptions, openHostFile } from '../src/index.js';
import { startHttpServer } from '../../../test-images/http-server.mjs';

let dir: string;
let server: Awaited<ReturnType<typeof startHttpServer>>;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tsimg-http-secrets-'));
  writeFileSync(join(dir, 'disk.img'), new Uint8Array(64 * 1024).fill(7));
  server = await startHttpServer(dir);
});
afterAll(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);

describe('curl secrets and sslverify', () => {
  it('password-secret and cookie-secret are looked up in the secrets and sent', async () => {
    const loc = locateImageFromOptions(
      new Map([['driver', 'http'], ['url', `${server.url}/disk.img`], ['username', 'me'], ['password-secret', 'pw'], ['cookie-secret', 'ck']]),
    );
    expect(loc.http?.secrets).toEqual({ password: 'pw', cookie: 'ck' });
    const seen: Headers[] = [];
    loc.http!.options.fetch = (input, init) => {
      seen.push(new Headers(init?.headers));
      return fetch(input, init);
    };
    const secrets = new Map([['pw', enc('sëcret')], ['ck', enc('a=b')]]);
    const dev = await openHostFile(loc.path, loc.http, {}, undefined, secrets);
    expect(dev).toBeInstanceOf(HttpDevice);
    await dev.read(0, new Uint8Array(10));
    await dev.close();
    expect(seen.length).toBeGreaterThan(0);
    for (const h of seen) {
      expect(h.get('authorization')).toBe(`Basic ${Buffer.from('me:sëcret').toString('base64')}`);
      expect(h.get('cookie')).toBe('a=b');
    }
  });

  it("a secret id that names nothing fails as qemu's lookup does, before any request", async () => {
    const loc = locateImageFromOptions(new Map([['driver', 'http'], ['url', `${server.url}/disk.img`], ['proxy-password-secret', 'nope']]));
    let requests = 0;
    loc.http!.options.fetch = (input, init) => {
      requests++;
      return fetch(input, init);
    };
    const err = await openHostFile(loc.path, loc.http, {}, undefined, new Map()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UsageError);
    expect((err as Error).message).toBe("No secret with id 'nope'");
    expect(requests).toBe(0);
  });

  it('sslverify=off turns certificate checks off; on, or absent, keeps them', () => {
    const at = (value?: string) =>
      locateImageFromOptions(new Map([['driver', 'https'], ['url', 'https://example.invalid/x.img'], ...(value === undefined ? [] : [['sslverify', value] as [string, string]])]))
        .http!.options.sslVerify;
    expect(at('off')).toBe(false);
    expect(at('no')).toBe(false);
    expect(at('on')).toBeUndefined();
    expect(at()).toBeUndefined();
    expect(() => at('maybe')).toThrow("Parameter 'sslverify' expects 'on' or 'off'");
  });
});
