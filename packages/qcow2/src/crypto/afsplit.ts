/**
 * The LUKS anti-forensic splitter (qemu's crypto/afsplit.c, the LUKS1 spec's AFsplit/AFmerge):
 * a key becomes `stripes` blocks, all but the last random, each folded into a running block by
 * XOR and the diffusion hash; the last is the key XOR that block. Losing any stripe loses the key.
 */
import { randomFillSync } from 'node:crypto';
import type { CipherBackend, HashAlg } from './cipher.js';
import { hashBytes } from './cipher.js';

/** qcrypto_afsplit_hash: each digest-sized piece of `block` becomes H(be32(i) || piece). */
function diffuse(backend: CipherBackend, hash: HashAlg, block: Uint8Array): void {
  const digest = hashBytes(hash);
  const count = Math.ceil(block.length / digest);
  const iv = new Uint8Array(4);
  for (let i = 0; i < count; i++) {
    const piece = block.subarray(i * digest, Math.min(block.length, (i + 1) * digest));
    new DataView(iv.buffer).setUint32(0, i);
    const out = backend.hash(hash, [iv, piece]);
    piece.set(out.subarray(0, piece.length));
    out.fill(0);
  }
}

function xor(a: Uint8Array, b: Uint8Array, out: Uint8Array): void {
  for (let i = 0; i < out.length; i++) out[i] = a[i]! ^ b[i]!;
}

/** qcrypto_afsplit_encode: `key` split into `stripes` blocks (returned; the caller zeroes it). */
export function afSplit(backend: CipherBackend, hash: HashAlg, key: Uint8Array, stripes: number, random = randomFillSync): Uint8Array {
  const n = key.length;
  const out = new Uint8Array(n * stripes);
  const block = new Uint8Array(n);
  for (let i = 0; i < stripes - 1; i++) {
    const stripe = out.subarray(i * n, (i + 1) * n);
    random(stripe);
    xor(stripe, block, block);
    diffuse(backend, hash, block);
  }
  xor(key, block, out.subarray((stripes - 1) * n));
  block.fill(0);
  return out;
}

/** qcrypto_afsplit_decode: the key of `keyLen` bytes back from its `stripes` blocks. */
export function afMerge(backend: CipherBackend, hash: HashAlg, split: Uint8Array, keyLen: number, stripes: number): Uint8Array {
  const block = new Uint8Array(keyLen);
  for (let i = 0; i < stripes - 1; i++) {
    xor(split.subarray(i * keyLen, (i + 1) * keyLen), block, block);
    diffuse(backend, hash, block);
  }
  const key = new Uint8Array(keyLen);
  xor(split.subarray((stripes - 1) * keyLen, stripes * keyLen), block, key);
  block.fill(0);
  return key;
}
