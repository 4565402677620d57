import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { BLK_PERM_ALL, BLK_PERM_CONSISTENT_READ as READ, BLK_PERM_RESIZE as RESIZE, BLK_PERM_WRITE as WRITE, BLK_PERM_WRITE_UNCHANGED as WRITE_UNCHANGED, imageFilePermissions, LockError, type LockPermissions, UnsupportedError } from '@tsimg/raw';
import { acquireImageLock, conflictTests, CREATE_PERMISSIONS, type LockCalls, lockCallsFor, lockedBytes, permNames } from '../src/lock.js';
import { type NativeFs } from '../src/native.js';

/**
 * A stand-in for the kernel's OFD locks: shared locks on single bytes, one owner per fd. A test
 * (F_GETLK with F_WRLCK) conflicts with any lock of another owner, never with the fd's own.
 */
function fakeKernel(): { calls: LockCalls; held: (fd: number) => number[]; log: string[] } {
  const locks = new Map<number, Set<number>>(); // byte → fds
  const log: string[] = [];
  const calls: LockCalls = {
    kind: 'ofd',
    set(fd, byte, type) {
      log.push(`${type} ${fd}:${byte}`);
      const owners = locks.get(byte) ?? new Set<number>();
      if (type === 'read') owners.add(fd);
      else owners.delete(fd);
      locks.set(byte, owners);
      return undefined;
    },
    test(fd, byte) {
      log.push(`test ${fd}:${byte}`);
      return [...(locks.get(byte) ?? [])].some((owner) => owner !== fd);
    },
  };
  const held = (fd: number): number[] => [...locks].filter(([, o]) => o.has(fd)).map(([b]) => b).sort((a, b) => a - b);
  return { calls, held, log };
}

// The permissions qemu-io / qemu-img take on an image's file, and the bytes /proc/locks shows
// for them while qemu-io runs (measured with QEMU 7.2; lock-qemu.test.ts checks it again).
const qcow2 = (write: boolean, forceShare = false) => imageFilePermissions({ format: true, write, forceShare });
const VECTORS: { name: string; p: LockPermissions; bytes: number[] }[] = [
  { name: 'qemu-io qcow2 read-write', p: qcow2(true), bytes: [100, 101, 103, 201, 203] },
  { name: 'qemu-io -r qcow2', p: qcow2(false), bytes: [100, 201, 203] },
  { name: 'qemu-io -r -U qcow2', p: qcow2(false, true), bytes: [100] },
  { name: 'qemu-io raw read-write', p: imageFilePermissions({ format: false, write: true }), bytes: [100, 101] },
  { name: 'qemu-io -r raw', p: imageFilePermissions({ format: false, write: false }), bytes: [100] },
  { name: 'raw_co_create', p: CREATE_PERMISSIONS, bytes: [101, 103, 203] },
];

const perms = fc.record({ perm: fc.integer({ min: 0, max: BLK_PERM_ALL }), shared: fc.integer({ min: 0, max: BLK_PERM_ALL }) });

