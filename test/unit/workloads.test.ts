// Unit tests for converting Kubernetes-shaped YAML into workload objects, and the files source's live updates.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { type FSWatcher, mkdirSync, renameSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { FilesWorkloadSource, parseWorkloadFile, parseWorkloadFileEntries, readBounded, resolveFileEntries } from '../../agent/src/workload/files-source.js';
import { MALFORMED_POLICY_MSG } from '../../agent/src/policy/malformed.js';
import { pollUntil } from '../fixtures/fake-kube-api.js';
import { tempDir } from './cni-helpers.js';

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
  const dir = await tempDir(t, 'amb-wl-');
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

/** Writes a file as a config tool does (a temp file renamed into place), so a rescan never reads half of it. */
function writeAtomic(dir: string, name: string, text: string): void {
  writeFileSync(join(dir, `.${name}.tmp`), text);
  renameSync(join(dir, `.${name}.tmp`), join(dir, name));
}

/** A files source on `dir`, started, stopped when the test ends; its safety check never runs in a test's time (the watch alone). */
async function startedSource(t: ExecutionContext, dir: string): Promise<FilesWorkloadSource> {
  const src = new FilesWorkloadSource(dir, quiet, 60_000);
  await src.start();
  t.teardown(() => src.stop());
  return src;
}

const podYaml = (name: string, ip: string, extra = ''): string =>
  `---\nkind: Pod\nmetadata: {name: ${name}, namespace: app, uid: u-${name}${extra}}\nspec: {nodeName: n1}\nstatus: {podIP: ${ip}}\n`;

test('files source: an unchanged file is not parsed again; a changed one is, and only its pods are announced; a removed one removes its objects', async (t) => {
  const dir = await tempDir(t, 'amb-wl-');
  writeAtomic(dir, 'ns.yaml', 'kind: Namespace\nmetadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}\n');
  writeAtomic(dir, 'a.yaml', podYaml('a1', '10.0.0.1') + podYaml('a2', '10.0.0.2'));
  writeAtomic(dir, 'b.yaml', podYaml('b1', '10.0.1.1') + podYaml('b2', '10.0.1.2'));
  const src = await startedSource(t, dir);
  t.is(src.stats.parses, 3);
  await src.rescanNow();
  await src.rescanNow();
  t.is(src.stats.parses, 3, 'nothing changed: no file read again');
  const changes: { before?: string; after?: string }[][] = [];
  src.onChange((c) => changes.push(c.pods.map((p) => ({ ...(p.before ? { before: p.before.podIPs.join() } : {}), ...(p.after ? { after: p.after.podIPs.join() } : {}) }))));

  writeAtomic(dir, 'b.yaml', podYaml('b1', '10.0.1.1') + podYaml('b2', '10.0.1.22'));
  await src.rescanNow();
  await src.rescanNow();
  t.is(src.stats.parses, 4, 'the changed file is read once');
  t.deepEqual(src.getPod('app', 'b2')?.podIPs, ['10.0.1.22']);
  t.deepEqual(changes.flat(), [{ before: '10.0.1.2', after: '10.0.1.22' }], 'only the pod that changed is announced');

  rmSync(join(dir, 'a.yaml'));
  await src.rescanNow();
  t.is(src.stats.parses, 4, 'a removal reads nothing');
  t.is(src.getPod('app', 'a1'), undefined);
  t.is(src.getPod('app', 'a2'), undefined);
  t.deepEqual(src.pods().map((p) => p.name).sort(), ['b1', 'b2']);
  t.deepEqual(changes.flat().slice(1).sort((x, y) => String(x.before).localeCompare(String(y.before))), [{ before: '10.0.0.1' }, { before: '10.0.0.2' }]);
});

