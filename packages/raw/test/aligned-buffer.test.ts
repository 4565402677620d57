import { describe, expect, it } from 'vitest';
import { alignedBuffer } from '../src/aligned-buffer.js';

describe('alignedBuffer', () => {
  it('gives big buffers their own page-aligned wasm memory, zero-filled and writable', () => {
    for (const n of [64 * 1024, 2 * 1024 * 1024, 2 * 1024 * 1024 + 512, 3 * 65536 - 1]) {
      const b = alignedBuffer(n);
      expect(b.length).toBe(n);
      expect(b.byteOffset).toBe(0);
      // A WebAssembly.Memory's buffer is whole 64 KiB pages: the mark that it is not malloc'ed.
      expect(b.buffer.byteLength % 65536).toBe(0);
      expect(b.buffer.byteLength).toBe(Math.ceil(n / 65536) * 65536);
      expect(b.every((x) => x === 0)).toBe(true);
      b.fill(7);
      expect(b[n - 1]).toBe(7);
      expect(Buffer.from(b.buffer, b.byteOffset, b.length).subarray(0, 4)).toEqual(Buffer.from([7, 7, 7, 7]));
    }
  });

  it('keeps small buffers ordinary', () => {
    const b = alignedBuffer(4096);
    expect(b.length).toBe(4096);
    expect(b.buffer.byteLength).toBe(4096);
    expect(alignedBuffer(0).length).toBe(0);
  });

  it('gives separate buffers for separate calls', () => {
    const a = alignedBuffer(1 << 20);
    const b = alignedBuffer(1 << 20);
    a[0] = 1;
    expect(b[0]).toBe(0);
  });
});
