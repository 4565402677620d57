import { describe, expect, it } from 'vitest';
import { findAllocation, type Lseek, SEEK_DATA, SEEK_HOLE } from '../src/file-device.js';

/** An lseek that answers from a table keyed by whence, throwing `{ code }` for errno names. */
function fakeLseek(answers: { data: number | string; hole?: number | string }): { lseek: Lseek; calls: number[] } {
  const calls: number[] = [];
  const lseek: Lseek = (_fd, _offset, whence) => {
    calls.push(whence);
    const a = whence === SEEK_DATA ? answers.data : whence === SEEK_HOLE ? answers.hole : undefined;
    if (a === undefined) throw new Error(`unexpected whence ${whence}`);
    if (typeof a === 'string') throw Object.assign(new Error(`${a}, lseek`), { code: a });
    return a;
  };
  return { lseek, calls };
}

describe('findAllocation (qemu file-posix find_allocation, case for case)', () => {
  const cases: [string, { data: number | string; hole?: number | string }, unknown][] = [
    ['D1+H2: in data, next hole after', { data: 100, hole: 4096 }, { kind: 'data', hole: 4096 }],
    ['D2: in a hole, next data after', { data: 8192 }, { kind: 'hole', data: 8192 }],
    ['D3: trailing hole or past EOF (ENXIO)', { data: 'ENXIO' }, { kind: 'trailing-hole' }],
    ['D4: SEEK_DATA fails otherwise', { data: 'EINVAL' }, { kind: 'unknown', errno: 'EINVAL' }],
    ['SEEK_DATA before start is invalid', { data: 50 }, { kind: 'unknown', errno: 'EIO' }],
    ['D1+H1: a hole dug between the calls', { data: 100, hole: 100 }, { kind: 'unknown', errno: 'EBUSY' }],
    ['D1+H3: truncated between the calls (ENXIO)', { data: 100, hole: 'ENXIO' }, { kind: 'trailing-hole' }],
    ['D1+H4: SEEK_HOLE fails otherwise', { data: 100, hole: 'EIO' }, { kind: 'unknown', errno: 'EIO' }],
    ['SEEK_HOLE before start is invalid', { data: 100, hole: 99 }, { kind: 'unknown', errno: 'EIO' }],
  ];
  it.each(cases)('%s', (_name, answers, expected) => {
    const { lseek, calls } = fakeLseek(answers);
    expect(findAllocation(lseek, 7, 100)).toEqual(expected);
    // SEEK_HOLE is asked only when SEEK_DATA said "data here".
    expect(calls).toEqual(answers.hole === undefined ? [SEEK_DATA] : [SEEK_DATA, SEEK_HOLE]);
  });

  it('rethrows what is not an errno (a bug, not a file-system answer)', () => {
    const lseek: Lseek = () => {
      throw new TypeError('Not an integer');
    };
    expect(() => findAllocation(lseek, 7, 0)).toThrow(TypeError);
  });
});