describe('lock bytes (qemu 7.2 file-posix)', () => {
  it('permission bits and names are qemu’s', () => {
    expect([READ, WRITE, WRITE_UNCHANGED, RESIZE, BLK_PERM_ALL]).toEqual([1, 2, 4, 8, 15]);
    expect(permNames(WRITE | RESIZE)).toBe('write, resize');
    expect(permNames(BLK_PERM_ALL)).toBe('consistent read, write, write unchanged, resize');
    expect(permNames(0)).toBe('');
  });

  it.each(VECTORS)('$name locks $bytes', ({ p, bytes }) => {
    expect(lockedBytes(p)).toEqual(bytes);
    const k = fakeKernel();
    acquireImageLock(3, p, 'img', k.calls);
    expect(k.held(3)).toEqual(bytes);
  });

  it('tests in qemu’s order with qemu’s messages', () => {
    expect(conflictTests(qcow2(false))).toEqual([
      { byte: 200, message: 'Failed to get "consistent read" lock' },
      { byte: 101, message: 'Failed to get shared "write" lock' },
      { byte: 103, message: 'Failed to get shared "resize" lock' },
    ]);
    expect(conflictTests(qcow2(true)).map((t) => t.byte)).toEqual([200, 201, 203, 101, 103]);
    expect(conflictTests(qcow2(false, true))).toEqual([{ byte: 200, message: 'Failed to get "consistent read" lock' }]);
  });

  it('locks first, then tests (the two phases of raw_handle_perm_lock)', () => {
    const k = fakeKernel();
    acquireImageLock(3, qcow2(false), 'img', k.calls);
    expect(k.log).toEqual(['read 3:100', 'read 3:201', 'read 3:203', 'test 3:200', 'test 3:101', 'test 3:103']);
  });

  it('a writer blocks a reader with qemu’s message and hint; the reader keeps nothing locked', () => {
    const k = fakeKernel();
    const writer = acquireImageLock(3, qcow2(true), '/images/a.qcow2', k.calls);
    const err = (() => {
      try {
        acquireImageLock(4, qcow2(false), '/images/a.qcow2', k.calls);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(LockError);
    expect(err).toMatchObject({
      code: 'locked', errno: 'EAGAIN', message: 'Failed to get shared "write" lock',
      hint: 'Is another process using the image [/images/a.qcow2]?',
    });
    expect(k.held(4)).toEqual([]);
    expect(k.held(3)).toEqual([100, 101, 103, 201, 203]);
    // -U: shares everything, so only consistent read matters, which the writer shares.
    acquireImageLock(5, qcow2(false, true), '/images/a.qcow2', k.calls);
    writer.release();
    expect(k.held(3)).toEqual([]);
    acquireImageLock(6, qcow2(false), '/images/a.qcow2', k.calls);
  });

  it('property: B can join A exactly when each shares what the other holds', () => {
    fc.assert(
      fc.property(perms, perms, (a, b) => {
        const k = fakeKernel();
        acquireImageLock(1, a, 'x', k.calls);
        const compatible = (b.perm & ~a.shared) === 0 && (a.perm & ~b.shared) === 0;
        let error: unknown;
        try {
          acquireImageLock(2, b, 'x', k.calls);
        } catch (e) {
          error = e;
        }
        expect(error === undefined).toBe(compatible);
        if (error !== undefined) {
          expect(error).toBeInstanceOf(LockError);
          // The first failing test in qemu's order names the permission.
          const first = conflictTests(b).find((t) => lockedBytes(a).includes(t.byte));
          expect((error as LockError).message).toBe(first?.message);
          expect(k.held(2)).toEqual([]);
        } else {
          expect(k.held(2)).toEqual(lockedBytes(b));
        }
        expect(k.held(1)).toEqual(lockedBytes(a));
      }),
    );
  });

  it('property: update sequences hold the bytes of the permissions in force, failures keep the old ones', () => {
    fc.assert(
      fc.property(perms, fc.array(fc.record({ who: fc.integer({ min: 0, max: 2 }), p: perms }), { maxLength: 20 }), (first, steps) => {
        const k = fakeKernel();
        const locks = [acquireImageLock(10, first, 'x', k.calls)];
        const model: LockPermissions[] = [first];
        for (const { who, p } of steps) {
          if (who >= locks.length) {
            try {
              locks.push(acquireImageLock(10 + locks.length, p, 'x', k.calls));
              model.push(p);
            } catch (e) {
              expect(e).toBeInstanceOf(LockError);
            }
            continue;
          }
          const others = model.filter((_, i) => i !== who);
          const compatible = others.every((o) => (p.perm & ~o.shared) === 0 && (o.perm & ~p.shared) === 0);
          const dropping = (model[who].perm | p.perm) === model[who].perm && (model[who].shared & p.shared) === model[who].shared;
          try {
            locks[who].update(p);
            expect(compatible || dropping).toBe(true);
            model[who] = p;
          } catch (e) {
            expect(e).toBeInstanceOf(LockError);
            expect(compatible).toBe(false);
          }
          for (const [i, m] of model.entries()) {
            expect(k.held(10 + i)).toEqual(lockedBytes(m));
            expect(locks[i].permissions).toEqual(m);
          }
        }
      }),
    );
  });

  it('an error other than EAGAIN/EACCES is spelled out', () => {
    const calls: LockCalls = { kind: 'ofd', set: () => 'ENOLCK', test: () => false };
    expect(() => acquireImageLock(3, qcow2(false), 'x', calls)).toThrow(
      expect.objectContaining({ code: 'locked', errno: 'ENOLCK', message: 'Failed to lock byte 100: No locks available', hint: undefined }),
    );
    const busy: LockCalls = { kind: 'ofd', set: () => 'EAGAIN', test: () => false };
    expect(() => acquireImageLock(3, qcow2(false), 'x', busy)).toThrow(expect.objectContaining({ message: 'Failed to lock byte 100' }));
  });
});

describe('lockCallsFor (file.locking)', () => {
  const native = (ofd: boolean) => ({ ofd, setLock: () => undefined, testLock: () => 'unlock' }) as unknown as NativeFs;
  it('auto: OFD when the kernel has it, else no locks, silently (as qemu)', () => {
    const warnings: string[] = [];
    expect(lockCallsFor('auto', native(true), (w) => warnings.push(w))?.kind).toBe('ofd');
    expect(lockCallsFor('auto', native(false), (w) => warnings.push(w))).toBeUndefined();
    expect(warnings).toEqual([]);
  });
  it('on: POSIX locks with qemu’s warning when OFD is missing', () => {
    const warnings: string[] = [];
    expect(lockCallsFor('on', native(false), (w) => warnings.push(w))?.kind).toBe('posix');
    expect(warnings).toEqual([
      'File lock requested but OFD locking syscall is unavailable, falling back to POSIX file locks\n' +
        'Due to the implementation, locks can be lost unexpectedly.',
    ]);
  });
  it('without the native module: on fails, auto says the image is not protected, off is quiet', () => {
    const warnings: string[] = [];
    expect(() => lockCallsFor('on', undefined, (w) => warnings.push(w), 'not built')).toThrow(UnsupportedError);
    expect(lockCallsFor('auto', undefined, (w) => warnings.push(w), 'not built')).toBeUndefined();
    expect(lockCallsFor('off', undefined, (w) => warnings.push(w))).toBeUndefined();
    expect(warnings).toEqual([
      'File locking is unavailable (the native module tsimg_fs is not built): this image is not protected against concurrent use by qemu or tsimg',
    ]);
  });
});
