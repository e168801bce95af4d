// Where things are: the repository root (found from this module's own location, so tests, the demo
// and benchmarks can import the testbed from anywhere), the built entry points and the reference CNI plugins.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Directory of the Debian containernetworking-plugins package. */
export const REFERENCE_CNI_DIR = '/usr/lib/cni';

function findRepoRoot(start: string): string {
  let dir = start;
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      const parsed: unknown = JSON.parse(readFileSync(pkg, 'utf8'));
      if (typeof parsed === 'object' && parsed !== null && 'name' in parsed && parsed.name === 'ambient-node') {
        return dir;
      }
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`testbed: no ambient-node package.json above ${start}`);
    dir = parent;
  }
}

/** Absolute path of the ambient-node repository. */
export const REPO_ROOT = findRepoRoot(dirname(fileURLToPath(import.meta.url)));

/** Built, bundled CNI plugin in Node (`npm run build` produces it); the shim's fallback. */
export const CNI_MAIN = join(REPO_ROOT, 'dist/bin/ambient-cni.mjs');

/** Built native front of the plugin (cni/shim): what a node installs as `ambient-cni`. */
export const CNI_SHIM = join(REPO_ROOT, 'dist/bin/ambient-cni');

/** Built standalone plugin executable (Node SEA, no Node needed): the front's fallback on nodes. */
export const CNI_STANDALONE = join(REPO_ROOT, 'dist/bin/ambient-cni-standalone');

/** Node flags the agent runs with in production (its shebang): see agent/src/main.ts. */
export const AGENT_NODE_FLAGS = ['--single-threaded-gc', '--max-semi-space-size=4', '--v8-pool-size=1'];

/** Built agent entry point (`npm run build` produces it). */
export const AGENT_MAIN = join(REPO_ROOT, 'dist/agent/src/main.js');
