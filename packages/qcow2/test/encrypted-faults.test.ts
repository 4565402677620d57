/**
 * Power loss during encrypted work: guest writes to a LUKS qcow2 image, and key slot changes
 * (add, erase) on a LUKS volume, cut after every write in turn. Whatever is left must open with
 * a passphrase that was valid before (or after) the change, check without corruption, and read
 * what the last completed flush wrote.
 */
import { describe, expect, it } from 'vitest';
import { checkImage, createQcow2, FIX_LEAKS, LuksVolume, openForCheck, Qcow2Image, type LuksIo } from '@tsimg/qcow2';
import { faultyDevice, MemoryDevice, type BlockDevice } from '@tsimg/raw';
import { keepOpen } from './memory-image.js';

const env = { iterations: { perSecond: () => 1_000_000 } };
const pw = (s: string) => (): Uint8Array => new TextEncoder().encode(s);
const MiB = 1 << 20;

async function makeImage(): Promise<MemoryDevice> {
  const file = new MemoryDevice({ pageSize: 4096 });
  await createQcow2(file, { size: BigInt(4 * MiB), encrypt: { format: 'luks', password: pw('abc')(), luks: { iterTime: 1 }, env } });
  return file;
}

async function snapshot(dev: BlockDevice): Promise<MemoryDevice> {
  const bytes = new Uint8Array(dev.size());
  await dev.read(0, bytes);
  return new MemoryDevice({ data: bytes, pageSize: 4096 });
}

const fill = (n: number, v: number) => new Uint8Array(n).fill(v);

describe('power loss on encrypted qcow2 writes', () => {
  it('leaves an image that opens with its key, checks clean of corruption and reads the flushed data', async () => {
    const base = await makeImage();
    let completed = false;
    for (let k = 1; k < 100 && !completed; k++) {
      const mem = await snapshot(base);
      const dev = faultyDevice(keepOpen(mem), { powerLossAfterWrite: k });
      let flushedFirst = false;
      try {
        const img = await Qcow2Image.open(dev, { filename: 'x', readOnly: false, password: pw('abc') });
        await img.write(1000, fill(70000, 0x11));
        await img.flush();
        flushedFirst = true;
        await img.write(2 * MiB + 512, fill(3 * 65536, 0x22));
        await img.write(100, fill(10, 0x33));
        await img.close();
      } catch {
        // the power loss surfaces as an I/O error
      }
      completed = !dev.powerLost;
      const { result } = await checkImage(await openForCheck(mem, () => {}, true, pw('abc')), FIX_LEAKS);
      expect(result.corruptions, `power loss after write ${k}`).toBe(0);
      const img = await Qcow2Image.open(mem, { filename: 'x', readOnly: true, password: pw('abc') });
      const got = new Uint8Array(70000);
      await img.read(1000, got);
      if (flushedFirst) {
        expect(got.every((b) => b === 0x11), `the flushed write after power loss at write ${k}`).toBe(true);
      }
      if (completed) {
        const tail = new Uint8Array(3 * 65536);
        await img.read(2 * MiB + 512, tail);
        expect(tail.every((b) => b === 0x22)).toBe(true);
      }
      await img.close();
    }
    expect(completed).toBe(true);
  });
});

/** A LUKS volume's header area on a (faulty) device, flushed after every write as qemu's block layer would not: the device decides. */
function deviceIo(dev: BlockDevice): LuksIo {
  return {
    read: async (o, into) => dev.read(o, into),
    write: async (o, data) => {
      await dev.write(o, data);
      await dev.flush();
    },
  };
}

async function opensWith(dev: BlockDevice, password: string): Promise<boolean> {
  try {
    (await LuksVolume.open(deviceIo(dev), pw(password)())).dispose();
    return true;
  } catch {
    return false;
  }
}

describe('power loss during key slot changes', () => {
  it('never leaves a volume no key opens (add a key, then erase the old one)', async () => {
    const base = new MemoryDevice({ pageSize: 4096 });
    await LuksVolume.create({ iterTime: 1, cipherAlg: 'aes-128' }, pw('old')(), async (n) => {
      await base.resize(n);
      return deviceIo(base);
    }, env);
    for (const step of ['add', 'erase'] as const) {
      let completed = false;
      const start = await snapshot(base);
      if (step === 'erase') {
        const v = await LuksVolume.open(deviceIo(start), pw('old')(), env);
        await v.amend({ state: 'active', newSecret: pw('new'), secret: pw('old'), iterTime: 1 });
      }
      // Erasing writes the header, then overwrites the key material 40 times: the cuts around
      // the header and at a few of the overwrites cover every state the volume passes through.
      const cuts = step === 'add' ? Array.from({ length: 10 }, (_, i) => i + 1) : [1, 2, 3, 10, 40, 41, 42, 43, 60];
      for (const k of cuts) {
        if (completed) break;
        const mem = await snapshot(start);
        const dev = faultyDevice(mem, { powerLossAfterWrite: k });
        try {
          const v = await LuksVolume.open(deviceIo(dev), pw('old')(), env);
          if (step === 'add') await v.amend({ state: 'active', newSecret: pw('new'), secret: pw('old'), iterTime: 1 });
          else await v.amend({ state: 'inactive', oldSecret: pw('old'), secret: pw('old') });
        } catch {
          // power loss
        }
        completed = !dev.powerLost;
        const old = await opensWith(mem, 'old');
        const fresh = await opensWith(mem, 'new');
        expect(old || fresh, `${step}: power loss after write ${k}`).toBe(true);
        if (step === 'add') expect(old, `add: the old key still opens after write ${k}`).toBe(true);
        if (completed) expect({ old, fresh }).toEqual(step === 'add' ? { old: true, fresh: true } : { old: false, fresh: true });
      }
      expect(completed).toBe(true);
    }
  });
});
