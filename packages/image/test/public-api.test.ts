// The package's public API is what its index names: a change to it shows here, on purpose.
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import * as api from '../src/index.js';
import { exportsByName, unusedDependencies } from '../../../test-images/package-api.js';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

describe('@tsimg/image public API', () => {
  it('exports exactly these runtime names', () => {
    expect(Object.keys(api).sort()).toEqual([
    'DEFAULT_FORMATS',
    'LuksImage',
    'MEASURABLE_FORMATS',
    'NO_PERMISSIONS',
    'RawImage',
    'bench',
    'blockStatusAbove',
    'changeBackingFile',
    'collectImageInfo',
    'collectImageInfoList',
    'commitGranularity',
    'commitImage',
    'compareImages',
    'convert',
    'convertCopy',
    'dataFileLock',
    'findBackingImage',
    'findFormat',
    'fullBackingFilename',
    'imageFileLock',
    'locateImage',
    'locateImageFromOptions',
    'luksFormat',
    'luksHeaderIo',
    'mapImage',
    'measure',
    'openImage',
    'openingPermissions',
    'probeFormat',
    'qcow2Format',
    'rawFormat',
    'rebaseImage',
    'resizeImage',
    'resolveRelative',
    'topNodePermissions',
    ]);
  });

  it('exports by name only, and uses every dependency it declares', () => {
    expect(exportsByName(here('../src/index.ts'))).toBe(true);
    expect(unusedDependencies(here('..'))).toEqual([]);
  });
});
