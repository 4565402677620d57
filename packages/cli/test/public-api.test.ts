// The CLI package's library surface is main(); it declares only dependencies it imports.
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import * as api from '../src/index.js';
import { exportsByName, unusedDependencies } from '../../../test-images/package-api.js';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

describe('@tsimg/cli public API', () => {
  it('exports main only, by name, and uses every dependency it declares', () => {
    expect(Object.keys(api).sort()).toEqual(['main']);
    expect(exportsByName(here('../src/index.ts'))).toBe(true);
    expect(unusedDependencies(here('..'))).toEqual([]);
  });
});
