/**
 * The LUKS crypto core: header codec round trips, AF split/merge, the sector cipher's modes
 * against node:crypto's own per-sector chains, create/open/amend on memory, and raw LUKS files
 * exchanged with qemu-img/qemu-io in both directions.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { afMerge, afSplit } from '../src/crypto/afsplit.js';
import { type CipherAlg, type CipherMode, type HashAlg, type IvgenAlg, nodeCipherBackend, SectorCipher } from '../src/crypto/cipher.js';
import { decodeLuksHeader, encodeLuksHeader, LUKS_HEADER_SIZE, type LuksHeader } from '../src/crypto/luks-header.js';
import { type LuksIo, LuksVolume } from '../src/crypto/luks.js';
import { calibration, scaleIterations } from '../src/crypto/pbkdf.js';
import { nativeXts } from '@tsimg/raw';
import { describeQemu, qemuImg, run } from '../../../test-images/qemu.js';

const fast = { iterations: { perSecond: () => 1000 * 1000 } };
const pw = (s: string): Uint8Array => new TextEncoder().encode(s);

function memoryIo(): LuksIo & { bytes: Uint8Array } {
  const io = {
    bytes: new Uint8Array(0),
    async read(offset: number, into: Uint8Array) {
      into.set(io.bytes.subarray(offset, offset + into.length));
    },
    async write(offset: number, data: Uint8Array) {
      io.bytes.set(data, offset);
    },
  };
  return io;
}

describe('LUKS header codec', () => {
  it('decode(encode(h)) is h', () => {
    const bytes = (n: number) => fc.uint8Array({ minLength: n, maxLength: n });
    const name = fc.stringMatching(/^[a-z0-9:-]{0,31}$/).map((s) => Uint8Array.from([...s].map((c) => c.charCodeAt(0)).concat(new Array(32 - s.length).fill(0))));
    const u32 = fc.nat({ max: 0xffffffff });
    const slot = fc.record({ active: u32, iterations: u32, salt: bytes(32), keyOffsetSector: u32, stripes: u32 });
    const header = fc.record({
      magic: bytes(6), version: fc.nat({ max: 0xffff }), cipherName: name, cipherMode: name, hashSpec: name, payloadOffsetSector: u32,
      masterKeyLen: u32, masterKeyDigest: bytes(20), masterKeySalt: bytes(32), masterKeyIterations: u32, uuid: bytes(40),
      keySlots: fc.array(slot, { minLength: 8, maxLength: 8 }),
    });
    fc.assert(
      fc.property(header, (h: LuksHeader) => {
        const b = new Uint8Array(LUKS_HEADER_SIZE);
        encodeLuksHeader(h, b);
        expect(decodeLuksHeader(b)).toEqual(h);
      }),
    );
  });
});

describe('anti-forensic split', () => {
  it('merge(split(key)) is the key, for every hash', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 64 }), fc.constantFrom<HashAlg>('sha1', 'sha256', 'sha512', 'md5'), fc.integer({ min: 1, max: 40 }), (key, hash, stripes) => {
        const split = afSplit(nodeCipherBackend, hash, key, stripes);
        expect(split.length).toBe(key.length * stripes);
        expect(afMerge(nodeCipherBackend, hash, split, key.length, stripes)).toEqual(key);
      }),
      { numRuns: 30 },
    );
  });
});

/** One sector through node:crypto's own mode with the IV qemu's ivgen gives (plain64 here). */
function reference(alg: string, mode: string, key: Uint8Array, sector: number, data: Uint8Array, encrypt: boolean): Uint8Array {
  const iv = Buffer.alloc(16);
  iv.writeBigUInt64LE(BigInt(sector));
  const c = encrypt ? createCipheriv(`${alg}-${mode}`, key, mode === 'ecb' ? null : iv) : createDecipheriv(`${alg}-${mode}`, key, mode === 'ecb' ? null : iv);
  c.setAutoPadding(false);
  return new Uint8Array(Buffer.concat([c.update(data), c.final()]));
}