test('files source: an event naming one file checks that file alone, in a folder of many; a removal likewise', async (t) => {
  const dir = await tempDir(t, 'amb-wl-');
  for (let i = 0; i < 200; i++) writeAtomic(dir, `p${i}.yaml`, podYaml(`p${i}`, `10.0.${i >> 8}.${i & 255}`));
  const src = await startedSource(t, dir);
  const { rescans, parses } = src.stats;
  writeAtomic(dir, 'p7.yaml', podYaml('p7', '10.1.0.7'));
  writeAtomic(dir, 'new.yaml', podYaml('new', '10.1.0.1'));
  await pollUntil(() => [src.getPod('app', 'p7')?.podIPs[0], src.getPod('app', 'new')?.podIPs[0]], ([a, b]) => a === '10.1.0.7' && b === '10.1.0.1', 'both files applied');
  rmSync(join(dir, 'p8.yaml'));
  await pollUntil(() => src.getPod('app', 'p8'), (p) => p === undefined, 'removed file applied');
  t.is(src.stats.rescans, rescans, 'the folder was not rescanned');
  t.is(src.stats.parses, parses + 2, 'the two written files were read, nothing else');
  t.true(src.stats.checks >= 1);
  // An ADD before the watch's event for its pod is in: the wait finds it without a rescan of the folder either.
  const waiting = src.waitForPod('app', 'late', 3000);
  writeAtomic(dir, 'late.yaml', podYaml('late', '10.1.0.2'));
  t.is((await waiting)?.podIPs[0], '10.1.0.2');
  t.is(src.stats.rescans, rescans, 'the watch\'s check found it');
  // The watch lost the event: the wait rescans the folder.
  (src as unknown as { watcher: FSWatcher }).watcher.removeAllListeners('change');
  writeAtomic(dir, 'lost.yaml', podYaml('lost', '10.1.0.3'));
  t.is((await src.waitForPod('app', 'lost', 3000))?.podIPs[0], '10.1.0.3');
  t.is(src.stats.rescans, rescans + 1);
});

test('files source: an event on the folder itself rescans it; a dangling symlink is gone to a check and to a rescan alike', async (t) => {
  const dir = await tempDir(t, 'amb-wl-dir-');
  mkdirSync(join(dir, 'targets')); // not read: a directory
  writeFileSync(join(dir, 'targets', 'a.yaml'), podYaml('a', '10.0.0.1'));
  writeFileSync(join(dir, 'targets', 'b.yaml'), podYaml('b', '10.0.0.2'));
  symlinkSync('targets/a.yaml', join(dir, 'a.yaml'));
  symlinkSync('targets/b.yaml', join(dir, 'b.yaml'));
  const src = await startedSource(t, dir);
  t.deepEqual(src.pods().map((p) => p.name).sort(), ['a', 'b']);
  const { rescans } = src.stats;
  utimesSync(dir, new Date(), new Date()); // inotify reports it on the folder: libuv names it by the folder's own name
  await pollUntil(() => src.stats.rescans, (n) => n > rescans, 'a rescan');
  // A link swapped for a dangling one: the watch names the link, and its check finds it gone.
  symlinkSync('targets/none.yaml', join(dir, '.b.yaml.tmp'));
  renameSync(join(dir, '.b.yaml.tmp'), join(dir, 'b.yaml'));
  await pollUntil(() => src.getPod('app', 'b'), (p) => p === undefined, 'b gone');
  // A link left dangling by its target's removal (no event in the folder): the next rescan finds it gone.
  rmSync(join(dir, 'targets', 'a.yaml'));
  await src.rescanNow();
  t.deepEqual(src.pods().map((p) => p.name), [], 'the dangling a.yaml is gone after a rescan');
});

test('files source: stop() waits for the check under way and runs no other after it', async (t) => {
  const dir = await tempDir(t, 'amb-wl-stop-');
  const src = new FilesWorkloadSource(dir, quiet, 60_000);
  await src.start();
  let changes = 0;
  src.onChange(() => changes++);
  for (let i = 0; i < 50; i++) writeAtomic(dir, `p${i}.yaml`, podYaml(`p${i}`, `10.0.0.${i + 1}`));
  await new Promise((r) => setImmediate(r)); // the watch's events in: checks queued
  await src.stop();
  const seen = changes;
  const checks = src.stats.checks;
  await new Promise((r) => setTimeout(r, 200));
  t.is(changes, seen, 'no listener called after stop()');
  t.is(src.stats.checks, checks);
});

