/** The browser build's fetch for HttpDevice (picked over transport.ts): the platform's own. */
export function defaultFetch(): typeof fetch {
  return globalThis.fetch.bind(globalThis);
}
