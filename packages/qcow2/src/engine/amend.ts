/**
 * `qemu-img amend` on an open qcow2 image: a port of qemu 7.2's qcow2_amend_options — the
 * options checked in the amend list's order, then upgrade, refcount width, data-file bits,
 * header, backing file check, lazy refcounts, size, and downgrade last, with one progress
 * callback spread over the operations as qcow2_amend_helper_cb spreads it.
 */
import { UnsupportedError, UsageError } from '@tsimg/raw';
import { findExtension, type HeaderExtension } from '../format/header.js';
import { AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, CRYPT_LUKS } from '../format/types.js';
import { downgrade, upgrade, withContext } from './compat.js';
import { markClean, rewriteHeaderSynced } from './header-write.js';
import { changeRefcountOrder, type StatusCallback } from './refcount-order.js';
import { resize } from './resize.js';
import { flushAll, type EngineState } from './state.js';
import { amendLuks, type EncryptionAmend } from '../crypto/luks-amend.js';

/** What `qemu-img amend -o` asks of a qcow2 image; absent fields stay as they are. */
export interface AmendOptions {
  /** `compat`: "0.10" / "v2" or "1.1" / "v3" (anything else is refused as qemu does). */
  compat?: string;
  /** `size`: the new virtual size (0: unchanged, as qemu treats it). */
  size?: number;
  backingFile?: string;
  backingFormat?: string;
  /** `encrypt.*` options (qemu's QCryptoBlockAmendOptionsLUKS, before its QAPI visit). */
  encrypt?: EncryptionAmend;
  lazyRefcounts?: boolean;
  refcountBits?: number;
  dataFile?: string;
  dataFileRaw?: boolean;
  /** --force. */
  force?: boolean;
  /** qemu's amend status callback: `offset` of `total` work done. */
  status?: StatusCallback;
}

/** qcow2_amend_helper_cb: one progress scale over several operations. */
function helperStatus(total: number, status: StatusCallback): { cb: StatusCallback; next: () => void } {
  let current = 0;
  let last = 0;
  let completed = 0;
  let offsetCompleted = 0;
  let lastWork = 0;
  return {
    next: () => {
      current++;
    },
    cb: (offset, work) => {
      if (current !== last) {
        if (last !== 0) {
          offsetCompleted += lastWork;
          completed++;
        }
        last = current;
      }
      lastWork = work;
      const currentWork = offsetCompleted + work;
      const projected = Math.trunc((currentWork * (total - completed - 1)) / (completed + 1));
      status(offsetCompleted + offset, currentWork + projected);
    },
  };
}

/** The version `compat` asks for. */
function parseCompat(compat: string, current: number): number {
  if (compat === '0.10' || compat === 'v2') return 2;
  if (compat === '1.1' || compat === 'v3') return 3;
  throw new UsageError(`Unknown compatibility level ${compat}`, { errno: 'EINVAL' });
}

/** The option checks of qcow2_amend_options' first loop, in the amend list's order. */
function checkOptions(s: EngineState, o: AmendOptions): void {
  if (o.encrypt) {
    if (s.header.cryptMethod === 0) throw new UsageError("Can't amend encryption options - encryption not present", { errno: 'EINVAL' });
    if (s.header.cryptMethod !== CRYPT_LUKS) throw new UnsupportedError('Only LUKS encryption options can be amended', { errno: 'ENOTSUP' });
  }
  if (o.refcountBits !== undefined) {
    const b = o.refcountBits;
    if (b <= 0 || b > 64 || (b & (b - 1)) !== 0) {
      throw new UsageError('Refcount width must be a power of two and may not exceed 64 bits', { errno: 'EINVAL' });
    }
  }
  if (o.dataFile !== undefined && !s.geo.dataFile) {
    throw new UsageError('data-file can only be set for images that use an external data file', { errno: 'EINVAL' });
  }
  if (o.dataFileRaw === true && !s.dataRaw) throw new UsageError('data-file-raw cannot be set on existing images', { errno: 'EINVAL' });
}

