/**
 * Round trips of every NBD wire structure (handshake-codec.ts, transmission-codec.ts) under
 * fast-check, plus fixed vectors from the NBD specification's layouts, and the refusals of
 * malformed bytes.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { FormatError } from '@tsimg/raw';
import {
  decodeExportNameReply, decodeGreeting, decodeInfoItem, decodeInfoRequest, decodeMetaContextReply, decodeMetaContextRequest,
  decodeOptionHeader, decodeOptionReplyHeader, decodeServerEntry, encodeExportNameReply, encodeGreeting, encodeInfoItem,
  encodeInfoRequest, encodeMetaContextReply, encodeMetaContextRequest, encodeOptionHeader, encodeOptionReplyHeader,
  encodeServerEntry, type InfoItem,
} from '../src/nbd/handshake-codec.js';
import {
  type ChunkPayload, chunkType, decodeChunkPayload, decodeReplyHeader, decodeRequest, encodeChunkHeader, encodeChunkPayload,
  encodeRequest, encodeSimpleReply,
} from '../src/nbd/transmission-codec.js';
import { NBD_REP_ERR_UNKNOWN, NBD_REP_FLAG_ERROR } from '../src/nbd/protocol.js';

const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u64n = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const offset = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
const name = fc.string({ maxLength: 40, unit: 'grapheme' });
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

describe('handshake codecs', () => {
  it('greeting: the spec layout, and round trip', () => {
    expect(hex(encodeGreeting(3))).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
    fc.assert(fc.property(u16, (f) => decodeGreeting(encodeGreeting(f)) === f));
    const bad = encodeGreeting(1);
    bad[8] = 0;
    expect(() => decodeGreeting(bad)).toThrow(FormatError);
  });
  it('option request and reply headers round trip', () => {
    fc.assert(fc.property(u32, u32, (option, length) => {
      expect(decodeOptionHeader(encodeOptionHeader({ option, length }))).toEqual({ option, length });
    }));
    fc.assert(fc.property(u32, u32, u32, (option, type, length) => {
      expect(decodeOptionReplyHeader(encodeOptionReplyHeader({ option, type, length }))).toEqual({ option, type, length });
    }));
    expect(hex(encodeOptionReplyHeader({ option: 7, type: NBD_REP_ERR_UNKNOWN, length: 0 }))).toBe('0003e889045565a9' + '00000007' + '80000006' + '00000000');
    expect(NBD_REP_ERR_UNKNOWN & NBD_REP_FLAG_ERROR).not.toBe(0);
  });
  it('payloads round trip', () => {
    fc.assert(fc.property(name, fc.array(u16, { maxLength: 8 }), (n, requests) => {
      expect(decodeInfoRequest(encodeInfoRequest({ name: n, requests }))).toEqual({ name: n, requests });
    }));
    fc.assert(fc.property(name, fc.array(name, { maxLength: 5 }), (exportName, queries) => {
      expect(decodeMetaContextRequest(encodeMetaContextRequest({ exportName, queries }))).toEqual({ exportName, queries });
    }));
    fc.assert(fc.property(name, name, (n, description) => {
      expect(decodeServerEntry(encodeServerEntry({ name: n, description }))).toEqual({ name: n, description });
    }));
    fc.assert(fc.property(u32, name, (id, n) => {
      expect(decodeMetaContextReply(encodeMetaContextReply({ id, name: n }))).toEqual({ id, name: n });
    }));
    const item: fc.Arbitrary<InfoItem> = fc.oneof(
      fc.record({ kind: fc.constant('export' as const), size: offset, flags: u16 }),
      fc.record({ kind: fc.constant('name' as const), name }),
      fc.record({ kind: fc.constant('description' as const), description: name }),
      fc.record({ kind: fc.constant('block-size' as const), minimum: u32, preferred: u32, maximum: u32 }),
      fc.record({ kind: fc.constant('unknown' as const), type: fc.integer({ min: 4, max: 0xffff }) }),
    );
    fc.assert(fc.property(item, (i) => void expect(decodeInfoItem(encodeInfoItem(i))).toEqual(i)));
    fc.assert(fc.property(offset, u16, fc.boolean(), (size, flags, nz) => {
      const b = encodeExportNameReply(size, flags, nz);
      expect(b.length).toBe(nz ? 10 : 134);
      expect(decodeExportNameReply(b)).toEqual({ size, flags });
    }));
  });
  it('refuses truncated and inconsistent payloads', () => {
    expect(() => decodeInfoRequest(new Uint8Array([0, 0, 0, 9, 1]))).toThrow(FormatError);
    const r = encodeInfoRequest({ name: 'a', requests: [1, 2] });
    expect(() => decodeInfoRequest(r.subarray(0, r.length - 1))).toThrow(FormatError);
    const m = encodeMetaContextRequest({ exportName: '', queries: ['base:allocation'] });
    expect(() => decodeMetaContextRequest(m.subarray(0, m.length - 2))).toThrow(FormatError);
    expect(() => decodeInfoItem(new Uint8Array([0, 0, 1]))).toThrow(FormatError);
  });
});

describe('transmission codecs', () => {
  it('request: the spec layout, and round trip', () => {
    expect(hex(encodeRequest({ flags: 1, type: 1, handle: 0x0102030405060708n, offset: 4096, length: 512 }))).toBe(
      '25609513' + '0001' + '0001' + '0102030405060708' + '0000000000001000' + '00000200',
    );
    fc.assert(fc.property(u16, u16, u64n, offset, u32, (flags, type, handle, off, length) => {
      expect(decodeRequest(encodeRequest({ flags, type, handle, offset: off, length }))).toEqual({ flags, type, handle, offset: off, length });
    }));
    const bad = encodeRequest({ flags: 0, type: 0, handle: 0n, offset: 0, length: 0 });
    bad[0] = 0;
    expect(() => decodeRequest(bad)).toThrow(FormatError);
  });
  it('simple reply and chunk headers round trip through decodeReplyHeader', () => {
    fc.assert(fc.property(u32, u64n, (error, handle) => {
      expect(decodeReplyHeader(encodeSimpleReply({ error, handle }))).toEqual({ kind: 'simple', error, handle });
    }));
    fc.assert(fc.property(u16, u16, u64n, u32, (flags, type, handle, length) => {
      expect(decodeReplyHeader(encodeChunkHeader({ flags, type, handle, length }))).toEqual({ kind: 'chunk', flags, type, handle, length });
    }));
  });
  it('chunk payloads round trip', () => {
    const payload: fc.Arbitrary<ChunkPayload> = fc.oneof(
      fc.constant({ kind: 'none' } as const),
      fc.record({ kind: fc.constant('data' as const), offset, data: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
      fc.record({ kind: fc.constant('hole' as const), offset, length: u32 }),
      fc.record({ kind: fc.constant('status' as const), contextId: u32, extents: fc.array(fc.record({ length: u32, flags: u32 }), { minLength: 1, maxLength: 10 }) }),
      fc.record({ kind: fc.constant('error' as const), error: u32, message: name }),
      fc.record({ kind: fc.constant('error' as const), error: u32, message: name, offset }),
    );
    fc.assert(fc.property(payload, (p) => {
      const head = encodeChunkPayload(p);
      const bytes = p.kind === 'data' ? Buffer.concat([head, p.data]) : head;
      const back = decodeChunkPayload(chunkType(p), new Uint8Array(bytes));
      if (p.kind === 'data') expect(back).toEqual({ kind: 'data', offset: p.offset, data: new Uint8Array(p.data) });
      else expect(back).toEqual(p);
    }));
  });
  it('refuses chunk payloads of the wrong size', () => {
    expect(() => decodeChunkPayload(2, new Uint8Array(11))).toThrow(FormatError);
    expect(() => decodeChunkPayload(5, new Uint8Array(8))).toThrow(FormatError);
    expect(() => decodeChunkPayload(1, new Uint8Array(8))).toThrow(FormatError);
    expect(() => decodeChunkPayload(0x8001, new Uint8Array([0, 0, 0, 1, 0, 5, 65]))).toThrow(FormatError);
  });
});
