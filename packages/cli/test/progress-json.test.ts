/**
 * `--progress=json` (progress.ts): JSON lines on stderr at the steps the `-p` text is drawn,
 * with done / total bytes and a rate, none before the total is known, the last one at the end;
 * the `-p` text stays as it was, and `--progress=` takes only human or json.
 */
import { describe, expect, it } from 'vitest';
import { createProgress, progressMode } from '../src/progress.js';
import type { CliIO } from '../src/command.js';

function capture(): CliIO & { out: string; err: string } {
  const io = { out: '', err: '', isTTY: false, stdout: (t: string) => void (io.out += t), stderr: (t: string) => void (io.err += t) };
  return io;
}

describe('JSON progress lines', () => {
  it('says done, total, percent and rate at the text steps, and once more at the end', () => {
    const io = capture();
    let t = 1000;
    const p = createProgress(io, true, 2.0, { json: true, now: () => t });
    p.print(0, 100); // total not known yet: no line
    p.setTotal(4_000_000);
    t += 1000;
    p.print(25, 0);
    t += 1000;
    p.print(26, 0); // below the 2% step: neither text nor JSON
    p.print(100, 0);
    p.end();
    expect(io.out).toBe('    (0.00/100%)\r    (25.00/100%)\r    (100.00/100%)\r\n');
    expect(io.err.split('\n').filter(Boolean).map((l) => JSON.parse(l))).toEqual([
      { done: 1_000_000, total: 4_000_000, percent: 25, rate: 1_000_000 },
      { done: 4_000_000, total: 4_000_000, percent: 100, rate: 2_000_000 },
    ]);
  });

  it('counts the exact bytes of advance() and prints JSON without -p text', () => {
    const io = capture();
    const p = createProgress(io, false, 2.0, { json: true, now: () => 0 });
    for (let i = 0; i < 3; i++) p.advance(1000, 3000);
    p.end();
    expect(io.out).toBe('');
    const lines = io.err.trim().split('\n').map((l) => JSON.parse(l) as { done: number; total: number });
    expect(lines.map((l) => [l.done, l.total])).toEqual([[1000, 3000], [2000, 3000], [3000, 3000]]);
  });

  it('takes human or json only', () => {
    expect(progressMode('json')).toBe('json');
    expect(progressMode('human')).toBe('human');
    expect(() => progressMode('xml')).toThrow('--progress must be used with human or json as argument.');
  });
});
