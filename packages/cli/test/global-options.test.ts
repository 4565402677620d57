/**
 * qemu-img's standard options and command lookup (main in qemu-img.c): -h / --help, -V /
 * --version, -T / --trace, getopt's "+" rule (options end at the command), unknown options and
 * commands with their "Try ... --help" line, and the exit statuses — against qemu-img 7.2.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuAsTsimg, qemuImg, tempDir, tsimg } from '../../../test-images/qemu.js';

describeQemu('tsimg standard options and commands', () => {
  let work: { dir: string; cleanup: () => void };
  beforeAll(() => {
    work = tempDir('tsimg-global-');
    writeFileSync(join(work.dir, 'events.txt'), 'no_such_event\n# a comment\n\nbdrv_*\n-another_one\n');
  });
  afterAll(() => work.cleanup());

  const cases: string[][] = [
    [],
    ['-x'],
    ['--frobnicate'],
    ['nosuchcommand'],
    ['toString'],
    ['help'],
    ['-T'],
    ['--trace'],
    ['-T', 'foo'],
    ['-T', 'foo', 'info'],
    ['--tr', 'foo'],
    ['--trace=foo,file=trace.log'],
    ['-T', 'enable=foo'],
    ['-T', '-foo'],
    ['-T', 'bdrv_*'],
    ['-T', 'foo=1', 'info', 'x'],
    ['-T', 'events=events.txt'],
    ['-T', 'events=missing.txt'],
    ['-xh'],
    ['--'],
    ['--', 'info'],
    ['-T', 'a', '-T', 'b', 'nosuchcommand'],
    ['info', '-xh'],
    ['info', 'img', '-Uxh'],
    ['info', '-U', '-xh'],
    ['check', '-x'],
    ['commit', '-xh', 'a'],
    ['rebase', '-xh', 'a'],
    ['resize', '-xh', 'a', '1M'],
    ['snapshot', '-xh', 'a'],
    ['bench', '-xh', 'a'],
  ];
  it.each(cases.map((c) => [c.join(' ') || '(no arguments)', c] as const))('%s', (_label, args) => {
    // A bad letter inside the first cluster names argv[0], the program itself.
    const theirs = qemuAsTsimg(qemuImg(args, { cwd: work.dir }));
    theirs.stderr = theirs.stderr.replaceAll("option 'qemu-img'", "option 'tsimg'");
    expect(tsimg(args, { cwd: work.dir })).toEqual(theirs);
  });

  it('-h, --help and -V: status 0, the synopsis of every command tsimg has', () => {
    for (const args of [['-h'], ['--help'], ['--he'], ['-hx'], ['-Vh']]) {
      const q = qemuImg(args);
      const t = tsimg(args);
      expect({ status: t.status, stderr: t.stderr }, args.join(' ')).toEqual({ status: q.status, stderr: q.stderr });
    }
    const help = tsimg(['--help']).stdout;
    for (const name of ['bench', 'check', 'commit', 'compare', 'convert', 'create', 'dd', 'info', 'map', 'measure', 'resize']) {
      const synopsis = qemuImg(['--help']).stdout.split('\n').find((l) => l.startsWith(`  ${name} `));
      expect(help.split('\n'), name).toContain(synopsis);
    }
    expect(help).toMatch(/^Supported formats: qcow2 raw$/m);
    expect(tsimg(['-V']).stdout).toMatch(/^tsimg version \S+ \(qemu-img 7\.2 compatible\)\n$/);
    expect(tsimg(['-Vh']).stdout).toBe(tsimg(['-V']).stdout);
    expect(tsimg(['-hV']).stdout).toBe(help);
  });
});
