// The package's public API is what its index names: a change to it shows here, on purpose.
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import * as api from '../src/index.js';
import { exportsByName, unusedDependencies } from '../../../test-images/package-api.js';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

describe('@tsimg/qcow2 public API', () => {
  it('exports exactly these runtime names', () => {
    expect(Object.keys(api).sort()).toEqual([
    'AUTOCLEAR_BITMAPS',
    'FIX_ERRORS',
    'FIX_LEAKS',
    'INCOMPAT_DATA_FILE',
    'LuksVolume',
    'QCOW2_MAGIC',
    'Qcow2Image',
    'amendLuks',
    'checkErrnoText',
    'checkImage',
    'copyPersistentBitmaps',
    'createCompressPool',
    'createQcow2',
    'encodeByteString',
    'findExtension',
    'finishRepair',
    'hasLuksFormat',
    'loadBitmapDirectory',
    'loadHeader',
    'loadQcow2Metadata',
    'loadSnapshots',
    'luksPayloadBytes',
    'measureQcow2',
    'openForCheck',
    'openQcow2Metadata',
    'planQcow2Stream',
    'qcow2ImageInfo',
    'repairDirty',
    'resolveQcow2CreateOptions',
    'secretAsUtf8',
    ]);
  });

  it('exports by name only, and uses every dependency it declares', () => {
    expect(exportsByName(here('../src/index.ts'))).toBe(true);
    expect(unusedDependencies(here('..'))).toEqual([]);
  });
});
