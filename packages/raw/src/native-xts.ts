/**
 * The native module's AES-XTS on the thread pool (native/tsimg_xts.c), for the qcow2 and LUKS
 * ciphers: undefined when the module is missing, disabled (TSIMG_NATIVE=off) or built without
 * OpenSSL headers, and in the browser (native-xts.browser.ts) — callers then cipher on their
 * own thread.
 */
import { loadNative } from './native.js';

/** AES-XTS in place over whole 512-byte sectors, IVs plain64 (or plain with `plain32`). */
export type NativeXts = (key: Uint8Array, data: Uint8Array, sector: number, plain32: boolean, encrypt: boolean) => Promise<void>;

/** The native AES-XTS, loaded with the native module on the first call; undefined without it. */
export function nativeXts(): NativeXts | undefined {
  return loadNative()?.xtsCrypt;
}