describe('sector cipher', () => {
  const cases: [CipherAlg, CipherMode, number][] = [
    ['aes-128', 'xts', 32], ['aes-256', 'xts', 64], ['aes-128', 'cbc', 16], ['aes-192', 'cbc', 24], ['aes-256', 'cbc', 32],
    ['aes-256', 'ecb', 32], ['aes-128', 'ctr', 16],
  ];
  for (const [alg, mode, keyLen] of cases) {
    it(`${alg}-${mode}-plain64 matches node:crypto sector by sector, both ways`, () => {
      fc.assert(
        fc.property(fc.integer({ min: 0, max: 2 ** 40 }), fc.integer({ min: 1, max: 5 }), (start, count) => {
          const key = randomBytes(keyLen);
          const plain = new Uint8Array(randomBytes(count * 512));
          const c = new SectorCipher({ alg, mode, ivgen: 'plain64' }, key);
          const enc = c.encrypted(start, plain);
          const inPlace = Uint8Array.from(plain);
          c.encrypt(start, inPlace);
          expect(inPlace).toEqual(enc);
          for (let i = 0; i < count; i++) {
            const want = reference(alg, mode, key, start + i, plain.subarray(i * 512, (i + 1) * 512), true);
            expect(enc.subarray(i * 512, (i + 1) * 512)).toEqual(want);
          }
          c.decrypt(start, enc);
          expect(enc).toEqual(plain);
        }),
        { numRuns: 10 },
      );
    });
  }
  // crypt() runs AES-XTS with plain/plain64 IVs on the native module's thread pool when it is
  // loaded (CI builds it) and 64 KiB or more are asked; the JavaScript path must agree with it.
  for (const [alg, keyLen, ivgen] of [['aes-256', 64, 'plain64'], ['aes-128', 32, 'plain'], ['aes-256', 64, 'essiv']] as const) {
    it(`${alg}-xts-${ivgen}: crypt() on the thread pool equals encrypt()/decrypt() here`, async () => {
      const native = nativeXts();
      if (native === undefined && process.env.CI) throw new Error('the native module (tsimg_xts) is not loaded');
      await fc.assert(
        fc.asyncProperty(fc.integer({ min: 0, max: 2 ** 40 }), fc.integer({ min: 128, max: 300 }), async (start, count) => {
          const key = randomBytes(keyLen);
          const plain = new Uint8Array(randomBytes(count * 512));
          const c = new SectorCipher({ alg, mode: 'xts', ivgen, ivgenHash: ivgen === 'essiv' ? 'sha256' : undefined }, key);
          const here = Uint8Array.from(plain);
          c.encrypt(start, here);
          const pooled = Uint8Array.from(plain);
          await c.crypt(start, pooled, true);
          // Buffer.equals: toEqual walks a 150 KiB array element by element (seconds a run).
          expect(Buffer.from(pooled.buffer).equals(here)).toBe(true);
          expect(Buffer.from((await c.encryptedAsync(start, plain)).buffer).equals(here)).toBe(true);
          await c.crypt(start, pooled, false);
          expect(Buffer.from(pooled.buffer).equals(plain)).toBe(true);
          c.dispose();
        }),
        { numRuns: 8 },
      );
    });
  }
  it('aes-192-xts (built on ECB: node has no aes-192-xts) round trips', () => {
    const c = new SectorCipher({ alg: 'aes-192', mode: 'xts', ivgen: 'plain64' }, randomBytes(48));
    const plain = new Uint8Array(randomBytes(2048));
    const b = Uint8Array.from(plain);
    c.encrypt(7, b);
    expect(b).not.toEqual(plain);
    c.decrypt(7, b);
    expect(b).toEqual(plain);
  });
  it('refuses what the backend lacks in qemu\'s words', () => {
    expect(() => new SectorCipher({ alg: 'twofish-256', mode: 'xts', ivgen: 'plain64' }, randomBytes(64))).toThrow('Unsupported cipher algorithm twofish-256');
  });
});