/**
 * qemu-img amend's work on an open image: qcow2_amend_options. The persistent bitmaps are the
 * open image's held ones (held-bitmaps.ts): marked in use by the read/write open and stored
 * again by the close — also after a failed amend — as qemu's open and close do.
 */
export async function amend(s: EngineState, o: AmendOptions): Promise<void> {
  await amendOptions(s, o);
}

/** qcow2_amend_options. */
async function amendOptions(s: EngineState, o: AmendOptions): Promise<void> {
  const oldVersion = s.version;
  const newVersion = o.compat === undefined ? oldVersion : parseCompat(o.compat, oldVersion);
  checkOptions(s, o);
  const refcountBits = o.refcountBits ?? 2 ** s.header.refcountOrder;
  const lazy = o.lazyRefcounts ?? s.lazy;
  const dataRaw = o.dataFileRaw ?? s.dataRaw;
  const oldBits = 2 ** s.header.refcountOrder;
  const helper = helperStatus(Number(newVersion !== oldVersion) + Number(oldBits !== refcountBits), o.status ?? (() => undefined));

  if (newVersion > oldVersion) {
    helper.next();
    await upgrade(s, helper.cb);
  }
  if (o.encrypt !== undefined) await amendLuks(s.crypto?.volume, o.encrypt, o.force === true);
  if (oldBits !== refcountBits) {
    if (newVersion < 3 && refcountBits !== 16) {
      throw new UsageError(
        'Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)',
        { errno: 'EINVAL' },
      );
    }
    helper.next();
    await changeRefcountOrder(s, Math.log2(refcountBits), helper.cb);
  }
  const h = s.header;
  h.autoclearFeatures = dataRaw ? h.autoclearFeatures | AUTOCLEAR_DATA_FILE_RAW : h.autoclearFeatures & ~AUTOCLEAR_DATA_FILE_RAW;
  if (o.dataFile !== undefined) {
    const rest: HeaderExtension[] = s.extensions.filter((e) => e.kind !== 'data-file');
    if (o.dataFile !== '') rest.push({ kind: 'data-file', name: o.dataFile });
    s.extensions.splice(0, s.extensions.length, ...rest);
  }
  await headerStep(s, 'Failed to update the image header');

  if (o.backingFile !== undefined || o.backingFormat !== undefined) {
    const format = findExtension(s.extensions, 'backing-format')?.name;
    if (o.backingFile !== s.backingFile || o.backingFormat !== format) {
      throw new UsageError("Cannot amend the backing file\nYou can use 'tsimg rebase' instead.", { errno: 'EINVAL' });
    }
  }

  if (s.lazy !== lazy) await setLazyRefcounts(s, lazy, newVersion);
  if (o.size !== undefined && o.size !== 0) await resize(s, o.size);
  if (newVersion < oldVersion) {
    helper.next();
    await downgrade(s, helper.cb);
  }
}

/** The lazy_refcounts part: on needs v3; off makes the image clean first. */
async function setLazyRefcounts(s: EngineState, lazy: boolean, version: number): Promise<void> {
  const h = s.header;
  if (lazy) {
    if (version < 3) {
      throw new UsageError(
        'Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)',
        { errno: 'EINVAL' },
      );
    }
    h.compatibleFeatures |= COMPAT_LAZY_REFCOUNTS;
    await headerStep(s, 'Failed to update the image header', () => (h.compatibleFeatures &= ~COMPAT_LAZY_REFCOUNTS));
    s.lazy = true;
    return;
  }
  try {
    // qcow2_mark_clean: every refcount held back by lazy refcounts is written first.
    await flushAll(s);
    await markClean(s);
  } catch (err) {
    throw withContext(err, 'Failed to make the image clean');
  }
  h.compatibleFeatures &= ~COMPAT_LAZY_REFCOUNTS;
  await headerStep(s, 'Failed to update the image header', () => (h.compatibleFeatures |= COMPAT_LAZY_REFCOUNTS));
  s.lazy = false;
}

/** qcow2_update_header with qemu's message on failure (and the caller's undo). */
async function headerStep(s: EngineState, context: string, undo?: () => void): Promise<void> {
  try {
    await rewriteHeaderSynced(s);
  } catch (err) {
    undo?.();
    throw withContext(err, context);
  }
}
