// The kubernetes workload source against a fake API server that speaks list/watch: initial list, watch events, bookmarks,
// 410 relists, reconnects, malformed CRDs and Services, Services/EndpointSlices, start gating, kubeconfigs, annotations.
// Past 500 lines on purpose: every case drives the same fake API server and source helpers defined at the top.
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { KubeApiError, KubeClient, loadKubeAccess, parseWatchEvent } from '../../agent/src/workload/kube/client.js';
import { REDIRECTION_ANNOTATION, redirectionPatch } from '../../agent/src/workload/kube/pod-annotator.js';
import { backoffDelay } from '../../agent/src/backoff.js';
import { kubeBackoff } from '../../agent/src/workload/kube/reflector.js';
import { KubernetesWorkloadSource, podFromApi } from '../../agent/src/workload/kube-source.js';
import type { WorkloadChange } from '../../agent/src/workload/source.js';
import { FakeKubeApi, pollUntil, kubeconfigFor, makeTestTls, mergePatch } from '../fixtures/fake-kube-api.js';

const NODE = 'node-a';
const FAST = { initialMs: 20, maxMs: 200 };
/** The source's informers (the keys of stats()), one list/watch each. */
const INFORMERS = ['podsOnNode', 'pods', 'namespaces', 'services', 'endpointSlices', 'authorizationPolicies', 'peerAuthentications'];

/** A logger whose records the test can read. */
function captureLog(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines };
}

const until = pollUntil;

/** Every informer has listed and has its watch open. */
const allWatching = (api: FakeKubeApi): Promise<number> => until(() => api.openWatches(), (n) => n === INFORMERS.length, `${INFORMERS.length} watches`);

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
  await allWatching(api);
  const podLists = api.requests.filter((r) => r.path === '/api/v1/pods' && r.query.watch === undefined);
  t.deepEqual(podLists.map((r) => r.query.fieldSelector ?? '').sort(), ['', `spec.nodeName=${NODE}`]);
  const watches = api.requests.filter((r) => r.query.watch === 'true');
  t.true(watches.every((w) => w.query.allowWatchBookmarks === 'true' && w.query.resourceVersion === String(Number(w.query.resourceVersion)) && w.authorization === 'Bearer secret-token'));
});

test('watch events: added, modified and deleted pods and namespace labels reach listeners', async (t) => {
  const { api, source, changes } = await setup(t);
  await allWatching(api);
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
  await allWatching(api);
  const lists = (): number => api.requests.filter((r) => r.path === '/api/v1/namespaces' && r.query.watch === undefined).length;
  t.is(lists(), 1);
  api.expireWatches();
  await until(lists, (n) => n === 2, 'relist after ERROR 410');
  // The namespace informer's next watch is answered 410 (named: another informer, relisting and watching again
  // first, could otherwise take every injected failure).
  api.failNextWatches = { status: 410, count: 1, resource: 'namespaces' };
  api.compact();
  await api.restart();
  api.put('namespaces', { metadata: { name: 'late' } });
  await until(() => source.getNamespace('late'), (n) => n !== undefined, 'late namespace');
  t.true(lists() >= 3, 'relisted after HTTP 410');
  t.true(source.stats().namespaces?.expired !== undefined && (source.stats().namespaces?.expired ?? 0) >= 1);
});

