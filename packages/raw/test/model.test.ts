// Property tests: random operation sequences on every device against a plain byte-array model.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type BlockDevice, faultyDevice, FileDevice, MemoryDevice } from '@tsimg/raw';

/** Host-file semantics: writes and writeZeroes grow, discard does not, bytes past the size are 0. */
class Model {
  bytes = new Uint8Array(0);
  size = 0;
  #ensure(n: number): void {
    if (n <= this.bytes.length) return;
    const next = new Uint8Array(Math.max(n, this.bytes.length * 2));
    next.set(this.bytes);
    this.bytes = next;
  }
  write(offset: number, data: Uint8Array): void {
    this.#ensure(offset + data.length);
    this.bytes.set(data, offset);
    this.size = Math.max(this.size, offset + data.length);
  }
  writeZeroes(offset: number, length: number): void {
    this.#ensure(offset + length);
    this.bytes.fill(0, offset, offset + length);
    this.size = Math.max(this.size, offset + length);
  }
  discard(offset: number, length: number): void {
    this.bytes.fill(0, offset, Math.min(offset + length, this.size));
  }
  resize(size: number): void {
    this.#ensure(size);
    this.bytes.fill(0, size, this.size);
    this.size = size;
  }
  read(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    out.set(this.bytes.subarray(Math.min(offset, this.size), Math.min(offset + length, this.size)));
    return out;
  }
  contents(): Uint8Array {
    return this.bytes.slice(0, this.size);
  }
}

type Op =
  | { op: 'write'; offset: number; length: number; fill: number; spike: number }
  | { op: 'writeZeroes'; offset: number; length: number; mayUnmap: boolean }
  | { op: 'discard'; offset: number; length: number }
  | { op: 'resize'; size: number }
  | { op: 'read'; offset: number; length: number }
  | { op: 'blockStatus'; offset: number; length: number }
  | { op: 'flush' };

const KiB = 1024;
const offset = fc.oneof(fc.integer({ min: 0, max: 300 * KiB }), fc.integer({ min: 0, max: 75 }).map((n) => n * 4096));
const length = fc.oneof(fc.integer({ min: 1, max: 70 * KiB }), fc.integer({ min: 1, max: 16 }).map((n) => n * 4096));
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.record({ op: fc.constant('write' as const), offset, length, fill: fc.constantFrom(0, 0, 1, 255), spike: fc.nat() }), weight: 4 },
  { arbitrary: fc.record({ op: fc.constant('writeZeroes' as const), offset, length, mayUnmap: fc.boolean() }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('discard' as const), offset, length }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('resize' as const), size: fc.integer({ min: 0, max: 400 * KiB }) }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('read' as const), offset, length }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('blockStatus' as const), offset, length: fc.integer({ min: 1, max: 500 * KiB }) }), weight: 3 },
  { arbitrary: fc.constant({ op: 'flush' as const }), weight: 1 },
);

/** Write data: all `fill`, and one non-zero byte somewhere (so zero runs end mid-granule). */
function payload(o: Extract<Op, { op: 'write' }>): Uint8Array {
  const data = new Uint8Array(o.length).fill(o.fill);
  if (o.spike % 3 !== 0) data[o.spike % o.length] = 0x5a;
  return data;
}

/** Applies `ops` to `dev` and `model`, checking reads and blockStatus as it goes. */
async function runOps(dev: BlockDevice, model: Model, ops: Op[], onFlush?: () => void): Promise<void> {
  for (const o of ops) {
    switch (o.op) {
      case 'write': {
        const data = payload(o);
        await dev.write(o.offset, data);
        model.write(o.offset, data);
        break;
      }
      case 'writeZeroes':
        await dev.writeZeroes(o.offset, o.length, { mayUnmap: o.mayUnmap });
        model.writeZeroes(o.offset, o.length);
        break;
      case 'discard':
        await dev.discard(o.offset, o.length);
        model.discard(o.offset, o.length);
        break;
      case 'resize':
        await dev.resize(o.size);
        model.resize(o.size);
        break;
      case 'read': {
        const buf = new Uint8Array(o.length).fill(0xee);
        await dev.read(o.offset, buf);
        expect(Buffer.compare(buf, model.read(o.offset, o.length))).toBe(0);
        break;
      }
      case 'blockStatus': {
        const st = await dev.blockStatus(o.offset, o.length);
        expect(st.offset).toBe(o.offset);
        expect(st.length).toBeGreaterThanOrEqual(1);
        expect(st.length).toBeLessThanOrEqual(o.length);
        if (st.kind === 'zero') {
          // Never claim zero for bytes that are not.
          expect(model.read(st.offset, st.length).every((b) => b === 0)).toBe(true);
        }
        break;
      }
      case 'flush':
        await dev.flush();
        onFlush?.();
        break;
    }
    expect(dev.size()).toBe(model.size);
  }
  const all = new Uint8Array(model.size);
  await dev.read(0, all);
  expect(Buffer.compare(all, model.contents())).toBe(0);
}

const ops = fc.array(opArb, { maxLength: 30 });

describe('device model tests', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsimg-model-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('MemoryDevice (4 KiB pages) matches the model', async () => {
    await fc.assert(
      fc.asyncProperty(ops, async (list) => {
        const dev = new MemoryDevice({ pageSize: 4096 });
        await runOps(dev, new Model(), list);
        // every held page is inside the device
        expect(await dev.allocatedSize()).toBeLessThanOrEqual(Math.ceil(dev.size() / 4096) * 4096);
      }),
      { numRuns: 200 },
    );
  });

  it('MemoryDevice (64 KiB pages) matches the model', async () => {
    await fc.assert(fc.asyncProperty(ops, (list) => runOps(new MemoryDevice(), new Model(), list)), { numRuns: 100 });
  });

  it.each(['async', 'sync'] as const)('FileDevice (io: %s) matches the model', async (io) => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(ops, async (list) => {
        const file = path.join(dir, `m-${io}-${n++}.img`);
        const dev = await FileDevice.open(file, { create: true, io });
        try {
          await runOps(dev, new Model(), list);
        } finally {
          await dev.close();
          fs.rmSync(file);
        }
      }),
      { numRuns: 100 },
    );
  });

  it('faultyDevice (write-back) reads like the model; a power loss leaves the last flush', async () => {
    await fc.assert(
      fc.asyncProperty(ops, async (list) => {
        const mem = new MemoryDevice({ pageSize: 4096 });
        const dev = faultyDevice(mem);
        const model = new Model();
        let durable: Uint8Array = new Uint8Array(0);
        await runOps(dev, model, list, () => (durable = model.contents()));
        dev.powerLoss();
        expect(Buffer.compare(mem.contents(), durable)).toBe(0);
      }),
      { numRuns: 150 },
    );
  });
});
