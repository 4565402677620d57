// The browser build's codecs (compress.browser.ts: DecompressionStream / CompressionStream and
// the WebAssembly zstd), run here in Node, against the Node codecs: each decodes what the other
// encodes, and hostile streams fail as compress.ts fails them.
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import * as browser from '../src/compress/compress.browser.js';
import * as node from '../src/compress/compress.js';

/** Compressible clusters: runs of a few byte values. */
const cluster = (size: number): fc.Arbitrary<Uint8Array> =>
  fc.array(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 1, max: 300 })), { minLength: 1, maxLength: 60 }).map((runs) => {
    const out = new Uint8Array(size);
    let pos = 0;
    for (let i = 0; pos < size; i++) {
      const [value, length] = runs[i % runs.length]!;
      out.fill(value * 61, pos, Math.min(size, pos + length));
      pos += length;
    }
    return out;
  });

describe.each(['zlib', 'zstd'] as const)('browser %s codec', (type) => {
  it('decodes what the Node codec encodes, and the other way round', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(512, 4096, 65536).chain((size) => cluster(size)), async (data) => {
        const size = data.length;
        const fromNode = (await node.compressCluster(type, data))!;
        expect(await browser.decompressCluster(type, fromNode, size)).toEqual(data);
        const fromBrowser = (await browser.compressCluster(type, data))!;
        expect(await node.decompressCluster(type, fromBrowser, size)).toEqual(data);
        // Stored clusters are followed by padding or other clusters' bytes: ignored.
        const padded = new Uint8Array(fromNode.length + 700).fill(0x5a);
        padded.set(fromNode);
        expect(await browser.decompressCluster(type, padded, size)).toEqual(data);
      }),
      { numRuns: 12 },
    );
  });
  it('refuses streams that decode to more or to less than the cluster', async () => {
    const data = new Uint8Array(8192).fill(7);
    const big = (await node.compressCluster(type, data))!;
    await expect(browser.decompressCluster(type, big, 4096)).rejects.toThrow(/^Invalid (zlib|zstd) compressed cluster: /);
    const small = (await node.compressCluster(type, data.subarray(0, 2048)))!;
    await expect(browser.decompressCluster(type, small, 4096)).rejects.toThrow(/^Invalid (zlib|zstd) compressed cluster: /);
  });
});

// Browsers without DecompressionStream / CompressionStream, or whose streams refuse
// 'deflate-raw': the same codec falls back to pako (deflate-pako.ts), with the same contract.
describe.each([
  ['missing', undefined],
  ['refusing deflate-raw', class {
    constructor(format: string) {
      throw new TypeError(`Unsupported compression format: '${format}'`);
    }
  }],
] as const)('browser zlib codec, platform streams %s', (_how, replacement) => {
  afterEach(() => {
    vi.unstubAllGlobals();
  });
  const stub = () => {
    vi.stubGlobal('DecompressionStream', replacement);
    vi.stubGlobal('CompressionStream', replacement);
  };
  it('decodes what the Node codec encodes, and the other way round, through pako', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(512, 4096, 65536).chain((size) => cluster(size)), async (data) => {
        const size = data.length;
        const fromNode = (await node.compressCluster('zlib', data))!;
        stub();
        try {
          expect(await browser.decompressCluster('zlib', fromNode, size)).toEqual(data);
          const padded = new Uint8Array(fromNode.length + 700).fill(0x5a);
          padded.set(fromNode);
          expect(await browser.decompressCluster('zlib', padded, size)).toEqual(data);
          const fromPako = (await browser.compressCluster('zlib', data))!;
          // pako is zlib itself: qemu's settings give the bytes node:zlib gives.
          expect(fromPako).toEqual(fromNode);
          expect(await node.decompressCluster('zlib', fromPako, size)).toEqual(data);
        } finally {
          vi.unstubAllGlobals();
        }
      }),
      { numRuns: 12 },
    );
  });
  it('refuses streams that decode to more, to less, or not at all', async () => {
    const data = new Uint8Array(8192).fill(7);
    const big = (await node.compressCluster('zlib', data))!;
    const small = (await node.compressCluster('zlib', data.subarray(0, 2048)))!;
    stub();
    await expect(browser.decompressCluster('zlib', big, 4096)).rejects.toThrow(/^Invalid zlib compressed cluster: it decodes to more than 4096 bytes$/);
    await expect(browser.decompressCluster('zlib', small, 4096)).rejects.toThrow(/^Invalid zlib compressed cluster: /);
    await expect(browser.decompressCluster('zlib', big.subarray(0, 5), 8192)).rejects.toThrow(/^Invalid zlib compressed cluster: /);
    await expect(browser.decompressCluster('zlib', new Uint8Array([0xff, 0xff, 0xff]), 4096)).rejects.toThrow(/^Invalid zlib compressed cluster: /);
  });
});