test('server restart: the source reconnects with backoff and catches up from its resourceVersion', async (t) => {
  const { api, source, lines } = await setup(t);
  await allWatching(api);
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
  await allWatching(api);
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

test('fail closed: a new malformed AuthorizationPolicy or PeerAuthentication stands as a placeholder until fixed or deleted', async (t) => {
  const typo = { selector: { matchLabels: { app: 'productpage' } }, action: 'ALLOW', rules: [{ from: [{ source: { principal: ['cluster.local/ns/app/sa/sleep'] } }] }] };
  const fixed = { ...typo, rules: [{ from: [{ source: { principals: ['cluster.local/ns/app/sa/sleep'] } }] }] };
  const { api, source, lines, changes } = await setup(t, { seed: (api) => void api.put('authorizationpolicies', authz('app', 'viewer', typo)) });
  await allWatching(api);
  // From the initial list: a placeholder denying everything in the policy's scope.
  t.like(source.authorizationPolicies(), [{ namespace: 'app', name: 'viewer', action: 'DENY', matchLabels: { app: 'productpage' } }]);
  t.regex(String(source.authorizationPolicies()[0]?.malformed), /^spec\.rules\[0\]\.from\[0\]\.source\.principal is not a known field/);
  const logged = lines.find((l) => l.object === 'app/viewer' && l.placeholder === true);
  t.is(logged?.level, 50);
  t.regex(String(logged?.msg), /rejected malformed policy; with no previous good version it fails closed/);
  t.regex(String(logged?.error), /AuthorizationPolicy app\/viewer: spec\.rules\[0\]\.from\[0\]\.source\.principal/);
  // A relist keeps the placeholder (still no good version).
  api.expireWatches();
  await until(() => source.stats().authorizationPolicies?.lists ?? 0, (n) => n >= 2, 'relist');
  t.truthy(source.authorizationPolicies()[0]?.malformed);
  // Fixed: the real policy replaces it, and listeners hear of a policy change.
  const before = changes.length;
  api.put('authorizationpolicies', authz('app', 'viewer', fixed));
  await until(() => source.authorizationPolicies()[0]?.action, (a) => a === 'ALLOW', 'the fixed policy');
  t.is(source.authorizationPolicies()[0]?.malformed, undefined);
  t.true(changes.slice(before).some((c) => c.policies));
  // Broken again: the previous good version stays in force.
  api.put('authorizationpolicies', authz('app', 'viewer', typo));
  await until(() => lines.filter((l) => l.object === 'app/viewer' && l.keptPrevious === true).length, (n) => n >= 1, 'kept previous');
  t.like(source.authorizationPolicies(), [{ action: 'ALLOW' }]);
  t.is(source.authorizationPolicies()[0]?.malformed, undefined);
  // Deleted, then created broken: a placeholder again; deleted: gone.
  api.delete('authorizationpolicies', 'app/viewer');
  await until(() => source.authorizationPolicies().length, (n) => n === 0, 'deleted');
  api.put('authorizationpolicies', authz('app', 'viewer', { rules: {} }));
  await until(() => source.authorizationPolicies()[0]?.malformed, (m) => m !== undefined, 'placeholder again');
  t.like(source.authorizationPolicies(), [{ action: 'DENY', matchLabels: undefined, malformed: 'spec.rules must be a list' }]);
  api.delete('authorizationpolicies', 'app/viewer');
  await until(() => source.authorizationPolicies().length, (n) => n === 0, 'deleted again');

  // A malformed PeerAuthentication: STRICT in its scope until fixed.
  api.put('peerauthentications', authz('app', 'pa', { mtls: { mode: 'STRICTER' } }));
  await until(() => source.peerAuthentications().length, (n) => n === 1, 'PeerAuthentication placeholder');
  t.like(source.peerAuthentications(), [{ namespace: 'app', name: 'pa', mode: 'STRICT', matchLabels: undefined }]);
  t.regex(String(source.peerAuthentications()[0]?.malformed), /^spec\.mtls\.mode must be one of/);
  api.put('peerauthentications', authz('app', 'pa', { mtls: { mode: 'PERMISSIVE' } }));
  await until(() => source.peerAuthentications()[0]?.mode, (m) => m === 'PERMISSIVE', 'fixed PeerAuthentication');
  t.is(source.peerAuthentications()[0]?.malformed, undefined);
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

const SERVICES_PATH = '/api/v1/services';
const SLICES_PATH = '/apis/discovery.k8s.io/v1/endpointslices';

const svc = (ns: string, name: string, spec: Record<string, unknown>): Record<string, unknown> => ({ metadata: { name, namespace: ns }, spec });
/** A ClusterIP Service as the API returns it (clusterIP and clusterIPs both set). */
const web = (port = 80, name = 'web', vip = '10.96.0.20'): Record<string, unknown> =>
  svc('app', name, { clusterIP: vip, clusterIPs: [vip], selector: { app: name }, ports: [{ name: 'http', port, targetPort: 'http', protocol: 'TCP' }] });
const slice = (name: string, service: string, ips: string[], port = 8080): Record<string, unknown> => ({
  metadata: { name, namespace: 'app', labels: { 'kubernetes.io/service-name': service } },
  addressType: 'IPv4',
  endpoints: ips.map((ip, i) => ({ addresses: [ip], conditions: { ready: true }, nodeName: NODE, targetRef: { kind: 'Pod', namespace: 'app', name: `${service}-${i}` } })),
  ports: [{ name: 'http', port, protocol: 'TCP' }],
});
/** The one change a Service or EndpointSlice update emits. */
const SERVICES_CHANGE: WorkloadChange = { pods: [], namespaces: [], policies: false, services: true };
const names = (xs: { name: string }[]): string[] => xs.map((x) => x.name).sort();

test('initial list: Services and EndpointSlices of every namespace, visible through services() and endpointSlices() once start() resolves', async (t) => {
  const { api, source, changes } = await setup(t, {
    seed: (api) => {
      api.put('services', web());
      api.put('services', svc('db', 'postgres', { clusterIP: 'None', clusterIPs: ['None'], selector: { app: 'pg' }, ports: [{ port: 5432 }] }));
      api.put('endpointslices', slice('web-abc', 'web', ['10.1.0.5', '10.2.0.7']));
    },
  });
  t.deepEqual(names(source.services()), ['postgres', 'web']);
  t.like(source.services().find((s) => s.name === 'web'), {
    namespace: 'app', type: 'ClusterIP', clusterIPs: ['10.96.0.20'], headless: false, selector: { app: 'web' },
    ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }], uid: 'uid-services-app-web',
  });
  t.like(source.services().find((s) => s.name === 'postgres'), { namespace: 'db', headless: true, clusterIPs: [] });
  t.deepEqual(source.endpointSlices(), [{
    namespace: 'app', name: 'web-abc', serviceName: 'web', addressType: 'IPv4',
    endpoints: [
      { addresses: ['10.1.0.5'], ready: true, serving: true, terminating: false, nodeName: NODE, targetRef: 'Pod/app/web-0' },
      { addresses: ['10.2.0.7'], ready: true, serving: true, terminating: false, nodeName: NODE, targetRef: 'Pod/app/web-1' },
    ],
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
  }]);
  // The initial lists told the listener, as services (and nothing else).
  t.deepEqual(changes.filter((c) => c.services), [SERVICES_CHANGE, SERVICES_CHANGE]);
  // One cluster-wide list each (no selector), then a watch from the list's resourceVersion with bookmarks.
  for (const path of [SERVICES_PATH, SLICES_PATH]) {
    const lists = api.requests.filter((r) => r.path === path && r.query.watch === undefined);
    t.deepEqual(lists.map((r) => r.query), [{ resourceVersion: '0' }], `${path}: served from the watch cache`);
  }
  await allWatching(api);
  t.is(api.openWatches('services'), 1);
  t.is(api.openWatches('endpointslices'), 1);
  for (const path of [SERVICES_PATH, SLICES_PATH]) {
    const w = api.requests.find((r) => r.path === path && r.query.watch === 'true');
    t.like(w?.query, { allowWatchBookmarks: 'true', resourceVersion: api.resourceVersion }, path);
    t.is(w?.query.fieldSelector, undefined);
  }
});

test('stats() has one entry per informer, services and endpointSlices included', async (t) => {
  const { api, source } = await setup(t, { seed: (api) => void api.put('services', web()) });
  t.deepEqual(Object.keys(source.stats()), INFORMERS);
  t.like(source.stats().services, { lists: 1, errors: 0, expired: 0 });
  t.like(source.stats().endpointSlices, { lists: 1, errors: 0, expired: 0 });
  await allWatching(api);
  api.put('endpointslices', slice('web-abc', 'web', ['10.1.0.5']));
  await until(() => source.stats().endpointSlices?.events ?? 0, (n) => n === 1, 'slice event counted');
  t.is(source.stats().services?.events, 0);
  api.sendBookmarks();
  await until(() => [source.stats().services?.bookmarks ?? 0, source.stats().endpointSlices?.bookmarks ?? 0], (v) => v.every((n) => n >= 1), 'bookmarks counted');
  t.true((source.stats().services?.watches ?? 0) >= 1 && (source.stats().endpointSlices?.watches ?? 0) >= 1);
});

test('watch events: added, modified and deleted Services and EndpointSlices are applied, each emitting services: true only', async (t) => {
  const { api, source, changes } = await setup(t);
  await allWatching(api);
  const step = async (what: string, act: () => void, done: () => boolean): Promise<void> => {
    const from = changes.length;
    act();
    await until(done, (v) => v, what);
    t.deepEqual(changes.slice(from), [SERVICES_CHANGE], what);
  };
  const port = (): number | undefined => source.services().find((s) => s.name === 'web')?.ports[0]?.port;
  await step('Service ADDED', () => void api.put('services', web(80)), () => port() === 80);
  await step('Service MODIFIED', () => void api.put('services', web(8080)), () => port() === 8080);
  t.is(source.services().length, 1);
  await step('Service DELETED', () => api.delete('services', 'app/web'), () => source.services().length === 0);

  const ips = (): string[] | undefined => source.endpointSlices().find((s) => s.name === 'web-abc')?.endpoints.flatMap((e) => e.addresses);
  await step('EndpointSlice ADDED', () => void api.put('endpointslices', slice('web-abc', 'web', ['10.1.0.5'])), () => ips()?.join() === '10.1.0.5');
  await step('EndpointSlice MODIFIED', () => void api.put('endpointslices', slice('web-abc', 'web', ['10.1.0.5', '10.1.0.6'])), () => ips()?.join() === '10.1.0.5,10.1.0.6');
  t.is(source.endpointSlices().length, 1);
  await step('EndpointSlice DELETED', () => api.delete('endpointslices', 'app/web-abc'), () => source.endpointSlices().length === 0);

  // A MODIFIED that changes nothing the agent reads (a new resourceVersion, a status) emits nothing: the next change is
  // the only one seen.
  await step('Service ADDED again', () => void api.put('services', web(80)), () => port() === 80);
  await step('no-op MODIFIED, then another Service', () => {
    api.put('services', { ...web(80), status: { loadBalancer: {} } });
    api.put('services', web(80, 'other', '10.96.0.21'));
  }, () => source.services().length === 2);
  t.like(source.stats().services, { events: 6 });
  t.like(source.stats().endpointSlices, { events: 3 });
});

test('410 Gone relists Services and EndpointSlices and reconciles what changed while the watch was down', async (t) => {
  const { api, source, changes } = await setup(t, {
    seed: (api) => {
      for (const n of ['keep', 'gone']) api.put('services', web(80, n, n === 'keep' ? '10.96.0.30' : '10.96.0.31'));
      api.put('endpointslices', slice('keep-1', 'keep', ['10.1.0.5']));
      api.put('endpointslices', slice('gone-1', 'gone', ['10.1.0.6']));
    },
  });
  await allWatching(api);
  const lists = (): number[] => [source.stats().services?.lists ?? 0, source.stats().endpointSlices?.lists ?? 0];
  // A watch ERROR event with code 410: both relist (nothing changed, so nothing is emitted).
  let from = changes.length;
  api.expireWatches();
  await until(lists, (v) => v.every((n) => n === 2), 'relist after ERROR 410');
  await allWatching(api);
  t.deepEqual(changes.slice(from).filter((c) => c.services), []);
  // Changes made while the API server is down, with its history compacted: only a relist can see them.
  await api.stop();
  api.delete('services', 'app/gone');
  api.put('services', web(80, 'new', '10.96.0.32'));
  api.put('services', web(9090, 'keep', '10.96.0.30'));
  api.delete('endpointslices', 'app/gone-1');
  api.put('endpointslices', slice('new-1', 'new', ['10.1.0.7']));
  api.compact();
  api.failNextWatches = { status: 410, count: INFORMERS.length };
  from = changes.length;
  await api.start();
  await until(() => names(source.services()).join(), (v) => v === 'keep,new', 'Services reconciled');
  await until(() => names(source.endpointSlices()).join(), (v) => v === 'keep-1,new-1', 'EndpointSlices reconciled');
  t.is(source.services().find((s) => s.name === 'keep')?.ports[0]?.port, 9090);
  t.deepEqual(source.endpointSlices().find((s) => s.name === 'new-1')?.endpoints[0]?.addresses, ['10.1.0.7']);
  t.true(lists().every((n) => n >= 3), `relisted after HTTP 410: ${lists().join()}`);
  t.true((source.stats().services?.expired ?? 0) >= 2 && (source.stats().endpointSlices?.expired ?? 0) >= 2);
  const emitted = changes.slice(from).filter((c) => c.services);
  t.deepEqual(emitted, [SERVICES_CHANGE, SERVICES_CHANGE], 'one change per relist that found differences');
  await allWatching(api);
});

test('a malformed Service or EndpointSlice is rejected naming the object and field; the previous version stays in force', async (t) => {
  const { api, source, changes, lines } = await setup(t, {
    seed: (api) => {
      api.put('services', web(80));
      api.put('endpointslices', slice('web-abc', 'web', ['10.1.0.5']));
    },
  });
  await allWatching(api);
  const from = changes.length;
  const rejections = (): Record<string, unknown>[] => lines.filter((l) => l.msg === 'rejected malformed object; the previous version stays in force');
  const rejected = async (n: number): Promise<Record<string, unknown> | undefined> => (await until(rejections, (r) => r.length >= n, `rejection ${n}`))[n - 1];

  api.put('services', svc('app', 'web', { clusterIP: '10.96.0.20', clusterIPs: ['10.96.0.20'], ports: [{ name: 'http', port: 0 }] }));
  t.like(await rejected(1), { level: 50, resource: 'services', path: SERVICES_PATH, object: 'app/web', keptPrevious: true });
  t.regex(String(rejections()[0]?.error), /Service app\/web: spec\.ports\[0\]\.port must be a port number 1-65535, got 0/);

  api.put('services', svc('app', 'web', { clusterIP: 'not-an-ip', clusterIPs: ['not-an-ip'], ports: [{ port: 80 }] }));
  t.like(await rejected(2), { resource: 'services', object: 'app/web', keptPrevious: true });
  t.regex(String(rejections()[1]?.error), /Service app\/web: spec\.clusterIPs\[0\] must be an IP address, got "not-an-ip"/);

  api.put('endpointslices', slice('web-abc', 'web', ['fd00::5']));
  t.like(await rejected(3), { resource: 'endpointslices', path: SLICES_PATH, object: 'app/web-abc', keptPrevious: true });
  t.regex(String(rejections()[2]?.error), /EndpointSlice app\/web-abc: endpoints\[0\]\.addresses\[0\] fd00::5 is not an IPv4 address/);

  // One never seen in a good version is simply absent.
  api.put('services', svc('app', 'broken', { type: 'Bogus' }));
  t.like(await rejected(4), { resource: 'services', object: 'app/broken', keptPrevious: false });
  t.regex(String(rejections()[3]?.error), /Service app\/broken: spec\.type must be one of/);

  t.deepEqual(names(source.services()), ['web']);
  t.like(source.services()[0], { clusterIPs: ['10.96.0.20'], ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }] });
  t.deepEqual(source.endpointSlices()[0]?.endpoints[0]?.addresses, ['10.1.0.5']);
  t.deepEqual(changes.slice(from), [], 'a rejected object changes nothing, so nothing is emitted');

  // A relist keeps the previous versions too (and says so again).
  api.expireWatches();
  await until(() => [source.stats().services?.lists ?? 0, source.stats().endpointSlices?.lists ?? 0], (v) => v.every((n) => n >= 2), 'relist');
  await allWatching(api);
  t.true(rejections().length >= 7, 'the three still-malformed objects are rejected again by the relist');
  t.deepEqual(names(source.services()), ['web']);
  t.is(source.services()[0]?.ports[0]?.port, 80);
  t.deepEqual(source.endpointSlices()[0]?.endpoints[0]?.addresses, ['10.1.0.5']);
  t.deepEqual(changes.slice(from), []);

  // A good version replaces the kept one.
  api.put('services', web(8080));
  await until(() => source.services()[0]?.ports[0]?.port, (p) => p === 8080, 'fixed Service applied');
  t.deepEqual(changes.slice(from), [SERVICES_CHANGE]);
});

