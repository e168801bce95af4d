// The kubernetes workload source against a fake API server that speaks list/watch: initial list, watch events,
// bookmarks, 410 relists, reconnect after a server restart, malformed CRDs, in-cluster config, kubeconfig, annotations.
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { KubeApiError, KubeClient, loadKubeConfig, parseWatchEvent } from '../../agent/src/workload/kube/client.js';
import { REDIRECTION_ANNOTATION, redirectionPatch } from '../../agent/src/workload/kube/pod-annotator.js';
import { backoffDelay } from '../../agent/src/workload/kube/reflector.js';
import { KubernetesWorkloadSource, podFromApi } from '../../agent/src/workload/kube-source.js';
import type { WorkloadChange } from '../../agent/src/workload/source.js';
import { FakeKubeApi, kubeconfigFor, makeTestTls, mergePatch } from '../fixtures/fake-kube-api.js';

const NODE = 'node-a';
const FAST = { initialMs: 20, maxMs: 200 };

/** A logger whose records the test can read. */
function captureLog(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines };
}

async function until<T>(fn: () => T, ok: (v: T) => boolean, what: string): Promise<T> {
  for (let i = 0; i < 400; i++) {
    const v = fn();
    if (ok(v)) return v;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`gave up waiting for ${what}`);
}

const pod = (ns: string, name: string, node: string, ip: string, labels: Record<string, string> = {}): Record<string, unknown> => ({
  metadata: { name, namespace: ns, uid: `uid-${name}`, labels },
  spec: { nodeName: node, serviceAccountName: `${name}-sa` },
  status: { phase: 'Running', podIP: ip, podIPs: [{ ip }] },
});

const authz = (ns: string, name: string, spec: Record<string, unknown>): Record<string, unknown> => ({ metadata: { name, namespace: ns }, spec });

