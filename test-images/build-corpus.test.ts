/**
 * Checks the corpus itself: the manifest matches the directory, qemu-img accepts every image it
 * should, every feature the corpus promises is really in some image, and a second build has the
 * same guest contents (so recorded expectations stay valid).
 */
import { expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { openSync, readSync, closeSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { corpus, buildScript, findImage, type CorpusImage } from './corpus.js';
import { describeQemu, hasQemu, qemuImg, tempDir } from './qemu.js';

const c = hasQemu ? await corpus() : { dir: '', images: [] as CorpusImage[] };

interface Qcow2Info {
  'virtual-size': number;
  format: string;
  'cluster-size'?: number;
  'dirty-flag'?: boolean;
  'backing-filename'?: string;
  'format-specific'?: {
    type: string;
    data: {
      compat?: string;
      'refcount-bits'?: number;
      'extended-l2'?: boolean;
      'lazy-refcounts'?: boolean;
      'compression-type'?: string;
      'data-file'?: string;
      'data-file-raw'?: boolean;
      bitmaps?: { name: string; flags: string[]; granularity: number }[];
    };
  };
}

function info(image: CorpusImage): Qcow2Info {
  const r = qemuImg(['info', '--output=json', '-U', '-f', image.format, image.path]);
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout) as Qcow2Info;
}

describeQemu('test-image corpus', () => {
  it('lists every file of the directory, and every listed file exists', () => {
    const listed = new Set(['manifest.json']);
    for (const i of c.images) {
      listed.add(i.file);
      if (i.dataFile) listed.add(i.dataFile);
    }
    expect(new Set(readdirSync(c.dir))).toEqual(listed);
    for (const i of c.images) {
      if (i.backing) expect(findImage(c.images, i.backing.file).format).toBe(i.backing.format);
    }
    expect(c.images.length).toBeGreaterThan(40);
  });

  it.each(c.images.map((i) => [i.file, i] as const))('%s: qemu-img info and check agree with the manifest', (_, image) => {
    const data = info(image);
    expect(data.format).toBe(image.format);
    expect(data['virtual-size']).toBe(image.virtualSize);
    if (image.format !== 'qcow2') return;
    expect(data['dirty-flag'] ?? false).toBe(image.dirty);
    const check = qemuImg(['check', '-f', 'qcow2', image.path]);
    // Status 2: errors found. A stale-refcount image must show them; every other one is clean.
    if (image.check) {
      expect(check.stdout + check.stderr).toContain('No errors were found on the image.');
      expect(check.status).toBe(0);
    } else {
      expect(check.status).toBe(2);
    }
  });

  it('covers every feature the corpus promises', () => {
    const all = c.images.map((i) => ({ i, d: info(i) }));
    const some = (what: string, pred: (d: Qcow2Info, i: CorpusImage) => boolean) =>
      expect(all.some(({ i, d }) => pred(d, i)), what).toBe(true);
    const q = (d: Qcow2Info) => d['format-specific']?.data ?? {};
    for (const bits of [1, 2, 4, 8, 16, 32, 64]) some(`refcount_bits=${bits}`, (d) => q(d)['refcount-bits'] === bits);
    for (const size of [512, 4096, 65536, 2 << 20]) some(`cluster_size=${size}`, (d) => d['cluster-size'] === size);
    some('compat=0.10', (d) => q(d).compat === '0.10');
    some('compat=1.1', (d) => q(d).compat === '1.1');
    some('extended_l2', (d) => q(d)['extended-l2'] === true);
    some('lazy_refcounts', (d) => q(d)['lazy-refcounts'] === true && !d['dirty-flag']);
    some('dirty lazy_refcounts', (d) => q(d)['lazy-refcounts'] === true && d['dirty-flag'] === true);
    some('zstd', (d) => q(d)['compression-type'] === 'zstd');
    some('external data file', (d) => q(d)['data-file'] !== undefined && !q(d)['data-file-raw']);
    some('data_file_raw', (d) => q(d)['data-file-raw'] === true);
    some('bitmaps', (d) => (q(d).bitmaps?.length ?? 0) >= 2);
    some('internal snapshots', (_, i) => i.snapshots.length >= 2);
    some('raw', (d) => d.format === 'raw');
    some('backing file shorter than the image', (_, i) =>
      i.backing !== undefined && findImage(c.images, i.backing.file).virtualSize < i.virtualSize);
    some('huge sparse image', (d) => d['virtual-size'] >= 2 ** 40);
    for (const mode of ['metadata', 'falloc', 'full']) some(`preallocation=${mode}`, (_, i) => i.file === `prealloc-${mode}.qcow2`);
  });

  it('has a 3-deep chain: qcow2 over qcow2 over raw', () => {
    const r = qemuImg(['info', '--output=json', '--backing-chain', '-U', findImage(c.images, 'chain-top.qcow2').path]);
    const chain = JSON.parse(r.stdout) as Qcow2Info[];
    expect(chain.map((d) => d.format)).toEqual(['qcow2', 'qcow2', 'raw']);
  });

  it('has compressed clusters where it says so (qemu-img map shows data without an offset)', () => {
    for (const i of c.images.filter((i) => i.tags.some((t) => t.startsWith('compressed-')))) {
      const map = JSON.parse(qemuImg(['map', '--output=json', '-U', i.path]).stdout) as { data: boolean; offset?: number }[];
      expect(map.some((e) => e.data && e.offset === undefined), i.file).toBe(true);
    }
  });

  it('keeps the unknown header extension in unknown-ext.qcow2', () => {
    const fd = openSync(findImage(c.images, 'unknown-ext.qcow2').path, 'r');
    const head = Buffer.alloc(4096);
    readSync(fd, head, 0, head.length, 0);
    closeSync(fd);
    const headerLength = head.readUInt32BE(100);
    const types: number[] = [];
    for (let off = headerLength; ; ) {
      const type = head.readUInt32BE(off);
      if (type === 0) break;
      types.push(type);
      off += 8 + ((head.readUInt32BE(off + 4) + 7) & ~7);
    }
    expect(types).toContain(0x7e570abc);
  });

  it('builds the same guest contents twice', () => {
    const t = tempDir('tsimg-corpus-again-');
    try {
      execFileSync(process.execPath, [buildScript, t.dir], { encoding: 'utf8' });
      for (const i of c.images) {
        const r = qemuImg(['compare', '-f', i.format, '-F', i.format, i.path, join(t.dir, i.file)]);
        expect(`${i.file}: ${r.stdout.trim()} ${r.stderr.trim()}`).toBe(`${i.file}: Images are identical. `);
      }
    } finally {
      t.cleanup();
    }
  });
});
