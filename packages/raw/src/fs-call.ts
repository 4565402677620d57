/** node:fs's callback calls as Promises: cheaper than fs/promises on the hot I/O path. */
import fs from 'node:fs';

export type Callback<T> = (err: NodeJS.ErrnoException | null, value: T) => void;

/** Runs a node:fs callback-style call as a Promise (faster than fs/promises, see file-device.ts). */
export function call<T = void>(start: (cb: Callback<T>) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => start((err, value) => (err ? reject(err) : resolve(value))));
}

/**
 * pwritev of every byte of `parts` from `position`, going on after short writes from the first
 * byte not written; a failure is thrown as `wrap` makes it, with the position it happened at.
 */
export async function writevFully(
  fd: number,
  parts: readonly Uint8Array[],
  position: number,
  wrap: (err: unknown, position: number) => Error,
): Promise<void> {
  let rest = parts.filter((p) => p.length > 0);
  for (let done = 0; rest.length > 0; ) {
    let n: number;
    try {
      n = await call<number>((cb) => fs.writev(fd, rest, position + done, cb));
    } catch (err) {
      throw wrap(err, position + done);
    }
    done += n;
    while (rest.length > 0 && n >= rest[0]!.length) n -= rest.shift()!.length;
    if (n > 0) rest[0] = rest[0]!.subarray(n);
  }
}