describe('pbkdf iteration scaling', () => {
  it('follows qemu: per second × iter-time / 1000, /8 for the digest, at least 1000', () => {
    expect(scaleIterations(1_000_000, 2000, 8, 1000)).toBe(250_000);
    expect(scaleIterations(1_000_000, 10, 1, 1000)).toBe(10_000);
    expect(scaleIterations(1_000_000, 1, 8, 1000)).toBe(1000);
    expect(() => scaleIterations(2 ** 40, 2000, 1, 1000)).toThrow('larger than 4294967295');
  });
  it('calibrates each hash once, for one output block, and scales by the blocks of each output', () => {
    const rate = calibration();
    const key = new Uint8Array(32).fill(1);
    const salt = new Uint8Array(32).fill(2);
    const oneBlock = rate('sha256', key, salt, 32);
    expect(oneBlock).toBeGreaterThan(1000);
    // A second measurement would not give these exact numbers.
    expect(rate('sha256', key, salt, 20)).toBe(oneBlock);
    expect(rate('sha256', key, salt, 64)).toBe(Math.floor(oneBlock / 2));
    expect(rate('sha256', key, salt, 65)).toBe(Math.floor(oneBlock / 3));
    // sha1's block is 20 bytes: a 64-byte key is four chains.
    const sha1 = rate('sha1', key, salt, 20);
    expect(rate('sha1', key, salt, 64)).toBe(Math.floor(sha1 / 4));
  });
});

describe('LUKS volume', () => {
  async function make(password = 'abc') {
    const io = memoryIo();
    const v = await LuksVolume.create({ iterTime: 1 }, pw(password), async (n) => {
      io.bytes = new Uint8Array(n);
      return io;
    }, fast);
    return { io, v };
  }
  it("opens with the right passphrase and says qemu's words for a wrong one", async () => {
    const { io, v } = await make();
    expect(v.payloadOffset).toBe(2068480);
    const data = new Uint8Array(randomBytes(1024));
    const enc = Uint8Array.from(data);
    v.cipher!.encrypt(5, enc);
    const w = await LuksVolume.open(io, pw('abc'));
    w.cipher!.decrypt(5, enc);
    expect(enc).toEqual(data);
    await expect(LuksVolume.open(io, pw('abd'))).rejects.toThrow('Invalid password, cannot unlock any keyslot');
    expect(v.info().slots.map((s) => s.active)).toEqual([true, false, false, false, false, false, false, false]);
  });
  it('amend adds and erases key slots with qemu\'s refusals', async () => {
    const { io, v } = await make();
    await v.amend({ state: 'active', newSecret: () => pw('second'), secret: () => pw('abc'), iterTime: 1 });
    expect(v.info().slots[1]!.active).toBe(true);
    await LuksVolume.open(io, pw('second'));
    await expect(v.amend({ state: 'active', keyslot: 1, newSecret: () => pw('x'), secret: () => pw('abc') })).rejects.toThrow(
      'Refusing to overwrite active keyslot 1 - please erase it first',
    );
    await v.amend({ state: 'inactive', oldSecret: () => pw('abc'), secret: () => pw('abc') });
    await expect(LuksVolume.open(io, pw('abc'))).rejects.toThrow('Invalid password');
    await expect(v.amend({ state: 'inactive', keyslot: 1, secret: () => pw('abc') })).rejects.toThrow(
      'Attempt to erase the only active keyslot 1 which will erase all the data in the image irreversibly - refusing operation',
    );
    await expect(v.amend({ state: 'inactive', secret: () => pw('abc') })).rejects.toThrow('To erase keyslot(s), either explicit keyslot index');
  });
  it('refuses damaged headers in one line, before any PBKDF2 work', async () => {
    const { io } = await make();
    const damage = async (at: number, bytes: number[], msg: string) => {
      const copy = { ...io, bytes: Uint8Array.from(io.bytes) };
      copy.bytes.set(bytes, at);
      copy.read = async (o, into) => into.set(copy.bytes.subarray(o, o + into.length));
      await expect(LuksVolume.open(copy, pw('abc'))).rejects.toThrow(msg);
    };
    await damage(0, [0], 'Volume is not in LUKS format');
    await damage(6, [0, 2], 'LUKS version 2 is not supported');
    await damage(208 + 44, [0, 0, 0, 1], 'Keyslot 0 is corrupted (stripes 1 != 4000)');
    await damage(208 + 48 + 40, [0, 1, 0, 0], 'Keyslot 1 is overlapping with the encrypted payload');
    await damage(208 + 48 + 40, [0, 0, 0, 8], 'Keyslots 0 and 1 are overlapping in the header');
    await damage(104, [0, 0, 0, 1], 'LUKS payload is overlapping with the header');
    await damage(8, new Array(32).fill(0x41), 'LUKS header cipher name is not NUL terminated');
    await damage(40, [...'cbc'].map((c) => c.charCodeAt(0)).concat([0]), "Unexpected cipher mode string format 'cbc'");
    await damage(72, [...'whirl'].map((c) => c.charCodeAt(0)).concat([0]), "Hash algorithm 'whirl' not supported");
  });
  it('refuses absurd iteration counts before spending them', async () => {
    const { io } = await make();
    const copy = { ...io, bytes: Uint8Array.from(io.bytes) };
    copy.read = async (o, into) => into.set(copy.bytes.subarray(o, o + into.length));
    copy.bytes.set([0xff, 0xff, 0xff, 0xff], 208 + 4);
    await expect(LuksVolume.open(copy, pw('abc'))).rejects.toThrow('Keyslot 0 iteration count 4294967295 exceeds the limit of 100000000');
    copy.bytes.set([0, 0, 0x10, 0], 208 + 4);
    copy.bytes.set([0xff, 0xff, 0xff, 0xff], 164);
    await expect(LuksVolume.open(copy, pw('abc'))).rejects.toThrow('LUKS key iteration count 4294967295 exceeds the limit of 100000000');
  });
});

