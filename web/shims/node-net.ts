/** node:net in the browser build: a page cannot open TCP or Unix sockets, so NBD images refuse. */
import { UnsupportedError } from '../../packages/raw/src/errors.js';

export const connect = (): never => {
  throw new UnsupportedError('NBD images are not supported in the browser build of tsimg (no sockets)');
};
export type Socket = never;
