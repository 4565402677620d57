import { describe, expect, it } from 'vitest';
import { compressCluster, decompressCluster } from '../src/compress.js';

describe('smoke', () => {
  it('round-trips', async () => {
    const c = new Uint8Array(65536).map((_, i) => (i * 7) % 13);
    for (const t of ['zlib', 'zstd'] as const) {
      const z = await compressCluster(t, c);
      expect(z).toBeDefined();
      const pad = new Uint8Array(z!.length + 300); pad.set(z!); pad.fill(0xa5, z!.length);
      expect(await decompressCluster(t, pad, 65536)).toEqual(c);
    }
  });
});
