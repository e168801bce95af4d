// Cross-check of the fake API server with an implementation nobody here wrote: `kubectl get --raw` sees the same lists
// (pods, namespaces, Services, EndpointSlices, CRDs), watch streams (resourceVersion, 410 Gone) and pods/status annotations.
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { KubeClient, parseWatchEvent, type WatchEvent } from '../../agent/src/workload/kube/client.js';
import { REDIRECTION_ANNOTATION } from '../../agent/src/workload/kube/pod-annotator.js';
import { endpointSliceFromApi, KubernetesWorkloadSource, serviceFromApi } from '../../agent/src/workload/kube-source.js';
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
const service = (name: string, port = 80): Record<string, unknown> => ({
  metadata: { name, namespace: 'app' },
  spec: { type: 'ClusterIP', clusterIP: '10.96.0.20', clusterIPs: ['10.96.0.20'], selector: { app: name }, ports: [{ name: 'http', port, targetPort: 'http', protocol: 'TCP' }] },
});
const slice = (name: string, service: string, ips: string[]): Record<string, unknown> => ({
  metadata: { name, namespace: 'app', labels: { 'kubernetes.io/service-name': service } },
  addressType: 'IPv4',
  endpoints: ips.map((ip) => ({ addresses: [ip], conditions: { ready: true, serving: true, terminating: false }, nodeName: 'n0' })),
  ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
});

kubectlTest('lists: kubectl and the agent client get the same pods (with the node field selector), namespaces, Services, EndpointSlices and CRDs', async (t) => {
  const { api, client, kubectl } = await setup(t);
  api.put('namespaces', { metadata: { name: 'app', labels: { 'istio.io/dataplane-mode': 'ambient' } } });
  api.put('pods', pod('a', 'n0'));
  api.put('pods', pod('b', 'n1'));
  api.put('authorizationpolicies', { metadata: { name: 'deny', namespace: 'app' }, spec: { action: 'DENY' } });
  api.put('services', service('web'));
  api.put('endpointslices', slice('web-abc', 'web', ['10.1.0.5']));
  for (const path of [
    '/api/v1/pods', '/api/v1/pods?fieldSelector=spec.nodeName%3Dn1', '/api/v1/namespaces', '/apis/security.istio.io/v1/authorizationpolicies',
    '/api/v1/services', '/api/v1/namespaces/app/services', '/apis/discovery.k8s.io/v1/endpointslices', '/apis/discovery.k8s.io/v1/namespaces/app/endpointslices',
  ]) {
    const [p, q] = path.split('?');
    const ours = await client.getJson(p ?? path, Object.fromEntries(new URLSearchParams(q ?? '')));
    t.deepEqual(JSON.parse(await kubectl(path)), ours, path);
  }
  const onN1 = JSON.parse(await kubectl('/api/v1/pods?fieldSelector=spec.nodeName%3Dn1')) as { items: { metadata: { name: string } }[] };
  t.deepEqual(onN1.items.map((i) => i.metadata.name), ['b']);
});

kubectlTest('Services and EndpointSlices: kubectl reads the objects the source holds, and sees their watch events and 410 Gone', async (t) => {
  const { api, kubeconfig, client, kubectl } = await setup(t);
  api.put('services', service('web'));
  api.put('endpointslices', slice('web-abc', 'web', ['10.1.0.5']));
  const source = new KubernetesWorkloadSource({ client: new KubeClient({ kubeconfig }), nodeName: 'n0', log: pino({ level: 'silent' }), backoff: { initialMs: 20, maxMs: 200 } });
  t.teardown(() => source.stop());
  await source.start();
  // kubectl's lists, converted by the same functions, are what the source's informers hold.
  const svcList = JSON.parse(await kubectl('/api/v1/services')) as { kind: string; apiVersion: string; items: Record<string, unknown>[] };
  t.like(svcList, { kind: 'ServiceList', apiVersion: 'v1' });
  t.deepEqual(svcList.items.map((i) => serviceFromApi(i)), source.services());
  const sliceList = JSON.parse(await kubectl('/apis/discovery.k8s.io/v1/endpointslices')) as { kind: string; apiVersion: string; items: Record<string, unknown>[] };
  t.like(sliceList, { kind: 'EndpointSliceList', apiVersion: 'discovery.k8s.io/v1' });
  t.deepEqual(sliceList.items.map((i) => endpointSliceFromApi(i)), source.endpointSlices());
  t.like(JSON.parse(await kubectl('/api/v1/namespaces/app/services/web')), { kind: 'Service', apiVersion: 'v1', metadata: { name: 'web', namespace: 'app' } });
  t.like(JSON.parse(await kubectl('/apis/discovery.k8s.io/v1/namespaces/app/endpointslices/web-abc')), { kind: 'EndpointSlice', addressType: 'IPv4' });

  const rv = api.resourceVersion;
  api.put('services', service('web', 8080));
  api.put('endpointslices', slice('web-abc', 'web', ['10.1.0.5', '10.1.0.6']));
  api.delete('services', 'app/web');
  api.delete('endpointslices', 'app/web-abc');
  for (const [path, kind] of [['/api/v1/services', 'Service'], ['/apis/discovery.k8s.io/v1/endpointslices', 'EndpointSlice']] as const) {
    const seen = (await kubectl(`${path}?watch=true&resourceVersion=${rv}&timeoutSeconds=1`)).split('\n').filter(Boolean).map((l) => parseWatchEvent(l));
    t.deepEqual(seen.map((e) => `${e.type} ${String(e.object.kind)}`), [`MODIFIED ${kind}`, `DELETED ${kind}`], path);
    const ours: WatchEvent[] = [];
    for await (const e of client.watch(path, { resourceVersion: rv, timeoutSeconds: '1' }, new AbortController().signal)) ours.push(e);
    t.deepEqual(ours, seen, path);
  }
  // The source saw the same: both gone.
  for (let i = 0; i < 200 && (source.services().length > 0 || source.endpointSlices().length > 0); i++) await new Promise((r) => setTimeout(r, 25));
  t.deepEqual([source.services(), source.endpointSlices()], [[], []]);

  api.compact();
  for (const path of ['/api/v1/services', '/apis/discovery.k8s.io/v1/endpointslices']) {
    const gone = (await kubectl(`${path}?watch=true&resourceVersion=${rv}`)).split('\n').filter(Boolean).map((l) => parseWatchEvent(l));
    t.is(gone.length, 1, path);
    t.like(gone[0], { type: 'ERROR', object: { code: 410, reason: 'Expired' } }, path);
  }
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