/** A client whose lists of some paths are refused (403, as when the ClusterRole lacks the rule) until allowed. */
class RefusingClient extends KubeClient {
  readonly refused = new Set<string>();
  override async getJson(...args: Parameters<KubeClient['getJson']>): ReturnType<KubeClient['getJson']> {
    if (this.refused.has(args[0])) throw new KubeApiError(`GET ${args[0]}: HTTP 403: forbidden`, 403);
    return super.getJson(...args);
  }

  override async getList(...args: Parameters<KubeClient['getList']>): ReturnType<KubeClient['getList']> {
    if (this.refused.has(args[0])) throw new KubeApiError(`GET ${args[0]}: HTTP 403: forbidden`, 403);
    return super.getList(...args);
  }
}

test('start() (the agent\'s readiness) waits until Services and EndpointSlices listed once, retrying a refused list', async (t) => {
  const api = await new FakeKubeApi().start();
  t.teardown(() => api.stop());
  api.put('services', web());
  api.put('endpointslices', slice('web-abc', 'web', ['10.1.0.5']));
  const dir = mkdtempSync(join(tmpdir(), 'kube-source-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'kubeconfig'), kubeconfigFor(api));
  const client = new RefusingClient({ kubeconfig: join(dir, 'kubeconfig') });
  client.refused.add(SERVICES_PATH);
  client.refused.add(SLICES_PATH);
  const { log, lines } = captureLog();
  const source = new KubernetesWorkloadSource({ client, nodeName: NODE, log, backoff: FAST });
  t.teardown(() => source.stop());
  let started = false;
  const starting = source.start().then(() => void (started = true));
  const retries = (resource: string): number => lines.filter((l) => l.msg === 'list/watch failed; retrying' && l.resource === resource && /403/.test(String(l.error))).length;
  await until(() => api.openWatches(), (n) => n === INFORMERS.length - 2, 'every other informer watching');
  await until(() => Math.min(retries('services'), retries('endpointslices')), (n) => n >= 2, 'refused lists retried');
  t.false(started, 'not started without Services and EndpointSlices');
  t.deepEqual(source.services(), []);

  client.refused.delete(SERVICES_PATH);
  await until(() => api.openWatches('services'), (n) => n === 1, 'services watch');
  t.is(source.services().length, 1);
  await new Promise((r) => setTimeout(r, 300)); // several EndpointSlice retries
  t.false(started, 'still not started without EndpointSlices');
  t.false(lines.some((l) => l.msg === 'kubernetes informers synced'));

  client.refused.delete(SLICES_PATH);
  await starting;
  t.true(started);
  t.is(source.endpointSlices().length, 1);
  t.like(lines.find((l) => l.msg === 'kubernetes informers synced'), { services: 1, endpointSlices: 1 });
  t.true((source.stats().endpointSlices?.errors ?? 0) >= 2);
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

  await t.throwsAsync(loadKubeAccess({ inCluster: { env: {}, dir: sa } }), { instanceOf: KubeApiError, message: /KUBERNETES_SERVICE_HOST/ });
  await t.throwsAsync(loadKubeAccess({ inCluster: { env: { KUBERNETES_SERVICE_HOST: '127.0.0.1' }, dir: join(sa, 'nope') } }), { instanceOf: KubeApiError, message: /cannot read .*token/ });
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
  await allWatching(api);
  await api.stop();
  source.reportCapture({ namespace: 'app', name: 'sleep', uid: 'uid-sleep' }, 'pending');
  await until(() => lines.filter((l) => l.msg === 'marking the pod capture state failed; retrying').length, (n) => n >= 2, 'retries');
  await api.start();
  await until(() => (api.get('pods', 'app/sleep')?.metadata.annotations as Record<string, string> | undefined)?.[REDIRECTION_ANNOTATION], (v) => v === 'pending', 'annotation after restart');
  t.pass();
});

test('pure helpers: backoff grows to its cap, watch lines parse, terminal pods are absent, merge patch', (t) => {
  const p = kubeBackoff({ initialMs: 100, maxMs: 1000 });
  t.deepEqual([0, 1, 2, 3, 4, 10].map((a) => backoffDelay(a, p, () => 1)), [100, 200, 400, 800, 1000, 1000]);
  t.is(backoffDelay(0, p, () => 0), 80);
  t.deepEqual(parseWatchEvent('{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"7"}}}'), { type: 'BOOKMARK', object: { metadata: { resourceVersion: '7' } } });
  t.throws(() => parseWatchEvent('{"type":"NOPE","object":{}}'), { instanceOf: KubeApiError });
  t.is(podFromApi({ ...pod('a', 'b', NODE, '10.0.0.1'), status: { phase: 'Failed' } }), undefined);
  t.deepEqual(podFromApi(pod('a', 'b', NODE, '10.0.0.1'))?.podIPs, ['10.0.0.1']);
  t.deepEqual(redirectionPatch({ namespace: 'a', name: 'b', uid: 'u' }, undefined), { metadata: { uid: 'u', annotations: { [REDIRECTION_ANNOTATION]: null } } });
  t.deepEqual(mergePatch({ a: { b: 1, c: 2 } }, { a: { b: null, d: 3 } }), { a: { c: 2, d: 3 } });
});
