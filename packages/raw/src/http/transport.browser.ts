/** The browser build's fetch for HttpDevice (picked over transport.ts): the platform's own. */
export function defaultFetch(): { fetch: typeof fetch; close: () => void } {
  return { fetch: globalThis.fetch.bind(globalThis), close: () => undefined };
}
