/**
 * Small reads and writes done on the calling thread where they cannot wait for a disk: a
 * thread-pool round trip costs more than the copy itself for all but big requests. Measured
 * here (Node 20, machine load ~4): 64 KiB reads of a cached ext4 file 140–160 µs each through
 * fs.read, 8 µs through preadv2(RWF_NOWAIT) on the main thread; 64 KiB writes to tmpfs
 * 155–220 µs through fs.write.
 *
 * - On tmpfs the file's pages are its storage: pread and pwrite never wait for a disk.
 * - Elsewhere reads use preadv2 with RWF_NOWAIT (from the optional native module): it reads
 *   what is cached and returns at once for the rest, which then goes through the thread pool,
 *   so a cold cache never stalls the event loop. Writes take the pool (RWF_NOWAIT buffered
 *   writes answer EOPNOTSUPP on ext4 here).
 * - Without the native module on a disk file system: every request takes the pool.
 * Requests above 256 KiB always take the pool: there the copy dominates, and several of them
 * in flight copy on both cores where this thread would copy on one (1 GiB qcow2 → raw on tmpfs
 * in 2 MiB reads was no faster inline).
 */
import fs from 'node:fs';
import type { NativeFs } from './native.js';

const TMPFS_MAGIC = 0x01021994;
const INLINE_MAX = 256 * 1024;

/** How one open file's small requests may be served on the calling thread. */
export class InlineIo {
  #reads: 'memory' | 'nowait' | 'off';
  readonly #memory: boolean;

  constructor(
    readonly fd: number,
    readonly native: NativeFs | undefined,
    fsType: number | undefined,
  ) {
    this.#memory = fsType === TMPFS_MAGIC;
    this.#reads = this.#memory ? 'memory' : native?.preadNoWait !== undefined ? 'nowait' : 'off';
  }

  /**
   * Reads into `into` from `pos` what can be read without blocking on a disk: the byte count,
   * 0 when the caller must take the thread pool (too big, nothing cached, the file system
   * cannot tell, or an error, which the pool's read then reports). On tmpfs it reads or throws.
   */
  read(into: Uint8Array, pos: number): number {
    if (into.length > INLINE_MAX || this.#reads === 'off') return 0;
    if (this.#reads === 'memory') return fs.readSync(this.fd, into, 0, into.length, pos);
    const r = this.native!.preadNoWait!(this.fd, into, pos);
    if (typeof r === 'number') return r;
    // Not offered here (an old kernel, a file system without RWF_NOWAIT): stop asking.
    if (r.errno === 'ENOTSUP' || r.errno === 'EOPNOTSUPP' || r.errno === 'EINVAL' || r.errno === 'ENOSYS') this.#reads = 'off';
    return 0;
  }

  /** Writes `data` at `pos` on this thread if the file is in memory: the bytes written, else 0. */
  write(data: Uint8Array, pos: number): number {
    if (data.length > INLINE_MAX || !this.#memory) return 0;
    return fs.writeSync(this.fd, data, 0, data.length, pos);
  }
}
