// The package's public API is what its index names: a change to it shows here, on purpose.
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import * as api from '../src/index.js';
import { exportsByName, unusedDependencies } from '../../../test-images/package-api.js';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

describe('@tsimg/raw public API', () => {
  it('exports exactly these runtime names', () => {
    expect(Object.keys(api).sort()).toEqual([
    'BDRV_MAX_LENGTH',
    'BDRV_REQUEST_MAX_BYTES',
    'BDRV_SECTOR_SIZE',
    'BLK_PERM_ALL',
    'BLK_PERM_CONSISTENT_READ',
    'BLK_PERM_RESIZE',
    'BLK_PERM_WRITE',
    'BLK_PERM_WRITE_UNCHANGED',
    'BlobDevice',
    'CorruptError',
    'CountingDevice',
    'FaultyDevice',
    'FileDevice',
    'FormatError',
    'HttpDevice',
    'HttpError',
    'INT_MAX',
    'IoError',
    'LimitError',
    'LockError',
    'MemoryDevice',
    'NotFoundError',
    'OpfsDevice',
    'ReadOnlyError',
    'TsimgError',
    'UnsupportedError',
    'UsageError',
    'alignedBuffer',
    'allZero',
    'bytesEqual',
    'countingDevice',
    'createFile',
    'dataRunLength',
    'errorWithCode',
    'faultyDevice',
    'fillZeroes',
    'imageFilePermissions',
    'isZero',
    'lockingAvailable',
    'nativeXts',
    'preallocateZeroes',
    'readOnlyDevice',
    'strerror',
    'systemError',
    'truncateWithPreallocation',
    'writeParts',
    'zeroRunLength',
    ]);
  });

  it('exports by name only, and uses every dependency it declares', () => {
    expect(exportsByName(here('../src/index.ts'))).toBe(true);
    expect(unusedDependencies(here('..'))).toEqual([]);
  });
});
