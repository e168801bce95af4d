// ambient-cni as a real process, the way a runtime executes it: real stdin/stdout/stderr pipes and exit status.
// Runs the build (node dist/cni/src/main.js) when it is up to date with the sources, otherwise the sources via tsx.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { execa } from 'execa';
import { SUPPORTED, netConf, podEnv, startFakeAgent } from './cni-helpers.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BUILT = join(ROOT, 'dist/cni/src/main.js');

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs);
  }
  return newest;
}

const sourcesMtime = Math.max(newestMtime(join(ROOT, 'cni/src')), newestMtime(join(ROOT, 'agent/src/protocol')));
const RUNNER =
  existsSync(BUILT) && statSync(BUILT).mtimeMs >= sourcesMtime
    ? { label: 'node dist/cni/src/main.js', args: [BUILT] }
    : { label: 'node --import tsx cni/src/main.ts', args: ['--import', 'tsx', join(ROOT, 'cni/src/main.ts')] };

async function plugin(env: Record<string, string | undefined>, input: string) {
  const clean = Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined));
  return execa(process.execPath, RUNNER.args, { cwd: ROOT, env: clean, extendEnv: false, input, reject: false, stripFinalNewline: false });
}

/** Every stderr line must be a pino JSON record: nothing unstructured, nothing lost to stdout. */
function stderrRecords(stderr: string): Record<string, unknown>[] {
  return stderr
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

test(`process (${RUNNER.label}): VERSION prints exactly the version JSON on stdout`, async (t) => {
  const r = await plugin({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"0.4.0"}');
  t.is(r.exitCode, 0, String(r.stderr));
  t.is(r.stdout, `${JSON.stringify({ cniVersion: '0.4.0', supportedVersions: [...SUPPORTED] })}\n`);
  t.deepEqual(stderrRecords(String(r.stderr)), []);
});

test(`process (${RUNNER.label}): a missing variable is error JSON on stdout, exit 1, logs on stderr`, async (t) => {
  const r = await plugin({ CNI_COMMAND: 'ADD', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0' }, JSON.stringify(netConf('1.0.0', '/x.sock')));
  t.is(r.exitCode, 1);
  t.is(r.stdout, `${JSON.stringify({ cniVersion: '1.1.0', code: 4, msg: 'required environment variable CNI_CONTAINERID missing for ADD' })}\n`);
  const logs = stderrRecords(String(r.stderr));
  t.true(logs.some((l) => l.msg === 'command failed' && l.code === 4), String(r.stderr));
});

test(`process (${RUNNER.label}): ADD against an agent prints the prevResult, logs only to stderr`, async (t) => {
  const agent = await startFakeAgent(t);
  const prev = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/x' }], ips: [{ address: '10.1.0.5/16', interface: 0 }] };
  const r = await plugin(podEnv('ADD'), JSON.stringify(netConf('1.0.0', agent.socket, { prevResult: prev })));
  t.is(r.exitCode, 0, String(r.stderr));
  t.is(r.stdout, `${JSON.stringify(prev)}\n`);
  t.true(stderrRecords(String(r.stderr)).some((l) => l.msg === 'asking agent to enroll pod'));
  t.is(agent.requests.length, 1);
});

test(`process (${RUNNER.label}): stdin over 1 MiB on a pipe is error code 6, not a crash`, async (t) => {
  const big = JSON.stringify({ ...netConf('1.0.0', '/x.sock'), pad: 'x'.repeat(2 << 20) });
  const r = await plugin(podEnv('ADD'), big);
  t.is(r.exitCode, 1, String(r.stderr));
  t.like(JSON.parse(r.stdout) as object, { code: 6, cniVersion: '1.1.0' });
});
