#!/usr/bin/env node
// `npm run web`: serves the page (web/, built by web/build.mjs) and, under /images/, the
// committed fixture images, on http://127.0.0.1:PORT (PORT: first argument, default 8080).
// The server answers byte ranges, so the page can open /images/... by URL as well as by file.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startHttpServer } from '../test-images/http-server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const server = await startHttpServer(here, Number(process.argv[2] ?? 8080), { mounts: { '/images/': join(here, '..', 'test-images', 'fixtures') } });
console.log(`tsimg page: ${server.url}/  (fixture images under ${server.url}/images/)`);
