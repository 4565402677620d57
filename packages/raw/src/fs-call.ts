/** node:fs's callback calls as Promises: cheaper than fs/promises on the hot I/O path. */
import type fs from 'node:fs';

export type Callback<T> = (err: NodeJS.ErrnoException | null, value: T) => void;

/** Runs a node:fs callback-style call as a Promise (faster than fs/promises, see file-device.ts). */
export function call<T = void>(start: (cb: Callback<T>) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => start((err, value) => (err ? reject(err) : resolve(value))));
}
