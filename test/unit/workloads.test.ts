// Unit tests for converting Kubernetes-shaped YAML into workload objects, and the files source's live updates.
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { FilesWorkloadSource, parseWorkloadFile, parseWorkloadFileEntries, resolveFileEntries } from '../../agent/src/workload/files-source.js';
import { MALFORMED_POLICY_MSG } from '../../agent/src/policy/malformed.js';

const quiet = pino({ level: 'silent' });

test('parses Pods and Namespaces from a multi-document file and ignores other kinds', (t) => {
  const objs = parseWorkloadFile('a.yaml', `
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, uid: u1, labels: {app: web}}
spec: {nodeName: n1, serviceAccountName: web-sa}
status: {podIP: 10.0.0.5, podIPs: [{ip: 10.0.0.5}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
`);
  t.is(objs.length, 2);
  const p = objs.find((o) => o.kind === 'Pod');
  t.like(p, { kind: 'Pod', pod: { name: 'web', namespace: 'app', uid: 'u1', serviceAccount: 'web-sa', nodeName: 'n1', podIPs: ['10.0.0.5'] } });
});

test('a List of items is accepted', (t) => {
  const objs = parseWorkloadFile('l.yaml', 'kind: List\nitems:\n- {kind: Namespace, metadata: {name: a}}\n- {kind: Namespace, metadata: {name: b}}\n');
  t.is(objs.length, 2);
});

test('defaults: namespace "default", service account "default"', (t) => {
  const [o] = parseWorkloadFile('p.yaml', 'kind: Pod\nmetadata: {name: p}\n');
  t.like(o, { pod: { namespace: 'default', serviceAccount: 'default', hostNetwork: false } });
});

test('malformed objects are rejected with the file, object and field', (t) => {
  t.throws(() => parseWorkloadFile('bad.yaml', 'kind: Pod\nmetadata: {namespace: x}\n'), { message: /bad\.yaml: Pod\.metadata\.name/ });
  t.throws(() => parseWorkloadFile('bad.yaml', 'kind: Pod\nmetadata: {name: p, labels: {a: [1]}}\n'), { message: /bad\.yaml: .*labels\.a must be a string/ });
  t.throws(() => parseWorkloadFile('bad.yaml', 'kind: Pod\nmetadata: [\n'), { message: /bad\.yaml/ });
});

test('files source picks up new, changed and removed objects, and keeps the last good state of a broken file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'amb-wl-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'ns.yaml'), 'kind: Namespace\nmetadata: {name: app}\n');
  const src = new FilesWorkloadSource(dir, quiet, 50);
  await src.start();
  t.teardown(() => src.stop());
  t.deepEqual(src.getNamespace('app')?.labels, {});
  const changes: number[] = [];
  src.onChange((c) => changes.push(c.pods.length + c.namespaces.length));

  const waiting = src.waitForPod('app', 'late', 3000);
  writeFileSync(join(dir, 'late.yaml'), 'kind: Pod\nmetadata: {name: late, namespace: app, uid: u9}\n');
  t.is((await waiting)?.uid, 'u9');

  writeFileSync(join(dir, 'ns.yaml'), 'kind: Namespace\nmetadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}\n');
  await src.rescanNow();
  t.is(src.getNamespace('app')?.labels['istio.io/dataplane-mode'], 'ambient');

  writeFileSync(join(dir, 'ns.yaml'), 'kind: Namespace\nmetadata: [broken\n');
  await src.rescanNow();
  t.is(src.getNamespace('app')?.labels['istio.io/dataplane-mode'], 'ambient', 'broken file keeps the previous objects');

  rmSync(join(dir, 'late.yaml'));
  await src.rescanNow();
  t.is(src.getPod('app', 'late'), undefined);
  t.true(changes.length >= 2);
});

test('waitForPod gives up after its timeout', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'amb-wl-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const src = new FilesWorkloadSource(dir, quiet, 50);
  await src.start();
  t.teardown(() => src.stop());
  t.is(await src.waitForPod('x', 'y', 100), undefined);
});