test('files source: past 1,000 files named at once, one full rescan replaces the checks', async (t) => {
  const dir = await tempDir(t, 'amb-wl-many-');
  const src = await startedSource(t, dir);
  const { rescans } = src.stats;
  for (let i = 0; i < 1500; i++) writeFileSync(join(dir, `p${i}.yaml`), podYaml(`p${i}`, `10.0.${i >> 8}.${i & 255}`));
  await pollUntil(() => src.pods().length, (n) => n === 1500, 'every pod');
  t.true(src.stats.rescans > rescans);
});

test('files source: a ConfigMap volume\'s update (its ..data symlink swapped) rescans the folder', async (t) => {
  const dir = await tempDir(t, 'amb-wl-cm-');
  mkdirSync(join(dir, '..v1'));
  writeFileSync(join(dir, '..v1', 'pods.yaml'), podYaml('cm', '10.0.0.1'));
  symlinkSync('..v1', join(dir, '..data'));
  symlinkSync('..data/pods.yaml', join(dir, 'pods.yaml'));
  const src = await startedSource(t, dir);
  t.is(src.getPod('app', 'cm')?.podIPs[0], '10.0.0.1');
  mkdirSync(join(dir, '..v2'));
  writeFileSync(join(dir, '..v2', 'pods.yaml'), podYaml('cm', '10.0.0.2'));
  symlinkSync('..v2', join(dir, '..data_tmp'));
  renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
  await pollUntil(() => src.getPod('app', 'cm')?.podIPs[0], (ip) => ip === '10.0.0.2', 'the new version applied');
});

test('files source: a pod in two files is the later file\'s (by name); removing that file brings back the other definition', async (t) => {
  const dir = await tempDir(t, 'amb-wl-');
  writeAtomic(dir, 'a.yaml', podYaml('p', '10.0.0.1'));
  writeAtomic(dir, 'b.yaml', podYaml('p', '10.0.0.2'));
  const src = await startedSource(t, dir);
  t.deepEqual(src.getPod('app', 'p')?.podIPs, ['10.0.0.2']);
  writeAtomic(dir, 'a.yaml', podYaml('p', '10.0.0.3'));
  await src.rescanNow();
  t.deepEqual(src.getPod('app', 'p')?.podIPs, ['10.0.0.2'], 'an earlier file does not override a later one');
  rmSync(join(dir, 'b.yaml'));
  await src.rescanNow();
  t.deepEqual(src.getPod('app', 'p')?.podIPs, ['10.0.0.3']);
  rmSync(join(dir, 'a.yaml'));
  await src.rescanNow();
  t.is(src.getPod('app', 'p'), undefined);
});

test('waitForPod gives up after its timeout', async (t) => {
  const dir = await tempDir(t, 'amb-wl-');
  const src = new FilesWorkloadSource(dir, quiet, 50);
  await src.start();
  t.teardown(() => src.stop());
  t.is(await src.waitForPod('x', 'y', 100), undefined);
});

