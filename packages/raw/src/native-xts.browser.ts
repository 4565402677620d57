/** The browser has no native module: ciphers run on the page's thread (see native-xts.ts). */
import type { NativeXts } from './native-xts.js';

export type { NativeXts };

/** Always undefined in the browser. */
export function nativeXts(): NativeXts | undefined {
  return undefined;
}
