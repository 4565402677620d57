// The package's public API is what its index names: a change to it shows here, on purpose.
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import * as api from '../src/index.js';
import { exportsByName, unusedDependencies } from '../../../test-images/package-api.js';

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

describe('@tsimg/image public API', () => {
  it('exports exactly these runtime names', () => {
    expect(Object.keys(api).sort()).toEqual([
    'BLKHASH_BLOCK_SIZE',
    'DEFAULT_FORMATS',
    'LuksImage',
    'MEASURABLE_FORMATS',
    'NO_PERMISSIONS',
    'NbdClient',
    'NbdServer',
    'RawImage',
    'StreamSink',
    'bench',
    'blockStatusAbove',
    'changeBackingFile',
    'checkHttpBaseDirectory',
    'checksumImage',
    'collectImageInfo',
    'collectImageInfoList',
    'commitGranularity',
    'commitImage',
    'compareImages',
    'convert',
    'convertCopy',
    'convertToStream',
    'createOnNbd',
    'dataFileLock',
    'findBackingImage',
    'findFormat',
    'fullBackingFilename',
    'guestChunks',
    'httpImageName',
    'imageBitmapContext',
    'imageFileLock',
    'imageReadable',
    'imageReadableStream',
    'imageWritable',
    'isQDict',
    'jsonString',
    'locateImage',
    'locateImageFromOptions',
    'luksFormat',
    'luksHeaderIo',
    'mapImage',
    'measure',
    'openHostFile',
    'openImage',
    'openTemporaryOverlay',
    'openingPermissions',
    'probeFormat',
    'qcow2Format',
    'qdictEntries',
    'qdictOrder',
    'qscalarText',
    'rawFormat',
    'rebaseImage',
    'resizeImage',
    'resolveRelative',
    'setHostFilePermissions',
    'tdbHash',
    'toQemuJsonLine',
    'topNodePermissions',
    ]);
  });

  it('exports by name only, and uses every dependency it declares', () => {
    expect(exportsByName(here('../src/index.ts'))).toBe(true);
    expect(unusedDependencies(here('..'))).toEqual([]);
  });
});
