import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CorruptError, errorWithCode, FormatError, IoError, LimitError, LockError, NotFoundError, ReadOnlyError, TsimgError, UnsupportedError, UsageError, type TsimgErrorCode } from '@tsimg/raw';

const CLASSES: [TsimgErrorCode, new (...args: never[]) => TsimgError][] = [
  ['format', FormatError],
  ['unsupported', UnsupportedError],
  ['io', IoError],
  ['usage', UsageError],
  ['corrupt', CorruptError],
  ['not-found', NotFoundError],
  ['read-only', ReadOnlyError],
  ['limit', LimitError],
  ['locked', LockError],
];

describe('error classes', () => {
  it.each(CLASSES)('errors of code %s are instances of their subclass', (code, cls) => {
    const err = errorWithCode(code, 'message', { errno: 'EINVAL', hint: 'a hint' });
    expect(err).toBeInstanceOf(cls);
    expect(err).toBeInstanceOf(TsimgError);
    expect(err.code).toBe(code);
    expect(err.message).toBe('message');
    expect(err.errno).toBe('EINVAL');
    expect((err as { hint?: string }).hint).toBe('a hint');
  });

  // Library code makes every error through its code's subclass (or errorWithCode), so that a
  // user's `instanceof FormatError` always matches `code === 'format'`.
  it('no package constructs a bare TsimgError', () => {
    const packages = fileURLToPath(new URL('../../', import.meta.url));
    const offenders: string[] = [];
    const walk = (dir: string): void => {
      for (const name of readdirSync(dir)) {
        const path = join(dir, name);
        if (statSync(path).isDirectory()) walk(path);
        else if (path.endsWith('.ts') && !path.endsWith(join('raw', 'src', 'errors.ts'))) {
          if (/new TsimgError\(/.test(readFileSync(path, 'utf8'))) offenders.push(path);
        }
      }
    };
    for (const pkg of readdirSync(packages)) {
      const src = join(packages, pkg, 'src');
      if (statSync(src, { throwIfNoEntry: false })?.isDirectory()) walk(src);
    }
    expect(offenders).toEqual([]);
  });
});