async function setup(t: import('ava').ExecutionContext, opts: { seed?: (api: FakeKubeApi) => void } = {}): Promise<{ api: FakeKubeApi; source: KubernetesWorkloadSource; changes: WorkloadChange[]; lines: Record<string, unknown>[]; dir: string }> {
  const api = await new FakeKubeApi({ token: 'secret-token' }).start();
  t.teardown(() => api.stop());
  opts.seed?.(api);
  const dir = mkdtempSync(join(tmpdir(), 'kube-source-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'kubeconfig'), kubeconfigFor(api, { token: 'secret-token' }));
  const { log, lines } = captureLog();
  const source = new KubernetesWorkloadSource({ client: new KubeClient({ kubeconfig: join(dir, 'kubeconfig') }), nodeName: NODE, log, backoff: FAST });
  t.teardown(() => source.stop());
  const changes: WorkloadChange[] = [];
  source.onChange((c) => changes.push(c));
  await source.start();
  return { api, source, changes, lines, dir };
}

test('initial list: local pods (field selector), all pods, namespaces and policies; watches ask for bookmarks', async (t) => {
  const { api, source } = await setup(t, {
    seed: (api) => {
      api.put('namespaces', { metadata: { name: 'app', labels: { 'istio.io/dataplane-mode': 'ambient' } } });
      api.put('pods', pod('app', 'sleep', NODE, '10.1.0.5'));
      api.put('pods', pod('app', 'web', 'node-b', '10.2.0.7'));
      api.put('authorizationpolicies', authz('app', 'allow-sleep', { action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/app/sa/sleep'] } }] }] }));
      api.put('peerauthentications', { metadata: { name: 'strict', namespace: 'app' }, spec: { mtls: { mode: 'STRICT' } } });
    },
  });
  t.deepEqual(source.podsOnNode().map((p) => p.name), ['sleep']);
  t.deepEqual(source.pods().map((p) => p.name).sort(), ['sleep', 'web']);
  t.like(source.getPod('app', 'web'), { nodeName: 'node-b', podIPs: ['10.2.0.7'], serviceAccount: 'web-sa', uid: 'uid-web' });
  t.deepEqual(source.getNamespace('app')?.labels, { 'istio.io/dataplane-mode': 'ambient' });
  t.is(source.authorizationPolicies()[0]?.name, 'allow-sleep');
  t.is(source.peerAuthentications()[0]?.name, 'strict');
  await until(() => api.openWatches(), (n) => n === 5, 'five watches');
  const podLists = api.requests.filter((r) => r.path === '/api/v1/pods' && r.query.watch === undefined);
  t.deepEqual(podLists.map((r) => r.query.fieldSelector ?? '').sort(), ['', `spec.nodeName=${NODE}`]);
  const watches = api.requests.filter((r) => r.query.watch === 'true');
  t.true(watches.every((w) => w.query.allowWatchBookmarks === 'true' && w.query.resourceVersion === String(Number(w.query.resourceVersion)) && w.authorization === 'Bearer secret-token'));
});

test('watch events: added, modified and deleted pods and namespace labels reach listeners', async (t) => {
  const { api, source, changes } = await setup(t);
  await until(() => api.openWatches(), (n) => n === 5, 'watches');
  api.put('namespaces', { metadata: { name: 'app' } });
  api.put('pods', pod('app', 'sleep', NODE, '10.1.0.5'));
  await until(() => source.getPod('app', 'sleep'), (p) => p !== undefined, 'pod added');
  api.put('namespaces', { metadata: { name: 'app', labels: { 'istio.io/dataplane-mode': 'ambient' } } });
  await until(() => source.getNamespace('app')?.labels['istio.io/dataplane-mode'], (v) => v === 'ambient', 'namespace labelled');
  t.true(changes.some((c) => c.namespaces.some((n) => n.after?.labels['istio.io/dataplane-mode'] === 'ambient' && n.before?.name === 'app')));
  api.delete('pods', 'app/sleep');
  await until(() => source.getPod('app', 'sleep'), (p) => p === undefined, 'pod deleted');
  t.true(changes.some((c) => c.pods.some((p) => p.before?.name === 'sleep' && p.after === undefined)));
  // A pod that finishes (Succeeded) releases its IP: it leaves the directory like a deleted one.
  api.put('pods', pod('app', 'job', NODE, '10.1.0.9'));
  await until(() => source.getPod('app', 'job'), (p) => p !== undefined, 'job added');
  api.put('pods', { ...pod('app', 'job', NODE, '10.1.0.9'), status: { phase: 'Succeeded' } });
  await until(() => source.getPod('app', 'job'), (p) => p === undefined, 'job terminated');
});

test('a bookmark advances the resourceVersion the next watch resumes from', async (t) => {
  const { api, source } = await setup(t);
  await until(() => api.openWatches('namespaces'), (n) => n === 1, 'namespace watch');
  api.put('pods', pod('other', 'x', 'node-z', '10.9.0.1')); // moves the global resourceVersion on, unseen by the namespace watch
  const rv = api.resourceVersion;
  api.sendBookmarks();
  await until(() => source.stats().namespaces?.bookmarks ?? 0, (n) => n >= 1, 'bookmark received');
  const before = api.requests.length;
  await api.restart();
  const resumed = await until(() => api.requests.slice(before).find((r) => r.path === '/api/v1/namespaces' && r.query.watch === 'true'), (r) => r !== undefined, 'namespace re-watch');
  t.is(resumed?.query.resourceVersion, rv, 'the watch resumed from the bookmark, without a relist');
  t.false(api.requests.slice(before).some((r) => r.path === '/api/v1/namespaces' && r.query.watch === undefined), 'no relist');
});

test('410 Gone (as a watch ERROR event and as an HTTP status) makes the source relist, and it sees changes made meanwhile', async (t) => {
  const { api, source } = await setup(t);
  await until(() => api.openWatches(), (n) => n === 5, 'watches');
  const lists = (): number => api.requests.filter((r) => r.path === '/api/v1/namespaces' && r.query.watch === undefined).length;
  t.is(lists(), 1);
  api.expireWatches();
  await until(lists, (n) => n === 2, 'relist after ERROR 410');
  api.failNextWatches = { status: 410, count: 5 };
  api.compact();
  await api.restart();
  api.put('namespaces', { metadata: { name: 'late' } });
  await until(() => source.getNamespace('late'), (n) => n !== undefined, 'late namespace');
  t.true(lists() >= 3, 'relisted after HTTP 410');
  t.true(source.stats().namespaces?.expired !== undefined && (source.stats().namespaces?.expired ?? 0) >= 1);
});

test('server restart: the source reconnects with backoff and catches up from its resourceVersion', async (t) => {
  const { api, source, lines } = await setup(t);
  await until(() => api.openWatches(), (n) => n === 5, 'watches');
  await api.stop();
  api.put('pods', pod('app', 'while-down', NODE, '10.1.0.8'));
  const failures = (): Record<string, unknown>[] => lines.filter((l) => l.msg === 'list/watch failed; retrying' && l.resource === 'namespaces');
  await until(() => failures().length, (n) => n >= 3, 'failed reconnects');
  const delays = failures().map((l) => Number(l.retryInMs));
  t.true(delays.length >= 2 && (delays.at(-1) ?? 0) > (delays[0] ?? 0), `delays grow: ${delays.join(',')}`);
  await api.start();
  await until(() => source.getPod('app', 'while-down'), (p) => p !== undefined, 'pod made while the server was down');
  t.is(source.getPod('app', 'while-down')?.podIPs[0], '10.1.0.8');
});

test('a malformed AuthorizationPolicy is rejected naming the object and field; the previous version stays', async (t) => {
  const good = { action: 'DENY', rules: [{ to: [{ operation: { ports: ['9090'] } }] }] };
  const { api, source, lines } = await setup(t, { seed: (api) => void api.put('authorizationpolicies', authz('app', 'deny-9090', good)) });
  await until(() => api.openWatches(), (n) => n === 5, 'watches');
  api.put('authorizationpolicies', authz('app', 'deny-9090', { action: 'DENY', rules: {} }));
  const err = await until(() => lines.find((l) => l.msg === 'rejected malformed object; the previous version stays in force'), (l) => l !== undefined, 'rejection');
  t.is(err?.object, 'app/deny-9090');
  t.regex(String(err?.error), /AuthorizationPolicy app\/deny-9090: spec\.rules must be a list/);
  t.is(source.authorizationPolicies()[0]?.action, 'DENY');
  t.is(source.authorizationPolicies().length, 1);
  // A relist keeps it too.
  api.expireWatches();
  await until(() => source.stats().authorizationPolicies?.lists ?? 0, (n) => n >= 2, 'relist');
  t.is(source.authorizationPolicies().length, 1);
});

test('missing Istio CRDs (404) count as no policies instead of blocking start', async (t) => {
  const api = await new FakeKubeApi({ withoutCrds: true }).start();
  t.teardown(() => api.stop());
  const dir = mkdtempSync(join(tmpdir(), 'kube-source-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'kubeconfig'), kubeconfigFor(api));
  const client = new KubeClient({ kubeconfig: join(dir, 'kubeconfig') });
  const source = new KubernetesWorkloadSource({ client, nodeName: NODE, log: pino({ level: 'silent' }), backoff: FAST });
  t.teardown(() => source.stop());
  await source.start();
  t.deepEqual(source.authorizationPolicies(), []);
});

test('in-cluster config: HTTPS with the service account CA and token from a directory', async (t) => {
  const tls = makeTestTls();
  t.teardown(() => tls.cleanup());
  const api = await new FakeKubeApi({ tls, token: 'sa-token' }).start();
  t.teardown(() => api.stop());
  api.put('namespaces', { metadata: { name: 'kube-system' } });
  const sa = mkdtempSync(join(tmpdir(), 'kube-sa-'));
  t.teardown(() => rmSync(sa, { recursive: true, force: true }));
  writeFileSync(join(sa, 'token'), 'sa-token');
  writeFileSync(join(sa, 'ca.crt'), tls.ca);
  const port = new URL(api.url).port;
  const client = new KubeClient({ inCluster: { env: { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: port }, dir: sa } });
  t.teardown(() => client.close());
  await client.init();
  t.is(client.server, `https://127.0.0.1:${port}`);
  const list = await client.getJson('/api/v1/namespaces', {});
  t.is((list.items as { metadata: { name: string } }[])[0]?.metadata.name, 'kube-system');
  t.is(api.requests.at(-1)?.authorization, 'Bearer sa-token');

  await t.throwsAsync(loadKubeConfig({ inCluster: { env: {}, dir: sa } }), { instanceOf: KubeApiError, message: /KUBERNETES_SERVICE_HOST/ });
  await t.throwsAsync(loadKubeConfig({ inCluster: { env: { KUBERNETES_SERVICE_HOST: '127.0.0.1' }, dir: join(sa, 'nope') } }), { instanceOf: KubeApiError, message: /cannot read .*token/ });
  // A CA that did not sign the server's certificate is refused.
  const other = makeTestTls();
  t.teardown(() => other.cleanup());
  writeFileSync(join(sa, 'ca.crt'), other.ca);
  const wrong = new KubeClient({ inCluster: { env: { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: port }, dir: sa } });
  t.teardown(() => wrong.close());
  await t.throwsAsync(wrong.getJson('/api/v1/namespaces', {}), { instanceOf: KubeApiError, message: /reachable/ });
});

test('kubeconfig: HTTPS with a CA file and a bearer token; a bad token is a 401 KubeApiError; a missing file is clear', async (t) => {
  const tls = makeTestTls();
  t.teardown(() => tls.cleanup());
  const api = await new FakeKubeApi({ tls, token: 'kc-token' }).start();
  t.teardown(() => api.stop());
  const dir = mkdtempSync(join(tmpdir(), 'kube-kc-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'good'), kubeconfigFor(api, { token: 'kc-token', caFile: tls.caFile }));
  writeFileSync(join(dir, 'bad'), kubeconfigFor(api, { token: 'wrong', caFile: tls.caFile }));
  const good = new KubeClient({ kubeconfig: join(dir, 'good') });
  t.teardown(() => good.close());
  t.is((await good.getJson('/api/v1/pods', {})).kind, 'PodList');
  const bad = new KubeClient({ kubeconfig: join(dir, 'bad') });
  t.teardown(() => bad.close());
  const err = await t.throwsAsync(bad.getJson('/api/v1/pods', {}), { instanceOf: KubeApiError });
  t.is(err?.status, 401);
  await t.throwsAsync(new KubeClient({ kubeconfig: join(dir, 'missing') }).init(), { instanceOf: KubeApiError, message: /cannot load kubeconfig .*missing/ });
});

test('reportCapture patches the ambient.istio.io/redirection annotation through pods/status, and removes it', async (t) => {
  const { api, source } = await setup(t, { seed: (api) => void api.put('pods', pod('app', 'sleep', NODE, '10.1.0.5')) });
  const ref = { namespace: 'app', name: 'sleep', uid: 'uid-sleep' };
  source.reportCapture(ref, 'enabled');
  await until(() => source.getPod('app', 'sleep')?.annotations[REDIRECTION_ANNOTATION], (v) => v === 'enabled', 'annotation in the informer');
  const patch = api.requests.find((r) => r.method === 'PATCH');
  t.is(patch?.path, '/api/v1/namespaces/app/pods/sleep/status');
  t.is(patch?.contentType, 'application/merge-patch+json');
  t.is((api.get('pods', 'app/sleep')?.metadata.annotations as Record<string, string>)[REDIRECTION_ANNOTATION], 'enabled');
  source.reportCapture(ref, undefined);
  await until(() => source.getPod('app', 'sleep')?.annotations[REDIRECTION_ANNOTATION], (v) => v === undefined, 'annotation removed');
  const patches = api.requests.filter((r) => r.method === 'PATCH').length;
  source.reportCapture(ref, undefined); // already in that state: no request
  await new Promise((r) => setTimeout(r, 50));
  t.is(api.requests.filter((r) => r.method === 'PATCH').length, patches);
});

test('a failed annotation patch is retried until it lands', async (t) => {
  const { api, source, lines } = await setup(t, { seed: (api) => void api.put('pods', pod('app', 'sleep', NODE, '10.1.0.5')) });
  await until(() => api.openWatches(), (n) => n === 5, 'watches');
  await api.stop();
  source.reportCapture({ namespace: 'app', name: 'sleep', uid: 'uid-sleep' }, 'pending');
  await until(() => lines.filter((l) => l.msg === 'marking the pod capture state failed; retrying').length, (n) => n >= 2, 'retries');
  await api.start();
  await until(() => (api.get('pods', 'app/sleep')?.metadata.annotations as Record<string, string> | undefined)?.[REDIRECTION_ANNOTATION], (v) => v === 'pending', 'annotation after restart');
  t.pass();
});

test('pure helpers: backoff grows to its cap, watch lines parse, terminal pods are absent, merge patch', (t) => {
  const p = { initialMs: 100, maxMs: 1000 };
  t.deepEqual([0, 1, 2, 3, 4, 10].map((a) => backoffDelay(a, p, 1)), [100, 200, 400, 800, 1000, 1000]);
  t.is(backoffDelay(0, p, 0), 80);
  t.deepEqual(parseWatchEvent('{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"7"}}}'), { type: 'BOOKMARK', object: { metadata: { resourceVersion: '7' } } });
  t.throws(() => parseWatchEvent('{"type":"NOPE","object":{}}'), { instanceOf: KubeApiError });
  t.is(podFromApi({ ...pod('a', 'b', NODE, '10.0.0.1'), status: { phase: 'Failed' } }), undefined);
  t.deepEqual(podFromApi(pod('a', 'b', NODE, '10.0.0.1'))?.podIPs, ['10.0.0.1']);
  t.deepEqual(redirectionPatch({ namespace: 'a', name: 'b', uid: 'u' }, undefined), { metadata: { uid: 'u', annotations: { [REDIRECTION_ANNOTATION]: null } } });
  t.deepEqual(mergePatch({ a: { b: 1, c: 2 } }, { a: { b: null, d: 3 } }), { a: { c: 2, d: 3 } });
});
