/**
 * NBD names (address.ts, nbd/location.ts): qemu's URI, legacy and block-option forms, the name
 * qemu reports for each (nbd_refresh_filename) read back to the same address, and qemu's
 * refusals ("No valid URL specified").
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { locateImage, locateImageFromOptions } from '../src/location.js';
import { type NbdAddress, nbdFilename, parseNbdName } from '../src/nbd/address.js';

describe('NBD names', () => {
  it.each([
    ['nbd://127.0.0.1:10810/disk', { kind: 'inet', host: '127.0.0.1', port: 10810, export: 'disk' }],
    ['nbd://example.org/disk', { kind: 'inet', host: 'example.org', port: 10809, export: 'disk' }],
    ['nbd+tcp://[::1]:99/a/b', { kind: 'inet', host: '::1', port: 99, export: 'a/b' }],
    ['nbd://h', { kind: 'inet', host: 'h', port: 10809, export: undefined }],
    ['nbd+unix:///e?socket=/run/s.sock', { kind: 'unix', path: '/run/s.sock', export: 'e' }],
    ['nbd+unix://?socket=/s', { kind: 'unix', path: '/s', export: undefined }],
    ['nbd:localhost:10809:exportname=x', { kind: 'inet', host: 'localhost', port: 10809, export: 'x' }],
    ['nbd:unix:/tmp/s', { kind: 'unix', path: '/tmp/s', export: undefined }],
  ])('%s', (name, addr) => {
    expect(parseNbdName(name)).toEqual(addr);
    expect(locateImage(name).nbd).toEqual(addr);
  });

  it.each(['nbd:///x', 'nbd+unix:///x', 'nbd+unix://host/x?socket=/a', 'nbd://h/x?foo=1', 'nbd+unix:///x?sock=/a', 'nbd://a:1:2/x'])(
    'refuses %s as qemu does',
    (name) => {
      expect(() => locateImage(name)).toThrow('No valid URL specified');
    },
  );

  it('block options: server.*, legacy host/port/path, under a format or as the driver', () => {
    const opts = (o: Record<string, string>) => new Map(Object.entries(o));
    expect(locateImageFromOptions(opts({ driver: 'raw', 'file.driver': 'nbd', 'file.server.type': 'unix', 'file.server.path': '/s', 'file.export': 'e' }))).toEqual({
      path: 'nbd+unix:///e?socket=/s', nbd: { kind: 'unix', path: '/s', export: 'e' }, format: 'raw',
    });
    expect(locateImageFromOptions(opts({ 'file.driver': 'nbd', 'file.host': 'h', 'file.port': '7' })).path).toBe('nbd://h:7');
    expect(locateImageFromOptions(opts({ driver: 'nbd', 'server.type': 'inet', 'server.host': 'h' }))).toEqual({
      path: 'nbd://h:10809', nbd: { kind: 'inet', host: 'h', port: 10809, export: undefined }, format: 'nbd',
    });
    expect(() => locateImageFromOptions(opts({ 'file.driver': 'nbd', 'file.host': 'h', 'file.server.type': 'inet' }))).toThrow(
      "Cannot use 'server' and path/host/port at the same time",
    );
    expect(() => locateImageFromOptions(opts({ 'file.driver': 'nbd', 'file.bogus': '1' }))).toThrow("Invalid parameter 'bogus'");
    expect(() => locateImageFromOptions(opts({ 'file.driver': 'nbd' }))).toThrow("Parameter 'server.type' is missing");
  });

  it('the name qemu reports reads back as the same address', () => {
    const label = fc.stringMatching(/^[a-z0-9][a-z0-9.-]{0,20}$/);
    const exportName = fc.option(fc.stringMatching(/^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,20}$/), { nil: undefined });
    const addr: fc.Arbitrary<NbdAddress> = fc.oneof(
      fc.record({ kind: fc.constant('inet' as const), host: label, port: fc.integer({ min: 1, max: 65535 }), export: exportName }),
      fc.record({ kind: fc.constant('unix' as const), path: label.map((l) => `/tmp/${l}`), export: exportName }),
    );
    fc.assert(fc.property(addr, (a) => void expect(parseNbdName(nbdFilename(a))).toEqual(a)));
  });
});