test('files source: Services and EndpointSlices are read and announced; other kinds are logged once at debug', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'amb-wl-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  writeFileSync(join(dir, 'svc.yaml'), [
    'apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: app}\nspec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80, targetPort: http-web}]}',
    'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: app}',
    'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: other, namespace: app}',
    'apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: old, namespace: app}',
  ].join('\n---\n'));
  const src = new FilesWorkloadSource(dir, log, 50);
  await src.start();
  t.teardown(() => src.stop());
  t.deepEqual(src.services().map((s) => `${s.namespace}/${s.name}`), ['app/web']);
  const unknown = lines.filter((l) => l.msg === 'ignoring an object of a kind the agent does not read (logged once per kind)');
  t.deepEqual(unknown.map((l) => l.object).sort(), ['apps/v1 Deployment app/web', 'discovery.k8s.io/v1beta1 EndpointSlice app/old'], 'once per kind, at debug');
  t.true(unknown.every((l) => l.level === 20));

  const changes: { services: boolean; policies: boolean }[] = [];
  src.onChange((c) => changes.push({ services: c.services, policies: c.policies }));
  writeFileSync(join(dir, 'eps.yaml'), 'apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\nmetadata: {name: web-1, namespace: app, labels: {kubernetes.io/service-name: web}}\nendpoints: [{addresses: [10.244.1.2]}]\nports: [{name: http, port: 8080}]\n');
  await src.rescanNow();
  t.deepEqual(src.endpointSlices().map((s) => [s.name, s.serviceName, s.ports[0]?.port]), [['web-1', 'web', 8080]]);
  t.deepEqual(changes.at(-1), { services: true, policies: false });
  writeFileSync(join(dir, 'eps.yaml'), 'apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\nmetadata: {name: web-1, namespace: app}\nendpoints: [{addresses: [not-an-ip]}]\n');
  await src.rescanNow();
  t.is(src.endpointSlices()[0]?.endpoints[0]?.addresses[0], '10.244.1.2', 'a malformed slice keeps the previous one in force');
  t.true(lines.some((l) => l.msg === 'rejected malformed object; the previous version stays in force' && l.level === 50 && l.file === 'eps.yaml'
    && /EndpointSlice app\/web-1: endpoints\[0\]\.addresses\[0\] must be an IP address/.test(String(l.error))));
});

const AP = (name: string, spec: string, ns = 'app'): string => `apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ${name}, namespace: ${ns}}\nspec: ${spec}\n`;
const PA = (name: string, spec: string, ns = 'app'): string => `apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ${name}, namespace: ${ns}}\nspec: ${spec}\n`;
const TYPO = '{selector: {matchLabels: {app: productpage}}, action: ALLOW, rules: [{from: [{source: {principal: [cluster.local/ns/app/sa/sleep]}}]}]}';
const FIXED = '{selector: {matchLabels: {app: productpage}}, action: ALLOW, rules: [{from: [{source: {principals: [cluster.local/ns/app/sa/sleep]}}]}]}';

test('parseWorkloadFileEntries: object by object, a malformed policy is reported with its raw object; invalid YAML still throws', (t) => {
  const entries = parseWorkloadFileEntries('p.yaml', [AP('viewer', TYPO), 'kind: Namespace\nmetadata: {name: app}\n', 'kind: Pod\nmetadata: {namespace: x}\n'].join('---\n'));
  t.is(entries.length, 3);
  t.like(entries[0], { key: 'AuthorizationPolicy app/viewer', policyKind: 'AuthorizationPolicy' });
  t.regex(String((entries[0] as { error?: string }).error), /AuthorizationPolicy app\/viewer: spec\.rules\[0\]\.from\[0\]\.source\.principal is not a known field/);
  t.like(entries[1], { key: 'Namespace default/app', object: { kind: 'Namespace' } });
  t.false('policyKind' in (entries[2] ?? {}), 'a Pod is no policy');
  t.throws(() => parseWorkloadFileEntries('bad.yaml', 'kind: Pod\nmetadata: [\n'), { message: /bad\.yaml/ });
  // A policy that is not valid YAML is still recognised (kind, apiVersion, name): a malformed object of its whole namespace.
  const broken = parseWorkloadFileEntries('y.yaml', AP('viewer', '{selector: {matchLabels: {app: productpage}}, rules: [{}]') + '---\nkind: Namespace\nmetadata: {name: app}\n');
  t.is(broken.length, 2);
  t.like(broken[0], { key: 'AuthorizationPolicy app/viewer', policyKind: 'AuthorizationPolicy', raw: { metadata: { name: 'viewer', namespace: 'app' } } });
  t.regex(String((broken[0] as { error?: string }).error), /^AuthorizationPolicy app\/viewer: not valid YAML \(.+\)$/);
  t.false('spec' in ((broken[0] as { raw?: object }).raw ?? {}), 'nothing of a broken document narrows the scope');
  t.like(broken[1], { object: { kind: 'Namespace' } });
  t.throws(() => parseWorkloadFile('y.yaml', AP('viewer', '{rules: [')), { message: /y\.yaml: AuthorizationPolicy app\/viewer: not valid YAML/ });
});

