// BlobDevice over a Blob (Node's, the same class a browser's File extends).
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BlobDevice, ReadOnlyError } from '../src/index.js';

describe('BlobDevice', () => {
  const bytes = randomBytes(100_001);
  it('reads any range as the Blob holds it, zeroes past the end', async () => {
    const dev = new BlobDevice(new Blob([bytes]));
    expect(dev.size()).toBe(bytes.length);
    await fc.assert(
      fc.asyncProperty(fc.nat(bytes.length + 2000), fc.nat(20_000), async (offset, length) => {
        const got = new Uint8Array(length).fill(0xee);
        await dev.read(offset, got);
        const want = Buffer.alloc(length);
        bytes.copy(want, 0, Math.min(offset, bytes.length), Math.min(offset + length, bytes.length));
        expect(Buffer.from(got).equals(want)).toBe(true);
      }),
    );
    await dev.close();
  });
  it('is read-only, all data in whole sectors, with no allocated size', async () => {
    const dev = new BlobDevice(new Blob([bytes]));
    await expect(dev.write(0, new Uint8Array(1))).rejects.toBeInstanceOf(ReadOnlyError);
    expect(await dev.blockStatus(0, 1 << 20)).toEqual({ kind: 'data', offset: 0, length: 100_352, hostOffset: 0 });
    expect(await dev.blockStatus(100_352, 10)).toEqual({ kind: 'zero', offset: 100_352, length: 10 });
    expect(await dev.allocatedSize()).toBeUndefined();
  });
});
