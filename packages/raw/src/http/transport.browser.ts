import { UnsupportedError } from '../errors.js';
/** The browser build's fetch for HttpDevice (picked over transport.ts): the platform's own. */
export function defaultFetch(sslVerify = true): { fetch: typeof fetch; close: () => void } {
  // A page cannot turn certificate checks off.
  if (!sslVerify) throw new UnsupportedError('sslverify=off is not supported in the browser build of tsimg');
  return { fetch: globalThis.fetch.bind(globalThis), close: () => undefined };
}
