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
    'FILE_OPTS',
    'LuksImage',
    'MEASURABLE_FORMATS',
    'NO_PERMISSIONS',
    'NbdClient',
    'NbdServer',
    'QCOW2_OPTS',
    'QEMU_CREATABLE',
    'QEMU_FORMATS',
    'QemuOpts',
    'RawImage',
    'StreamSink',
    'bench',
    'blockStatusAbove',
    'changeBackingFile',
    'checksumImage',
    'collectImageInfo',
    'collectImageInfoList',
    'commitGranularity',
    'commitImage',
    'compareImages',
    'convert',
    'convertCopy',
    'convertToStream',
    'createImage',
    'createOnNbd',
    'dataFileLock',
    'findBackingImage',
    'findCreatableFormat',
    'findFormat',
    'fullBackingFilename',
    'guestChunks',
    'hasHelpOption',
    'imageBitmapContext',
    'imageFileLock',
    'imageReadable',
    'imageReadableStream',
    'imageWritable',
    'isValidOptionList',
    'locateImage',
    'locateImageFromOptions',
    'luksFormat',
    'luksHeaderIo',
    'mapImage',
    'measure',
    'mergeOptDescs',
    'nbdLocation',
    'openForCheckAs',
    'openHostFile',
    'openImage',
    'openTemporaryOverlay',
    'openingPermissions',
    'optionHelpLines',
    'parseOptValue',
    'probeFormat',
    'protocolPath',
    'qcow2CreateOptionsOf',
    'qcow2Format',
    'rawFormat',
    'rebaseImage',
    'resizeImage',
    'resolveRelative',
    'setHostFilePermissions',
    'splitOptionList',
    'strtosz',
    'strtou64Auto',
    'targetHostFile',
    'tooLarge',
    'topNodePermissions',
    'uncreatableFormatMessage',
    ]);
  });

  it('exports by name only, and uses every dependency it declares', () => {
    expect(exportsByName(here('../src/index.ts'))).toBe(true);
    expect(unusedDependencies(here('..'))).toEqual([]);
  });
});
