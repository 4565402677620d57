/**
 * `-T` / `--trace [[enable=]pattern][,events=file][,file=file]`, accepted as qemu-img 7.2
 * accepts it (trace_opt_parse). tsimg has no trace events, so a plain event name gets qemu's
 * "does not exist" warning and a pattern (with '*') matches nothing, silently; an events file
 * is read line by line the same way; `file=` names an output nothing is written to.
 */
import { readFileSync } from 'node:fs';
import type { CliIO } from './command.js';
import { osErrorText } from './exit.js';
import { splitOptionList } from './options.js';

const KEYS = new Set(['enable', 'events', 'file']);

/** trace_enable_events for one pattern (a leading '-' disables, which changes nothing here). */
function enableEvents(pattern: string, warn: (text: string) => void): void {
  const name = pattern.startsWith('-') ? pattern.slice(1) : pattern;
  if (!name.includes('*')) warn(`warning: trace event '${name}' does not exist`);
}

/** The list with its implied `enable=` key: a first element without '=' is the pattern. */
function withImpliedKey(list: string): string {
  const first = /^(?:[^,=]|,,)*/.exec(list)![0];
  return list[first.length] === '=' ? list : `enable=${list}`;
}

/**
 * Applies one `-T` argument; returns 0, or qemu-img's exit status (1) after printing why it
 * fails: an unknown key, or an events file that cannot be read.
 */
export function traceOption(arg: string, io: CliIO): number {
  const pairs = splitOptionList(withImpliedKey(arg));
  for (const [key] of pairs) {
    if (!KEYS.has(key)) {
      io.stderr(`tsimg: Invalid parameter '${key}'\n`);
      return 1;
    }
  }
  const value = (key: string) => pairs.filter(([k]) => k === key).at(-1)?.[1];
  const enable = value('enable');
  if (enable !== undefined) enableEvents(enable, (t) => io.stderr(`tsimg: ${t}\n`));
  const events = value('events');
  if (events === undefined) return 0;
  let text: string;
  try {
    text = readFileSync(events, 'latin1');
  } catch (err) {
    io.stderr(`tsimg:${events}: ${osErrorText(err as NodeJS.ErrnoException)}\n`);
    return 1;
  }
  // qemu's location prefix, "tsimg:FILE:LINE: ", names the line a warning is about.
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  lines.forEach((line, i) => {
    if (line.length === 0 || line.startsWith('#')) return;
    enableEvents(line, (t) => io.stderr(`tsimg:${events}:${i + 1}: ${t}\n`));
  });
  return 0;
}
