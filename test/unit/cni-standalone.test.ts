// The standalone plugin executable (Node SEA, dist/bin/ambient-cni-standalone) runs with no Node on PATH: VERSION and an
// ADD against an agent double; its bundle holds no native addon; the native front falls back to it when it is present.
import test from 'ava';
import { execa } from 'execa';
import { copyFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EVENT_PATHS } from '../../agent/src/protocol/cni-event.js';
import { CNI_SHIM, CNI_STANDALONE, REPO_ROOT } from '../testbed/repo.js';
import { netConf, podEnv, POD, prevResultFor, startFakeAgent, SUPPORTED, tempDir } from './cni-helpers.js';

/** Runs a plugin file with only the given env: no PATH, so no `node` to fall back on. */
function exec(file: string, env: Record<string, string | undefined>, stdin: string) {
  return execa(file, [], { env, extendEnv: false, input: stdin, reject: false });
}

test('VERSION with no Node on PATH', async (t) => {
  const r = await exec(CNI_STANDALONE, { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}');
  t.is(r.exitCode, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout), { cniVersion: '1.0.0', supportedVersions: [...SUPPORTED] });
  t.is(r.stderr, '', 'no SEA warning or other noise on stderr');
});

test('ADD asks the agent and passes prevResult through', async (t) => {
  const agent = await startFakeAgent(t);
  const prev = prevResultFor('1.0.0');
  const r = await exec(CNI_STANDALONE, podEnv('ADD'), JSON.stringify(netConf('1.0.0', agent.socket, { prevResult: prev })));
  t.is(r.exitCode, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout), prev);
  t.is(agent.requests.length, 1);
  t.is(agent.requests[0]?.path, EVENT_PATHS.add);
  t.like(agent.requests[0]?.body, { command: 'ADD', k8s: { podName: POD.name, podNamespace: POD.namespace } });
});

test('ADD with the agent down fails closed with code 11', async (t) => {
  const dir = await tempDir(t);
  const r = await exec(CNI_STANDALONE, podEnv('ADD'), JSON.stringify(netConf('1.0.0', join(dir, 'none.sock'))));
  t.is(r.exitCode, 1);
  t.is((JSON.parse(r.stdout) as { code: number }).code, 11);
});

test('the standalone bundle holds no native addon (koffi or any .node file)', async (t) => {
  const meta = JSON.parse(await readFile(join(REPO_ROOT, 'dist/sea/ambient-cni.meta.json'), 'utf8')) as { inputs: Record<string, unknown> };
  const inputs = Object.keys(meta.inputs);
  t.true(inputs.some((p) => p.endsWith('cni/src/standalone.ts')));
  t.deepEqual(inputs.filter((p) => /koffi|\.node$/.test(p)), []);
});

test('the native front falls back to the standalone executable beside it, with no Node on PATH', async (t) => {
  const dir = await tempDir(t);
  await copyFile(CNI_SHIM, join(dir, 'ambient-cni'));
  await copyFile(CNI_STANDALONE, join(dir, 'ambient-cni-standalone'));
  // The agent socket does not exist: the front cannot take its fast path and must exec the fallback.
  const r = await exec(join(dir, 'ambient-cni'), podEnv('ADD'), JSON.stringify(netConf('1.0.0', join(dir, 'none.sock'))));
  t.is(r.exitCode, 1);
  t.regex(r.stdout, /"code":11/);
  const v = await exec(join(dir, 'ambient-cni'), { CNI_COMMAND: 'VERSION', AMBIENT_CNI_NO_FAST_PATH: '1' }, '{"cniVersion":"0.4.0"}');
  t.is(v.exitCode, 0, v.stderr);
  t.is((JSON.parse(v.stdout) as { cniVersion: string }).cniVersion, '0.4.0');
});
