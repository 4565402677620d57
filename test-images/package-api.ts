/**
 * Support for each package's public-api test: the names a package's index exports, the runtime
 * names a module has, and whether every declared dependency is imported by its sources.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** Every `.ts` file below `dir`. */
function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...sources(path));
    else if (path.endsWith('.ts')) out.push(path);
  }
  return out;
}

/**
 * The dependencies (and optional ones) in `packageDir`'s package.json that nothing in its
 * `src/` imports or requires: each should be removed, or used.
 */
export function unusedDependencies(packageDir: string): string[] {
  const pkg = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8')) as {
    dependencies?: Record<string, string>;
    optionalDependencies?: Record<string, string>;
  };
  const text = sources(join(packageDir, 'src'))
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n');
  const deps = [...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.optionalDependencies ?? {})];
  return deps.filter((dep) => !new RegExp(`(from |import\\(|require\\(|\\)\\()'${dep.replace(/[/.]/g, '\\$&')}(/[^']*)?'`).test(text));
}

/** Whether an index exports only by name (no `export *`). */
export function exportsByName(indexFile: string): boolean {
  return !/^export \* from/m.test(readFileSync(indexFile, 'utf8'));
}
