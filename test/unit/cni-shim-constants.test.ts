// The constants the C shim shares with the plugin are defined once (cni/src/shim-constants.ts): the shim's source holds
// no copy of its own, and the header build.sh generates gives C exactly the TypeScript values (compiled and printed here).
import test from 'ava';
import { execa } from 'execa';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CniCode } from '../../cni/src/cni-codes.js';
import {
  CNI_ENV_VARS, DEFAULT_AGENT_SOCKET, DEFAULT_AGENT_TIMEOUT_MS, MAX_AGENT_TIMEOUT_MS, MAX_STDIN_BYTES, renderShimHeader,
} from '../../cni/src/shim-constants.js';
import { REPO_ROOT } from '../testbed/repo.js';

const SHIM_SOURCE = readFileSync(join(REPO_ROOT, 'cni/shim/ambient-cni.c'), 'utf8');

test('the shim source defines none of the shared constants itself', (t) => {
  t.regex(SHIM_SOURCE, /#include "ambient-cni-constants\.h"/);
  const copies: [string, RegExp][] = [
    ['the default socket', new RegExp(DEFAULT_AGENT_SOCKET.replace(/[./]/g, '\\$&'))],
    ['a CNI variable name', new RegExp(`"(${CNI_ENV_VARS.join('|')})"`)],
    ['MAX_STDIN', /#define\s+MAX_STDIN\b/],
    ['DEFAULT_SOCKET', /#define\s+DEFAULT_SOCKET\b/],
    ['DEFAULT_TIMEOUT_MS', /#define\s+DEFAULT_TIMEOUT_MS\b/],
    ['the timeout bound', new RegExp(`\\b${MAX_AGENT_TIMEOUT_MS}\\b`)],
    ['the default timeout', new RegExp(`\\b${DEFAULT_AGENT_TIMEOUT_MS}L?\\b`)],
    ['CNI code 999', new RegExp(`\\b${CniCode.Internal}\\b`)],
  ];
  for (const [what, re] of copies) t.notRegex(SHIM_SOURCE, re, `cni/shim/ambient-cni.c has its own copy of ${what}`);
});

test('the generated header gives C the TypeScript values', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ambient-shim-constants-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'ambient-cni-constants.h'), renderShimHeader());
  writeFileSync(join(dir, 'print.c'), `#include <stdio.h>
#include "ambient-cni-constants.h"
static const char *vars[] = CNI_VARS_INIT;
int main(void) {
  printf("%d\\n%s\\n%ld\\n%ld\\n%d\\n", MAX_STDIN, DEFAULT_SOCKET, DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, CNI_CODE_INTERNAL);
  for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) printf("%s\\n", vars[i]);
  return 0;
}
`);
  await execa('gcc', ['-Wall', '-Wextra', '-Werror', '-o', join(dir, 'print'), join(dir, 'print.c')]);
  const { stdout } = await execa(join(dir, 'print'));
  t.deepEqual(stdout.split('\n'), [
    String(MAX_STDIN_BYTES), DEFAULT_AGENT_SOCKET, String(DEFAULT_AGENT_TIMEOUT_MS), String(MAX_AGENT_TIMEOUT_MS),
    String(CniCode.Internal), ...CNI_ENV_VARS,
  ]);
});

test('the built header (scripts/build.sh) is the current one', (t) => {
  const built = join(REPO_ROOT, 'dist/shim/ambient-cni-constants.h');
  if (!existsSync(built)) {
    t.fail(`${built} is missing: run scripts/build.sh`);
    return;
  }
  t.is(readFileSync(built, 'utf8'), renderShimHeader(), 'stale build: run scripts/build.sh');
});
