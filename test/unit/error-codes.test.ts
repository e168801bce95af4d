// The code tables are documented: every AmbientError code (agent/src/errors.ts) is listed in the README's
// "Error codes" section and every CNI code (cni/src/cni-codes.ts) has a row in "Errors the plugin reports", and back.
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CniCode } from '../../cni/src/cni-codes.js';
import { AMBIENT_ERROR_CODES } from '../../agent/src/errors.js';
import { REPO_ROOT } from '../testbed/repo.js';

const README = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');

/** The text under `### <title>` up to the next heading, or undefined when the README has no such section. */
function section(title: string): string | undefined {
  const lines = README.split('\n');
  const start = lines.findIndex((l) => l.trim() === `### ${title}`);
  if (start < 0) return undefined;
  const end = lines.findIndex((l, i) => i > start && /^#{1,3} /.test(l));
  return lines.slice(start + 1, end < 0 ? undefined : end).join('\n');
}

test('README "Error codes" lists every AmbientError code, and only those', (t) => {
  const text = section('Error codes');
  if (text === undefined) {
    t.fail(`README.md has no "### Error codes" section; it must list: ${AMBIENT_ERROR_CODES.join(', ')}`);
    return;
  }
  const documented = new Set(text.match(/AMB_ERR_[A-Z0-9_]+/g) ?? []);
  const known = new Set<string>(AMBIENT_ERROR_CODES);
  const missing = AMBIENT_ERROR_CODES.filter((c) => !documented.has(c));
  const unknown = [...documented].filter((c) => !known.has(c));
  t.deepEqual(missing, [], `codes missing from README "Error codes": ${missing.join(', ')}`);
  t.deepEqual(unknown, [], `README "Error codes" names codes that do not exist: ${unknown.join(', ')}`);
});

test('README "Errors the plugin reports" has a row for every CNI code, and only those', (t) => {
  const text = section('Errors the plugin reports');
  if (text === undefined) {
    t.fail('README.md has no "### Errors the plugin reports" section');
    return;
  }
  const codes = Object.values(CniCode).filter((v): v is number => typeof v === 'number');
  const rows = new Set([...text.matchAll(/^\| *(\d+) *\|/gm)].map((m) => Number(m[1])));
  const missing = codes.filter((c) => !rows.has(c)).map((c) => `${c} (${CniCode[c]})`);
  const unknown = [...rows].filter((c) => !codes.includes(c));
  t.deepEqual(missing, [], `CNI codes missing from README "Errors the plugin reports": ${missing.join(', ')}`);
  t.deepEqual(unknown, [], `README "Errors the plugin reports" has rows for codes cni-codes.ts does not define: ${unknown.join(', ')}`);
});
