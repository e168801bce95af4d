// Upgrade-safe stop of `install-cni --watch`: the plugin is removed only when the API server says the DaemonSet is gone
// or being deleted; a restart during an upgrade (DaemonSet present) or an unreachable API server keeps it.
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { decideOnExit, lookupDaemonSet, parseDaemonSetRef, type DaemonSetLookup } from '../../agent/src/install/on-exit.js';
import { CNI_SHIM, CNI_STANDALONE, REPO_ROOT } from '../testbed/repo.js';
import { tempDir } from './cni-helpers.js';

const DS = { namespace: 'ambient-system', name: 'ambient-node' };

test('decision table: only a 404 or a deletionTimestamp uninstalls', (t) => {
  const cases: Array<[DaemonSetLookup, boolean, RegExp]> = [
    [{ status: 200, deleting: false }, false, /still exists/],
    [{ status: 200, deleting: true }, true, /being deleted/],
    [{ status: 404, deleting: false }, true, /is gone/],
    [{ status: 403, deleting: false }, false, /HTTP 403; keeping/],
    [{ status: 401, deleting: false }, false, /HTTP 401; keeping/],
    [{ status: 500, deleting: false }, false, /HTTP 500/],
    [{ error: 'connect ECONNREFUSED' }, false, /could not be looked up \(connect ECONNREFUSED\); keeping/],
  ];
  for (const [lookup, uninstall, reason] of cases) {
    const d = decideOnExit(DS, lookup);
    t.is(d.uninstall, uninstall, JSON.stringify(lookup));
    t.regex(d.reason, reason);
  }
});

test('DaemonSet references are NAMESPACE/NAME', (t) => {
  t.deepEqual(parseDaemonSetRef('ambient-system/ambient-node'), DS);
  for (const bad of ['ambient-node', '/x', 'a/b/c', 'A/b', '']) t.throws(() => parseDaemonSetRef(bad));
});

/** A stand-in API server answering the DaemonSet GET with `reply`; records the requests' paths and headers. */
async function apiServer(t: ExecutionContext, reply: { status: number; body?: unknown }): Promise<{ url: string; seen: Array<{ path: string; headers: IncomingHttpHeaders }> }> {
  const seen: Array<{ path: string; headers: IncomingHttpHeaders }> = [];
  const server = createServer((req, res) => {
    seen.push({ path: req.url ?? '', headers: req.headers });
    res.writeHead(reply.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(reply.body ?? { kind: 'Status', code: reply.status }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

test('lookup: GETs the apps/v1 DaemonSet with the bearer token and reads deletionTimestamp', async (t) => {
  const api = await apiServer(t, { status: 200, body: { kind: 'DaemonSet', metadata: { name: 'ambient-node', deletionTimestamp: '2026-11-22T03:00:00Z' } } });
  t.deepEqual(await lookupDaemonSet({ server: api.url, token: 'tok' }, DS), { status: 200, deleting: true });
  t.is(api.seen[0]?.path, '/apis/apps/v1/namespaces/ambient-system/daemonsets/ambient-node');
  t.is(api.seen[0]?.headers.authorization, 'Bearer tok');
  const gone = await apiServer(t, { status: 404 });
  t.deepEqual(await lookupDaemonSet({ server: gone.url }, DS), { status: 404, deleting: false });
  const r = await lookupDaemonSet({ server: 'http://127.0.0.1:1' }, DS);
  t.true('error' in r);
});

/** Runs `install-cni --watch` against temp dirs and the API stand-in, waits for the install, sends SIGTERM. */
async function watchThenStop(t: ExecutionContext, apiUrl: string): Promise<{ confPath: string; binDir: string; stderr: string }> {
  const root = await tempDir(t);
  const [src, binDir, confDir] = ['src', 'bin', 'net.d'].map((d) => join(root, d)) as [string, string, string];
  await Promise.all([src, binDir, confDir].map((d) => mkdir(d)));
  await writeFile(join(src, 'ambient-cni'), await readFile(CNI_SHIM), { mode: 0o755 });
  await writeFile(join(src, 'ambient-cni-standalone'), await readFile(CNI_STANDALONE), { mode: 0o755 });
  const confPath = join(confDir, '10-flannel.conflist');
  await writeFile(confPath, await readFile(new URL('./testdata/cni/10-flannel.conflist', import.meta.url), 'utf8'));
  const child = execa(
    'node',
    ['--import=tsx', join(REPO_ROOT, 'agent/src/main.ts'), 'install-cni', '--watch', '--source-dir', src, '--cni-bin-dir', binDir,
      '--cni-conf-dir', confDir, '--daemonset', 'ambient-system/ambient-node', '--kube-api', apiUrl],
    { reject: false },
  );
  t.teardown(() => void child.kill('SIGKILL'));
  // Wait (bounded by ava's timeout) for the first install, then stop it the way the kubelet does.
  while (!(await readFile(confPath, 'utf8')).includes('ambient-cni') || (await readdir(binDir)).length < 2) await sleep(50);
  child.kill('SIGTERM');
  const r = await child;
  t.is(r.exitCode, 0, String(r.stderr));
  return { confPath, binDir, stderr: String(r.stderr) };
}

test('SIGTERM while the DaemonSet exists (upgrade, restart): the plugin stays', async (t) => {
  const api = await apiServer(t, { status: 200, body: { kind: 'DaemonSet', metadata: { name: 'ambient-node' } } });
  const r = await watchThenStop(t, api.url);
  t.true((await readFile(r.confPath, 'utf8')).includes('ambient-cni'));
  t.deepEqual((await readdir(r.binDir)).sort(), ['ambient-cni', 'ambient-cni-standalone']);
  t.regex(r.stderr, /still exists \(upgrade or restart\): keeping ambient-cni installed/);
});

test('SIGTERM after the DaemonSet was deleted: the entry and the binaries are removed', async (t) => {
  const api = await apiServer(t, { status: 404 });
  const r = await watchThenStop(t, api.url);
  t.false((await readFile(r.confPath, 'utf8')).includes('ambient-cni'));
  t.deepEqual(await readdir(r.binDir), []);
  t.regex(r.stderr, /is gone: uninstalling ambient-cni/);
});
