/**
 * Emptying an image (qcow2_make_empty) and changing its backing file name
 * (qcow2_change_backing_file) on in-memory images: both ways of emptying leave an image that
 * reads as its backing device and is clean for the check library; the backing file name and
 * format survive a reopen, or are gone for none. Byte identity with qemu is cross-checked in
 * packages/cli/test/commit.test.ts and rebase.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { MemoryDevice } from '@tsimg/raw';
import { createMemoryQcow2, createOptionsOf, expectCleanInMemory, guestBytes, openMemoryQcow2 } from './memory-image.js';

const K = 1024;
const SIZE = 1024 * K;

async function backingDevice(): Promise<MemoryDevice> {
  const dev = new MemoryDevice({ pageSize: 4096 });
  await dev.write(0, new Uint8Array(SIZE).fill(0x11));
  return dev;
}

describe('makeEmpty', () => {
  for (const list of ['cluster_size=4096', 'cluster_size=65536,extended_l2=on', 'compat=0.10,cluster_size=4096', 'cluster_size=512,refcount_bits=1']) {
    it(`leaves only the backing device to read (${list})`, async () => {
      const m = await createMemoryQcow2(createOptionsOf(list, SIZE), await backingDevice());
      const img = await openMemoryQcow2(m);
      await img.write(4 * K, new Uint8Array(8 * K).fill(2));
      await img.writeZeroes(64 * K, 64 * K);
      await img.write(900 * K, new Uint8Array(3 * K).fill(3));
      await img.flush();
      const before = m.file.size();
      await img.makeEmpty();
      await img.write(500 * K, new Uint8Array(K).fill(4)); // the emptied image still takes writes
      await img.close();
      const expected = new Uint8Array(SIZE).fill(0x11);
      expected.fill(4, 500 * K, 501 * K);
      expect(Buffer.from(await guestBytes(m)).equals(Buffer.from(expected))).toBe(true);
      expect(m.file.size()).toBeLessThanOrEqual(before);
      await expectCleanInMemory(m.file);
    });
  }
});

describe('changeBackingFile', () => {
  it('records a name and format, and removes them', async () => {
    const m = await createMemoryQcow2(createOptionsOf('cluster_size=65536', SIZE), await backingDevice());
    let img = await openMemoryQcow2(m);
    await img.changeBackingFile('some/where.qcow2', 'qcow2');
    await img.close();
    img = await openMemoryQcow2(m, true);
    expect([img.backingFile, img.backingFormat]).toEqual(['some/where.qcow2', 'qcow2']);
    await img.close();
    img = await openMemoryQcow2(m);
    await img.changeBackingFile(undefined, undefined);
    await img.close();
    img = await openMemoryQcow2(m, true);
    expect([img.backingFile, img.backingFormat]).toEqual([undefined, undefined]);
    await img.close();
    await expectCleanInMemory(m.file);
  });

  it('refuses names longer than 1023 bytes and names the header cluster cannot hold', async () => {
    const m = await createMemoryQcow2(createOptionsOf('cluster_size=512', SIZE));
    const img = await openMemoryQcow2(m);
    await expect(img.changeBackingFile('x'.repeat(1024), 'raw')).rejects.toMatchObject({ errno: 'EINVAL' });
    await expect(img.changeBackingFile('x'.repeat(450), 'raw')).rejects.toMatchObject({ errno: 'ENOSPC' });
    await img.changeBackingFile('x'.repeat(300), 'raw');
    await img.close();
    const again = await openMemoryQcow2(m, true);
    expect(again.backingFile).toBe('x'.repeat(300));
    await again.close();
  });
});