test('files source: Services and EndpointSlices are read and announced; other kinds are logged once at debug', async (t) => {
  const dir = await tempDir(t, 'amb-wl-');
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
  const dir = await tempDir(t, 'amb-wl-');
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

test('WorkloadsByIp: an IP two pods claim is the last claimant\'s; the other comes back when it lets go', async (t) => {
  const { WorkloadsByIp } = await import('../../agent/src/workload/directory.js');
  const w = (name: string, ip: string): { ip: string; namespace: string; name: string; serviceAccount: string; identity: string; node: string } =>
    ({ ip, namespace: 'app', name, serviceAccount: 'sa', identity: `spiffe://td/ns/app/sa/sa`, node: 'n1' });
  const byIp = new WorkloadsByIp();
  byIp.add(w('old', '10.0.0.1'));
  byIp.add(w('new', '10.0.0.1'));
  t.is(byIp.get('10.0.0.1')?.name, 'new');
  byIp.remove('10.0.0.1', { namespace: 'app', name: 'new' });
  t.is(byIp.get('10.0.0.1')?.name, 'old');
  byIp.add(w('new', '10.0.0.1'));
  byIp.remove('10.0.0.1', { namespace: 'app', name: 'old' });
  byIp.remove('10.0.0.1', { namespace: 'app', name: 'new' });
  t.is(byIp.get('10.0.0.1'), undefined, 'a shadowed pod that let go does not come back');
});

test('WorkloadDirectory over the files source: pod changes are applied one by one; a namespace change re-selects its pods', async (t) => {
  const { WorkloadDirectory } = await import('../../agent/src/workload/directory.js');
  const dir = await tempDir(t, 'amb-wl-');
  writeAtomic(dir, 'ns.yaml', 'kind: Namespace\nmetadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}\n');
  writeAtomic(dir, 'a.yaml', podYaml('a1', '10.0.0.1') + podYaml('a2', '10.0.0.2'));
  const src = await startedSource(t, dir);
  const wd = new WorkloadDirectory(src, 'cluster.local', { nodeName: 'n0' });
  t.teardown(() => wd.close());
  t.deepEqual(wd.all().map((x) => x.ip).sort(), ['10.0.0.1', '10.0.0.2']);
  writeAtomic(dir, 'a.yaml', podYaml('a1', '10.0.0.9') + podYaml('a2', '10.0.0.2'));
  await src.rescanNow();
  t.is(wd.lookup('10.0.0.1'), undefined);
  t.is(wd.lookup('10.0.0.9')?.name, 'a1');
  t.true(wd.knownPod('Pod/app/a2'));
  writeAtomic(dir, 'ns.yaml', 'kind: Namespace\nmetadata: {name: app}\n');
  await src.rescanNow();
  t.deepEqual(wd.all(), [], 'the namespace left the mesh');
  t.true(wd.knownPod('Pod/app/a2'), 'known, though not in the mesh');
});

test('files source: a file over the per-file bound is not read, and its previous objects stay in force', async (t) => {
  const dir = await tempDir(t, 'amb-wl-');
  writeAtomic(dir, 'a.yaml', podYaml('a1', '10.0.0.1'));
  const bound = 400;
  const src = new FilesWorkloadSource(dir, quiet, 60_000, 60_000, bound);
  await src.start();
  t.teardown(() => src.stop());
  t.deepEqual(src.getPod('app', 'a1')?.podIPs, ['10.0.0.1']);
  const big = podYaml('a1', '10.0.0.9') + `# ${'x'.repeat(bound)}\n`;
  t.true(big.length > bound);
  writeAtomic(dir, 'a.yaml', big);
  await src.rescanNow();
  t.deepEqual(src.getPod('app', 'a1')?.podIPs, ['10.0.0.1'], 'the oversized version is not applied');
  writeAtomic(dir, 'a.yaml', podYaml('a1', '10.0.0.2'));
  await src.rescanNow();
  t.deepEqual(src.getPod('app', 'a1')?.podIPs, ['10.0.0.2'], 'a version within the bound is');
});

test('readBounded reads a file of exactly the bound and refuses one byte more, naming the bound', async (t) => {
  const dir = await tempDir(t, 'amb-wl-');
  writeFileSync(join(dir, 'at.yaml'), 'a'.repeat(100));
  writeFileSync(join(dir, 'over.yaml'), 'a'.repeat(101));
  t.is((await readBounded(join(dir, 'at.yaml'), 100)).length, 100);
  await t.throwsAsync(readBounded(join(dir, 'over.yaml'), 100), { message: /over 100 bytes/ });
  // The size hint (the caller's stat) sizes the first read only: a file that grew or shrank since is read whole.
  writeFileSync(join(dir, 'big.yaml'), 'b'.repeat(3 * 1024 * 1024 + 7));
  t.is((await readBounded(join(dir, 'big.yaml'), 4 * 1024 * 1024, 10)).length, 3 * 1024 * 1024 + 7, 'grew past its hint');
  t.is((await readBounded(join(dir, 'at.yaml'), 100, 5000)).length, 100, 'shorter than its hint');
  t.is((await readBounded(join(dir, 'at.yaml'), 100, 0)).length, 100, 'a hint of 0');
  await t.throwsAsync(readBounded(join(dir, 'over.yaml'), 100, 50), { message: /over 100 bytes/ }, 'the bound holds whatever the hint');
  // A FIFO no one writes to: refused at once, never waited on.
  execFileSync('mkfifo', [join(dir, 'fifo.yaml')]);
  await t.throwsAsync(readBounded(join(dir, 'fifo.yaml'), 100), { message: /not a regular file/ });
});