const dir = mkdtempSync(join(tmpdir(), 'tsimg-luks-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A raw LUKS file made by the crypto core: header area, then `data` encrypted at guest sectors. */
async function writeRawLuks(path: string, password: string, options: Parameters<typeof LuksVolume.create>[0], data: Uint8Array): Promise<void> {
  const fd = openSync(path, 'w+');
  try {
    const io: LuksIo = {
      async read(offset, into) {
        readSync(fd, into, 0, into.length, offset);
      },
      async write(offset, bytes) {
        writeSync(fd, bytes, 0, bytes.length, offset);
      },
    };
    const v = await LuksVolume.create({ ...options, iterTime: 1 }, pw(password), async (n) => {
      writeSync(fd, new Uint8Array(n), 0, n, 0);
      return io;
    }, fast);
    const enc = Uint8Array.from(data);
    v.cipher!.encrypt(0, enc);
    writeSync(fd, enc, 0, enc.length, v.payloadOffset);
    v.dispose();
  } finally {
    closeSync(fd);
  }
}

describeQemu('raw LUKS volumes with qemu', () => {
  const combos: { cipherAlg: CipherAlg; cipherMode: CipherMode; ivgenAlg: IvgenAlg; ivgenHashAlg?: HashAlg; hashAlg: HashAlg }[] = [
    { cipherAlg: 'aes-256', cipherMode: 'xts', ivgenAlg: 'plain64', hashAlg: 'sha256' },
    { cipherAlg: 'aes-128', cipherMode: 'xts', ivgenAlg: 'essiv', ivgenHashAlg: 'sha256', hashAlg: 'sha1' },
    { cipherAlg: 'aes-192', cipherMode: 'xts', ivgenAlg: 'plain', hashAlg: 'sha512' },
    { cipherAlg: 'aes-256', cipherMode: 'cbc', ivgenAlg: 'essiv', ivgenHashAlg: 'sha256', hashAlg: 'sha256' },
    { cipherAlg: 'aes-128', cipherMode: 'cbc', ivgenAlg: 'plain64', hashAlg: 'sha224' },
    { cipherAlg: 'aes-256', cipherMode: 'ecb', ivgenAlg: 'plain64', hashAlg: 'sha384' },
    { cipherAlg: 'aes-128', cipherMode: 'ctr', ivgenAlg: 'plain64', hashAlg: 'ripemd160' },
  ];
  for (const c of combos) {
    const label = `${c.cipherAlg}-${c.cipherMode}-${c.ivgenAlg}${c.ivgenHashAlg ? ':' + c.ivgenHashAlg : ''} ${c.hashAlg}`;
    it(`${label}: qemu-io reads what tsimg wrote`, async () => {
      const path = join(dir, `t-${label.replace(/[^a-z0-9]/g, '_')}.luks`);
      const data = new Uint8Array(64 * 1024);
      data.fill(0x5a, 0, 4096);
      data.fill(0xa5, 4096);
      await writeRawLuks(path, 'sesame', c, data);
      const io = (secret: string, cmd: string) =>
        run('qemu-io', ['--object', `secret,id=sec0,data=${secret}`, '--image-opts', `driver=luks,key-secret=sec0,file.filename=${path}`, '-c', cmd]);
      const r = io('sesame', 'read -P 0x5a 0 4k');
      expect(r.stderr + r.stdout).toContain('read 4096/4096 bytes');
      expect(r.stdout).not.toContain('Pattern verification failed');
      expect(io('sesame', 'read -P 0xa5 4k 60k').stdout).not.toContain('Pattern verification failed');
      expect(io('wrong', 'read 0 512').stderr).toContain('Invalid password, cannot unlock any keyslot');
    });
  }
  const qemuMade: [string, string][] = [
    ['cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv', 'sha256'],
    ['cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha1', 'sha256'],
    ['cipher-alg=aes-192,cipher-mode=xts,ivgen-alg=plain,hash-alg=sha512', ''],
    ['cipher-alg=aes-128,cipher-mode=ecb', ''],
    ['cipher-alg=aes-256,cipher-mode=ctr,ivgen-alg=plain64,hash-alg=ripemd160', ''],
  ];
  for (const [opts, ivHash] of qemuMade) {
    it(`tsimg decrypts what qemu-img and qemu-io wrote (${opts})`, async () => {
      const path = join(dir, `q-${opts.replace(/[^a-z0-9]/g, '_')}.luks`);
      const obj = ['--object', 'secret,id=sec0,data=sesame'];
      // qemuImg retries this qemu's PBKDF2 calibration failure.
      const c = qemuImg(['create', '-f', 'luks', ...obj, '-o', `key-secret=sec0,iter-time=10,${opts}`, path, '1M']);
      expect(c.status, c.stderr).toBe(0);
      const w = run('qemu-io', [...obj, '--image-opts', `driver=luks,key-secret=sec0,file.filename=${path}`, '-c', 'write -P 0x33 4096 8192']);
      expect(w.status).toBe(0);
      const fd = openSync(path, 'r');
      try {
        const io: LuksIo = { read: async (o, into) => void readSync(fd, into, 0, into.length, o), write: async () => undefined };
        const v = await LuksVolume.open(io, pw('sesame'));
        expect(v.info()['ivgen-hash-alg']).toBe(ivHash || undefined);
        const buf = new Uint8Array(8192);
        readSync(fd, buf, 0, buf.length, v.payloadOffset + 4096);
        v.cipher!.decrypt(8, buf);
        expect(buf.every((b) => b === 0x33)).toBe(true);
        await expect(LuksVolume.open(io, pw('nope'))).rejects.toThrow('Invalid password, cannot unlock any keyslot');
      } finally {
        closeSync(fd);
      }
    });
  }
});
