// Golden-file comparison for generated rules: UPDATE_GOLDEN=1 rewrites the files, otherwise they must match exactly.
// Golden diffs are reviewed like code.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';

export function assertGolden(t: ExecutionContext, name: string, actual: string): void {
  const path = fileURLToPath(new URL(`./testdata/${name}.golden`, import.meta.url));
  if (process.env.UPDATE_GOLDEN === '1') {
    writeFileSync(path, actual);
    t.pass();
    return;
  }
  t.is(actual, readFileSync(path, 'utf8'), `golden ${name} differs (UPDATE_GOLDEN=1 to refresh after review)`);
}
