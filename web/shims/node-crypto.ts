/**
 * node:crypto in the browser build: encrypted images (LUKS, legacy AES) need a cipher backend
 * the browser build does not have yet (WebCrypto has no XTS or ECB), so every call refuses with
 * one clear error, at the moment an encrypted image is opened or made — never at load time.
 */
import { UnsupportedError } from '../../packages/raw/src/errors.js';

const unavailable = (): never => {
  throw new UnsupportedError('Encrypted images are not supported in the browser build of tsimg');
};
export const createCipheriv = unavailable;
export const createDecipheriv = unavailable;
export const createHash = unavailable;
export const getCiphers = (): string[] => [];
export const pbkdf2Sync = unavailable;
export const randomFillSync = unavailable;
export const randomUUID = unavailable;
export type Cipher = never;
export type Decipher = never;
