// qemu's names for images on web servers (bdrv_refresh_filename with curl's strong options),
// without qemu: the expected names are what qemu-img 7.2's curl driver printed for the same
// options (the cross-checks in packages/cli/test/http.test.ts compare them live).
import { describe, expect, it } from 'vitest';
import { UsageError } from '@tsimg/raw';
import { checkHttpBaseDirectory, httpImageName } from '../src/http-location.js';
import { locateImage, locateImageFromOptions } from '../src/location.js';

const U = 'http://127.0.0.1:18931/small-v3.qcow2';

function http(name: string) {
  const loc = locateImage(name);
  if (loc.http === undefined) throw new Error(`${name} is not on a web server`);
  return loc.http;
}

describe('httpImageName', () => {
  it('is the URL without strong options (readahead, timeout and sslverify=on change no data)', () => {
    expect(httpImageName(http(U), 'qcow2')).toBe(U);
    expect(httpImageName(http(`json:{"driver":"qcow2","file":{"driver":"http","url":"${U}","readahead":"64k","timeout":3,"sslverify":true}}`), 'qcow2')).toBe(U);
  });
  it('is json: of the format node over the curl node, values as given', () => {
    expect(httpImageName(http(`json:{"driver":"qcow2","file":{"driver":"http","url":"${U}","sslverify":false,"timeout":3}}`), 'qcow2')).toBe(
      `json:{"driver": "qcow2", "file": {"url": "${U}", "driver": "http", "sslverify": false}}`,
    );
    expect(httpImageName(http(`json:{"file.driver":"http","file.url":"${U}","file.sslverify":"off","file.cookie":""}`), 'qcow2')).toBe(
      `json:{"driver": "qcow2", "file": {"url": "${U}", "driver": "http", "cookie": "", "sslverify": "off"}}`,
    );
    expect(httpImageName(http(`json:{"driver":"qcow2","file":{"driver":"http","url":"${U}","sslverify":true,"username":"u"}}`), 'qcow2')).toBe(
      `json:{"driver": "qcow2", "file": {"url": "${U}", "driver": "http", "username": "u", "sslverify": true}}`,
    );
    const opts = new Map([['driver', 'qcow2'], ['file.driver', 'http'], ['file.url', U], ['file.username', 'me']]);
    expect(httpImageName(locateImageFromOptions(opts).http!, 'qcow2')).toBe(`json:{"driver": "qcow2", "file": {"url": "${U}", "driver": "http", "username": "me"}}`);
  });
  it('is json: of the curl node itself for a bare protocol node', () => {
    const loc = http(`json:{"driver":"http","url":"${U}","username":"u","proxy-username":"p","readahead":"64k"}`);
    expect(httpImageName(loc)).toBe(`json:{"url": "${U}", "proxy-username": "p", "driver": "http", "username": "u"}`);
  });
});

describe('checkHttpBaseDirectory', () => {
  const strong = http(`json:{"driver":"qcow2","file":{"driver":"https","url":"${U.replace('http:', 'https:')}","cookie":"a=b"}}`);
  it("refuses a relative backing name below a json:-named curl node with qemu's message", () => {
    expect(() => checkHttpBaseDirectory(strong, 'base.qcow2')).toThrow(UsageError);
    expect(() => checkHttpBaseDirectory(strong, 'dir/base.qcow2')).toThrow(/^Cannot generate a base directory for https nodes$/);
  });
  it('lets absolute and protocol names through, and any name below a URL-named node', () => {
    expect(() => checkHttpBaseDirectory(strong, '/srv/base.qcow2')).not.toThrow();
    expect(() => checkHttpBaseDirectory(strong, 'https://example.com/base.qcow2')).not.toThrow();
    expect(() => checkHttpBaseDirectory(http(U), 'base.qcow2')).not.toThrow();
  });
});
