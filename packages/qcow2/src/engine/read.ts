/**
 * The read path of an open image: guest reads through the L1/L2 mapping (data from the image
 * or its data file, zeroes, compressed clusters, the backing image where unallocated) and
 * block status, merged over runs of one kind.
 */
import { TsimgError, type BlockStatus } from '@tsimg/raw';
import { decompress, releaseReadAhead, type CompressedReadAhead } from './compressed.js';
import { lookupRun, type MappedRun } from './mapping.js';
import { dataDevice, type BackingDevice, type EngineState } from './state.js';
import { CRYPTO_SECTOR } from '../crypto/cipher.js';

/** Reads guest bytes at `offset` into `into` (the caller checked the range). */
export async function readGuest(s: EngineState, offset: number, into: Uint8Array): Promise<void> {
  const ahead: CompressedReadAhead = { start: -1, end: -1, budget: 0 };
  try {
    await readRuns(s, offset, into, ahead);
  } finally {
    releaseReadAhead(s, ahead);
  }
}

async function readRuns(s: EngineState, offset: number, into: Uint8Array, ahead: CompressedReadAhead): Promise<void> {
  let pos = 0;
  // Data runs that continue on the host (across L2 tables) are read with one device call.
  let pending: { pos: number; host: number; length: number } | undefined;
  const readPending = async (): Promise<void> => {
    if (pending === undefined) return;
    const p = pending;
    pending = undefined;
    const dev = dataDevice(s);
    const dst = into.subarray(p.pos, p.pos + p.length);
    if (s.crypto !== undefined) return readEncrypted(s, offset + p.pos, p.host, dst);
    // Past the end of the file (even past 2^53, where a device has no offset): zeroes.
    if (p.host >= dev.size()) dst.fill(0);
    else await dev.read(p.host, dst);
  };
  while (pos < into.length) {
    const run = await lookupRun(s, offset + pos, into.length - pos);
    if (run.kind === 'data') {
      if (pending !== undefined && pending.host + pending.length === run.hostOffset) pending.length += run.length;
      else {
        await readPending();
        pending = { pos, host: run.hostOffset, length: run.length };
      }
      pos += run.length;
      continue;
    }
    await readPending();
    const dst = into.subarray(pos, pos + run.length);
    switch (run.kind) {
      case 'zero':
        dst.fill(0);
        break;
      case 'unallocated':
        await readBacking(s, offset + pos, dst);
        break;
      case 'compressed': {
        ahead.budget = into.length - pos;
        const cluster = await decompress(s, run.entry, ahead);
        const start = offset + pos - run.clusterOffset;
        dst.set(cluster.subarray(start, start + run.length));
        break;
      }
    }
    pos += run.length;
  }
  await readPending();
}

/**
 * qcow2_co_preadv_encrypted: whole sectors read from the host and decrypted (IVs from host
 * sectors for LUKS, guest sectors for AES), then the bytes asked for copied out.
 */
async function readEncrypted(s: EngineState, guest: number, host: number, dst: Uint8Array): Promise<void> {
  const c = s.crypto!;
  const head = host % CRYPTO_SECTOR;
  const len = Math.ceil((head + dst.length) / CRYPTO_SECTOR) * CRYPTO_SECTOR;
  const aligned = head === 0 && len === dst.length;
  const buf = aligned ? dst : new Uint8Array(len);
  const dev = dataDevice(s);
  const start = host - head;
  const avail = Math.max(0, Math.min(len, dev.size() - start));
  if (avail > 0) await dev.read(start, buf.subarray(0, avail));
  buf.fill(0, avail);
  await c.cipher.crypt((c.physical ? start : guest - head) / CRYPTO_SECTOR, buf, false);
  if (!aligned) dst.set(buf.subarray(head, head + dst.length));
}

/** Unallocated guest bytes: the backing image's, zeroes past its end or without one. */
async function readBacking(s: EngineState, offset: number, dst: Uint8Array): Promise<void> {
  const b = s.backing;
  if (b === undefined) {
    dst.fill(0);
    return;
  }
  const avail = Math.max(0, Math.min(dst.length, b.size() - offset));
  if (avail > 0) await b.read(offset, dst.subarray(0, avail));
  if (avail < dst.length) dst.subarray(avail).fill(0);
}

/** A mapped run as block status at guest offset `at`. */
function toStatus(r: MappedRun, at: number): BlockStatus {
  switch (r.kind) {
    case 'data':
      return { kind: 'data', offset: at, length: r.length, hostOffset: r.hostOffset };
    case 'compressed':
      return { kind: 'data', offset: at, length: r.length };
    case 'zero':
      return r.hostOffset !== undefined
        ? { kind: 'zero', offset: at, length: r.length, hostOffset: r.hostOffset }
        : { kind: 'zero', offset: at, length: r.length };
    case 'unallocated': {
      const st: BlockStatus = { kind: 'unallocated', offset: at, length: r.length };
      // An unallocated subcluster of an allocated cluster keeps its host offset (qemu:
      // OFFSET_VALID for UNALLOCATED_ALLOC); map.ts prints it.
      return r.hostOffset !== undefined ? Object.assign(st, { hostOffset: r.hostOffset }) : st;
    }
  }
}

/**
 * Block status of the run at `offset`, up to `length` bytes (the caller checked the range) and
 * never past the end of its L2 table: qcow2_co_block_status answers one L2 slice per call, and
 * callers that cut their work at status boundaries (convert's chunks, and with them which
 * clusters a compressed target gets) see the same runs as qemu's. `merged` lifts that cut over
 * missing tables, for walks that merge runs anyway (map).
 */
export async function blockStatusAt(s: EngineState, offset: number, length: number, merged = false): Promise<BlockStatus> {
  const span = s.geo.l2Span;
  const tableEnd = (Math.floor(offset / span) + 1) * span;
  // lookupRun goes on over missing L2 tables; qemu's driver would stop at the first table's end.
  const st = toStatus(await lookupRun(s, offset, merged ? length : Math.min(length, tableEnd - offset)), offset);
  // qcow2_co_block_status gives no offset for encrypted images (the host bytes are ciphertext).
  if (s.crypto !== undefined && 'hostOffset' in st) delete (st as { hostOffset?: number }).hostOffset;
  return st;
}

/** Whether `[offset, offset+length)` of `image` reads as zeroes, from block status alone. */
export async function chainReadsAsZero(image: BackingDevice, offset: number, length: number): Promise<boolean> {
  const end = Math.min(offset + length, image.size());
  let pos = offset;
  while (pos < end) {
    const st = await image.blockStatus(pos, end - pos);
    if (st.kind === 'data') return false;
    if (st.kind === 'unallocated' && image.backing !== undefined) {
      if (!(await chainReadsAsZero(image.backing, pos, st.length))) return false;
    }
    pos += st.length;
  }
  return true;
}
