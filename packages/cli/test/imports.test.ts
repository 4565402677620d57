/**
 * The CLI's module graph: every relative import of packages/cli/src (static, `export … from`
 * and lazy `import()`) resolves to a source file, the graph has no cycle, and no command module
 * imports another command module (what commands share lives in modules named after it).
 * Reads the sources only: no build, no qemu.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const src = fileURLToPath(new URL('../src', import.meta.url));

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

/** The relative module specifiers of a TypeScript source, comments removed first. */
function relativeImports(text: string): string[] {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
  const specs: string[] = [];
  const patterns = [
    /\bfrom\s*['"](\.{1,2}\/[^'"]+)['"]/g, // import … from, export … from
    /\bimport\s*['"](\.{1,2}\/[^'"]+)['"]/g, // import './side-effect.js'
    /\bimport\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g, // lazy import()
  ];
  for (const re of patterns) for (const m of code.matchAll(re)) specs.push(m[1]!);
  return specs;
}

/** Module graph: file (relative to src) → the files it imports. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of sourceFiles(src)) {
    const deps = relativeImports(readFileSync(file, 'utf8')).map((spec) => {
      const target = resolve(dirname(file), spec.replace(/\.js$/, '.ts'));
      expect(existsSync(target), `${relative(src, file)} imports ${spec}, which is not a source file`).toBe(true);
      return relative(src, target);
    });
    graph.set(relative(src, file), deps);
  }
  return graph;
}

/** One cycle of the graph as a path of files (first = last), or undefined. */
function findCycle(graph: Map<string, string[]>): string[] | undefined {
  const state = new Map<string, 'active' | 'done'>();
  const stack: string[] = [];
  const visit = (node: string): string[] | undefined => {
    if (state.get(node) === 'done') return undefined;
    if (state.get(node) === 'active') return [...stack.slice(stack.indexOf(node)), node];
    state.set(node, 'active');
    stack.push(node);
    for (const dep of graph.get(node) ?? []) {
      const cycle = visit(dep);
      if (cycle) return cycle;
    }
    stack.pop();
    state.set(node, 'done');
    return undefined;
  };
  for (const node of graph.keys()) {
    const cycle = visit(node);
    if (cycle) return cycle;
  }
  return undefined;
}

describe('packages/cli imports', () => {
  const graph = importGraph();

  it('finds the modules and their imports', () => {
    expect(graph.get('main.ts')).toContain('command-table.ts');
    expect(graph.get('command-table.ts')).toContain('commands/convert.ts');
  });

  it('has no import cycle', () => {
    expect(findCycle(graph)).toBeUndefined();
  });

  it('never has a command import another command', () => {
    const crossings = [...graph].flatMap(([file, deps]) =>
      file.startsWith('commands/') ? deps.filter((d) => d.startsWith('commands/')).map((d) => `${file} -> ${d}`) : [],
    );
    expect(crossings).toEqual([]);
  });

  it('finds a cycle when there is one (the checker itself)', () => {
    const cyclic = new Map([
      ['a.ts', ['b.ts']],
      ['b.ts', ['c.ts']],
      ['c.ts', ['a.ts']],
    ]);
    expect(findCycle(cyclic)).toEqual(['a.ts', 'b.ts', 'c.ts', 'a.ts']);
    expect(findCycle(new Map([['a.ts', ['b.ts']], ['b.ts', []]]))).toBeUndefined();
  });
});