test('resolveFileEntries: parsed, else previous good, else a fail-closed placeholder for policies, else nothing (pure)', (t) => {
  const [bad] = parseWorkloadFileEntries('p.yaml', AP('viewer', TYPO));
  const [good] = parseWorkloadFileEntries('p.yaml', AP('viewer', FIXED));
  const [badPa] = parseWorkloadFileEntries('p.yaml', PA('strict', '{mtls: {mode: STRICTER}}', 'istio-system'));
  const [badPod] = parseWorkloadFileEntries('p.yaml', 'kind: Pod\nmetadata: {name: p, labels: {a: [1]}}\n');
  if (!bad || !good || !badPa || !badPod || !('object' in good)) throw new Error('fixtures');
  const problems: Parameters<typeof resolveFileEntries>[2] = new Map();
  const fresh = resolveFileEntries([bad, badPa, badPod], new Map(), problems);
  t.is(fresh.length, 2);
  t.true(fresh.every((o) => o.placeholder));
  t.like(fresh[0]?.object, { kind: 'AuthorizationPolicy', authorizationPolicy: { namespace: 'app', name: 'viewer', action: 'DENY', matchLabels: { app: 'productpage' } } });
  t.regex(String((fresh[0]?.object as { authorizationPolicy?: { malformed?: string } }).authorizationPolicy?.malformed), /^spec\.rules\[0\]\.from\[0\]\.source\.principal is not a known field/);
  t.like(fresh[1]?.object, { kind: 'PeerAuthentication', peerAuthentication: { namespace: 'istio-system', name: 'strict', mode: 'STRICT', matchLabels: undefined } });
  t.deepEqual([...problems.values()].map((p) => p.outcome), ['placeholder', 'placeholder', 'dropped']);
  // With a previous good version, that one stays in force (and is no placeholder).
  const kept = resolveFileEntries([bad], new Map([[good.key, good.object]]));
  t.deepEqual(kept, [{ key: good.key, object: good.object, placeholder: false }]);
});

test('files source: a new malformed policy is a placeholder until fixed; the good objects of its file are read; a previous good version stays', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'amb-wl-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  writeFileSync(join(dir, 'p.yaml'), [AP('viewer', TYPO), 'kind: Namespace\nmetadata: {name: app}\n', PA('strict', '{mtls: {mode: STRICTER}}')].join('---\n'));
  const src = new FilesWorkloadSource(dir, log, 50);
  await src.start();
  t.teardown(() => src.stop());
  t.truthy(src.getNamespace('app'), 'the good object of the same file is read');
  t.like(src.authorizationPolicies(), [{ name: 'viewer', action: 'DENY', matchLabels: { app: 'productpage' } }]);
  t.regex(String(src.authorizationPolicies()[0]?.malformed), /source\.principal is not a known field/);
  t.like(src.peerAuthentications(), [{ name: 'strict', mode: 'STRICT' }]);
  t.regex(String(src.peerAuthentications()[0]?.malformed), /spec\.mtls\.mode must be one of/);
  const logged = lines.filter((l) => l.msg === MALFORMED_POLICY_MSG);
  t.is(logged.length, 2);
  t.true(logged.every((l) => l.level === 50));
  t.true(logged.some((l) => l.object === 'AuthorizationPolicy app/viewer' && /principal is not a known field/.test(String(l.error))));
  await src.rescanNow();
  t.is(lines.filter((l) => l.msg === MALFORMED_POLICY_MSG).length, 2, 'a rescan with nothing new logs nothing new');

  const changes: boolean[] = [];
  src.onChange((c) => changes.push(c.policies));
  writeFileSync(join(dir, 'p.yaml'), [AP('viewer', FIXED), PA('strict', '{mtls: {mode: STRICT}}')].join('---\n'));
  await src.rescanNow();
  t.is(src.authorizationPolicies()[0]?.malformed, undefined, 'fixed: the placeholder goes');
  t.is(src.authorizationPolicies()[0]?.action, 'ALLOW');
  t.is(src.peerAuthentications()[0]?.malformed, undefined);
  t.deepEqual(changes, [true]);
  t.true(lines.some((l) => l.msg === 'malformed object fixed or removed' && l.object === 'AuthorizationPolicy app/viewer'));

  // Broken again: now the previous good version stays in force.
  writeFileSync(join(dir, 'p.yaml'), AP('viewer', TYPO));
  await src.rescanNow();
  t.like(src.authorizationPolicies(), [{ name: 'viewer', action: 'ALLOW' }]);
  t.is(src.authorizationPolicies()[0]?.malformed, undefined);
  t.deepEqual(src.peerAuthentications(), [], 'removed from the file: gone');

  // Deleted, then added broken: no previous version any more, so a placeholder.
  rmSync(join(dir, 'p.yaml'));
  await src.rescanNow();
  t.deepEqual(src.authorizationPolicies(), []);
  writeFileSync(join(dir, 'q.yaml'), AP('viewer', '{rules: {}}'));
  await src.rescanNow();
  t.like(src.authorizationPolicies(), [{ name: 'viewer', action: 'DENY', matchLabels: undefined }]);
  t.regex(String(src.authorizationPolicies()[0]?.malformed), /spec\.rules must be a list/);
  rmSync(join(dir, 'q.yaml'));
  await src.rescanNow();
  t.deepEqual(src.authorizationPolicies(), [], 'deleted: the placeholder goes');
});
