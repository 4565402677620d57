/** CreatedFile: only a file the command itself created is removed, and only while it is still that file. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreatedFile } from '../src/created-file.js';

let dir = '';
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tsimg-created-file-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('CreatedFile', () => {
  it('removes a file that did not exist before, once', async () => {
    const p = join(dir, 'new');
    const f = await CreatedFile.before(p);
    writeFileSync(p, 'x');
    await f.created();
    expect(await f.remove()).toBe(true);
    expect(existsSync(p)).toBe(false);
    writeFileSync(p, 'y');
    expect(await f.remove()).toBe(false);
    expect(existsSync(p)).toBe(true);
  });

  it('removes a file whose creation failed half-way (created() never ran)', async () => {
    const p = join(dir, 'half');
    const f = await CreatedFile.before(p);
    writeFileSync(p, '');
    expect(await f.remove()).toBe(true);
    expect(existsSync(p)).toBe(false);
  });

  it('leaves a file that existed before', async () => {
    const p = join(dir, 'old');
    writeFileSync(p, 'old');
    const f = await CreatedFile.before(p);
    writeFileSync(p, 'overwritten');
    await f.created();
    expect(await f.remove()).toBe(false);
    expect(existsSync(p)).toBe(true);
  });

  it('leaves the name alone once it names another file', async () => {
    const p = join(dir, 'swapped');
    const f = await CreatedFile.before(p);
    writeFileSync(p, 'mine');
    await f.created();
    writeFileSync(join(dir, 'other'), 'theirs');
    renameSync(join(dir, 'other'), p);
    expect(await f.remove()).toBe(false);
    expect(existsSync(p)).toBe(true);
  });

  it('leaves a symbolic link, even a dangling one, and what it points at', async () => {
    const p = join(dir, 'link');
    symlinkSync(join(dir, 'nowhere'), p);
    const f = await CreatedFile.before(p);
    writeFileSync(p, 'through the link');
    await f.created();
    expect(await f.remove()).toBe(false);
    expect(existsSync(join(dir, 'nowhere'))).toBe(true);
  });
});
