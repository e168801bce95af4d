// Cross-check of the fake API server with an implementation nobody here wrote: `kubectl get --raw` sees the same lists,
// watch streams (with resourceVersion and 410 Gone) and pods/status annotations as the agent's client does.
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { KubeClient, parseWatchEvent, type WatchEvent } from '../../agent/src/workload/kube/client.js';
import { REDIRECTION_ANNOTATION } from '../../agent/src/workload/kube/pod-annotator.js';
import { KubernetesWorkloadSource } from '../../agent/src/workload/kube-source.js';
import { FakeKubeApi, kubeconfigFor, makeTestTls } from '../fixtures/fake-kube-api.js';

const KUBECTL = await execa('sh', ['-c', 'command -v kubectl'], { reject: false }).then((r) => (r.exitCode === 0 ? r.stdout.trim() : undefined));
/** CI installs kubectl (scripts/setup.sh); a developer machine without it skips these tests. */
const kubectlTest = KUBECTL || process.env.AMBIENT_REQUIRE_ROOT === '1' ? test.serial : test.skip;

interface Env {
  api: FakeKubeApi;
  kubeconfig: string;
  client: KubeClient;
  kubectl: (path: string) => Promise<string>;
}

async function setup(t: ExecutionContext): Promise<Env> {
  if (!KUBECTL) throw new Error('kubectl not installed (scripts/setup.sh installs kubernetes-client)');
  const tls = makeTestTls();
  t.teardown(() => tls.cleanup());
  const api = await new FakeKubeApi({ tls, token: 'xcheck' }).start();
  t.teardown(() => api.stop());
  const dir = mkdtempSync(join(tmpdir(), 'kube-xcheck-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, kubeconfigFor(api, { token: 'xcheck', caFile: tls.caFile }));
  const client = new KubeClient({ kubeconfig });
  t.teardown(() => client.close());
  const kubectl = async (path: string): Promise<string> =>
    (await execa(KUBECTL, ['--kubeconfig', kubeconfig, 'get', '--raw', path], { timeout: 30_000, env: { HOME: dir } })).stdout;
  return { api, kubeconfig, client, kubectl };
}

const pod = (name: string, node: string): Record<string, unknown> => ({
  metadata: { name, namespace: 'app', uid: `uid-${name}` }, spec: { nodeName: node }, status: { phase: 'Running', podIP: '10.0.0.1' },
});

kubectlTest('lists: kubectl and the agent client get the same pods (with the node field selector), namespaces and CRDs', async (t) => {
  const { api, client, kubectl } = await setup(t);
  api.put('namespaces', { metadata: { name: 'app', labels: { 'istio.io/dataplane-mode': 'ambient' } } });
  api.put('pods', pod('a', 'n0'));
  api.put('pods', pod('b', 'n1'));
  api.put('authorizationpolicies', { metadata: { name: 'deny', namespace: 'app' }, spec: { action: 'DENY' } });
  for (const path of ['/api/v1/pods', '/api/v1/pods?fieldSelector=spec.nodeName%3Dn1', '/api/v1/namespaces', '/apis/security.istio.io/v1/authorizationpolicies']) {
    const [p, q] = path.split('?');
    const ours = await client.getJson(p ?? path, Object.fromEntries(new URLSearchParams(q ?? '')));
    t.deepEqual(JSON.parse(await kubectl(path)), ours, path);
  }
  const onN1 = JSON.parse(await kubectl('/api/v1/pods?fieldSelector=spec.nodeName%3Dn1')) as { items: { metadata: { name: string } }[] };
  t.deepEqual(onN1.items.map((i) => i.metadata.name), ['b']);
});

kubectlTest('watch: kubectl sees the same events from a resourceVersion, and 410 Gone for a compacted one', async (t) => {
  const { api, client, kubectl } = await setup(t);
  api.put('pods', pod('a', 'n0'));
  const rv = api.resourceVersion;
  api.put('pods', pod('b', 'n0'));
  api.put('pods', { ...pod('a', 'n0'), metadata: { ...(pod('a', 'n0').metadata as object), labels: { x: 'y' } } });
  api.delete('pods', 'app/b');
  const lines = (await kubectl(`/api/v1/pods?watch=true&resourceVersion=${rv}&timeoutSeconds=1`)).split('\n').filter(Boolean).map((l) => parseWatchEvent(l));
  t.deepEqual(lines.map((e) => `${e.type} ${String((e.object.metadata as { name: string }).name)}`), ['ADDED b', 'MODIFIED a', 'DELETED b']);
  const ours: WatchEvent[] = [];
  for await (const e of client.watch('/api/v1/pods', { resourceVersion: rv, timeoutSeconds: '1' }, new AbortController().signal)) ours.push(e);
  t.deepEqual(ours, lines);

  api.compact();
  const gone = (await kubectl(`/api/v1/pods?watch=true&resourceVersion=${rv}`)).split('\n').filter(Boolean).map((l) => parseWatchEvent(l));
  t.is(gone.length, 1);
  t.like(gone[0], { type: 'ERROR', object: { code: 410, reason: 'Expired' } });
});

kubectlTest('kubectl shows the capture annotation the source writes through pods/status', async (t) => {
  const { api, kubeconfig, kubectl } = await setup(t);
  api.put('pods', pod('sleep', 'n0'));
  const source = new KubernetesWorkloadSource({ client: new KubeClient({ kubeconfig }), nodeName: 'n0', log: pino({ level: 'silent' }), backoff: { initialMs: 20, maxMs: 200 } });
  t.teardown(() => source.stop());
  await source.start();
  source.reportCapture({ namespace: 'app', name: 'sleep', uid: 'uid-sleep' }, 'enabled');
  for (let i = 0; i < 200 && source.getPod('app', 'sleep')?.annotations[REDIRECTION_ANNOTATION] !== 'enabled'; i++) await new Promise((r) => setTimeout(r, 25));
  const seen = JSON.parse(await kubectl('/api/v1/namespaces/app/pods/sleep')) as { metadata: { annotations?: Record<string, string> } };
  t.is(seen.metadata.annotations?.[REDIRECTION_ANNOTATION], 'enabled');
});
