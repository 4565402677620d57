/**
 * The `-p` progress line: qemu's float arithmetic, its 2% redraw threshold, the 0/100 always
 * drawn, `%3.2f` rounding, and the SIGUSR1 report when progress is off (util/qemu-progress.c).
 */
import { describe, expect, it } from 'vitest';
import { createProgress, formatPercent } from '../src/progress.js';
import type { CliIO } from '../src/command.js';

function capture(): CliIO & { out: string; err: string } {
  const io = {
    out: '',
    err: '',
    isTTY: false,
    stdout: (t: string) => void (io.out += t),
    stderr: (t: string) => void (io.err += t),
  };
  return io;
}

describe('formatPercent', () => {
  it('prints like %3.2f, rounding exact ties to even as glibc does', () => {
    expect(formatPercent(0)).toBe('0.00');
    expect(formatPercent(100)).toBe('100.00');
    expect(formatPercent(Math.fround(8.333333))).toBe('8.33');
    expect(formatPercent(0.125)).toBe('0.12');
    expect(formatPercent(0.375)).toBe('0.38');
    expect(formatPercent(12.625)).toBe('12.62');
    expect(formatPercent(Math.fround(2.0049999))).toBe('2.00');
  });
});

describe('createProgress', () => {
  it('draws 0, then steps of more than 2%, then 100, and ends the line', () => {
    const io = capture();
    const p = createProgress(io, true);
    p.print(0, 100);
    for (let i = 0; i < 10; i++) p.advance(1, 100); // 1% steps
    p.advance(90, 100);
    p.end();
    expect(io.out).toBe('    (0.00/100%)\r    (3.00/100%)\r    (6.00/100%)\r    (9.00/100%)\r    (100.00/100%)\r\n');
    expect(io.err).toBe('');
  });

  it('clamps at 100 and takes absolute values when max is 0', () => {
    const io = capture();
    const p = createProgress(io, true);
    p.print(50, 0);
    p.print(250, 0);
    p.end();
    p.end(); // once only
    expect(io.out).toBe('    (50.00/100%)\r    (100.00/100%)\r\n');
  });

  it('matches the steps qemu-img compare -p printed for a 12 MiB image compared in 2 MiB chunks', () => {
    // qemu-img 7.2: "    (0.00/100%)\r    (16.67/100%)\r    (33.33/100%)\r ..."
    const io = capture();
    const p = createProgress(io, true);
    p.print(0, 100);
    for (let i = 0; i < 6; i++) p.advance(2 * 1024 * 1024, 12 * 1024 * 1024);
    p.end();
    expect(io.out).toBe(
      '    (0.00/100%)\r    (16.67/100%)\r    (33.33/100%)\r    (50.00/100%)\r    (66.67/100%)\r    (83.33/100%)\r    (100.00/100%)\r\n',
    );
  });

  it('prints nothing when disabled, except one line on stderr after SIGUSR1', async () => {
    const io = capture();
    const p = createProgress(io, false);
    p.print(10, 0);
    expect(io.err).toBe('');
    process.kill(process.pid, 'SIGUSR1');
    await new Promise((r) => setTimeout(r, 50));
    p.print(20, 0);
    p.print(30, 0);
    p.end();
    expect(io.out).toBe('');
    expect(io.err).toBe('    (20.00/100%)\n');
  });
});
