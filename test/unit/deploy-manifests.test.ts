// deploy/*.yaml parsed with the yaml package: the fields that matter for a node agent (scheduling, host access, exact
// capabilities, readiness, least-privilege RBAC) and their agreement with the code (flags, config keys, socket path, API calls).
import test from 'ava';
import { Command } from 'commander';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { parseAllDocuments } from 'yaml';
import { parseAgentConfig, type RawConfig } from '../../agent/src/config.js';
import { registerInstallCommands } from '../../agent/src/install/cli.js';
import { KubeClient } from '../../agent/src/workload/kube/client.js';
import { KubernetesWorkloadSource } from '../../agent/src/workload/kube-source.js';
import { AGENT_POD_PREFIX, CONFIG_DEFAULTS as PLUGIN_DEFAULTS } from '../../cni/src/config.js';
import { FakeKubeApi, kubeconfigFor, type RecordedRequest } from '../fixtures/fake-kube-api.js';
import { REPO_ROOT } from '../testbed/repo.js';

/* The manifests are untyped YAML: these narrow views name only what the test reads. */
interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [k: string]: unknown;
}
interface Rule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
  resourceNames?: string[];
}
interface Mount {
  name: string;
  mountPath: string;
  readOnly?: boolean;
  mountPropagation?: string;
}
interface Container {
  name: string;
  command: string[];
  args: string[];
  env?: Array<{ name: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>;
  securityContext: { privileged?: boolean; allowPrivilegeEscalation?: boolean; capabilities: { add?: string[]; drop?: string[] }; appArmorProfile?: { type: string } };
  readinessProbe: { httpGet?: { host?: string; path: string; port: number }; exec?: { command: string[] } };
  volumeMounts: Mount[];
}
interface Volume {
  name: string;
  hostPath?: { path: string; type?: string };
}
interface PodSpec {
  serviceAccountName: string;
  priorityClassName: string;
  hostNetwork: boolean;
  tolerations: Array<{ key?: string; operator: string; effect?: string }>;
  containers: Container[];
  volumes: Volume[];
}
interface DaemonSet extends Obj {
  spec: { selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
}

const DEPLOY = join(REPO_ROOT, 'deploy');

function load(): Obj[] {
  const out: Obj[] = [];
  for (const file of readdirSync(DEPLOY).filter((f) => f.endsWith('.yaml')).sort()) {
    for (const doc of parseAllDocuments(readFileSync(join(DEPLOY, file), 'utf8'))) {
      if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
      out.push(doc.toJS() as Obj);
    }
  }
  return out;
}

const objs = load();
function one<T extends Obj>(kind: string, name?: string): T {
  const found = objs.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (found.length !== 1) throw new Error(`expected one ${kind} ${name ?? ''}, found ${found.length}`);
  return found[0] as T;
}
const ds = one<DaemonSet>('DaemonSet');
const pod = ds.spec.template.spec;
function container(name: string): Container {
  const c = pod.containers.find((x) => x.name === name);
  if (!c) throw new Error(`no container ${name}`);
  return c;
}
/** mountPath -> host path for a container's hostPath mounts. */
function hostMounts(c: Container): Record<string, { host: string; mount: Mount }> {
  const out: Record<string, { host: string; mount: Mount }> = {};
  for (const m of c.volumeMounts) {
    const v = pod.volumes.find((x) => x.name === m.name);
    if (v?.hostPath) out[m.mountPath] = { host: v.hostPath.path, mount: m };
  }
  return out;
}
/** Rules as "group/resource:verb" strings (resourceNames appended), so sets compare exactly. */
function grants(rules: Rule[]): string[] {
  return rules
    .flatMap((r) => r.apiGroups.flatMap((g) => r.resources.flatMap((res) => r.verbs.map((v) => `${g}/${res}:${v}${r.resourceNames ? `@${r.resourceNames.join(',')}` : ''}`))))
    .sort();
}

/** A request to the API as the "group/resource:verb" RBAC checks it against (subresources as resource/sub). */
function grantOf(r: RecordedRequest): string {
  const m = /^\/(?:api\/v1|apis\/([^/]+)\/[^/]+)\/(.*)$/.exec(r.path);
  if (!m) throw new Error(`not an API path: ${r.path}`);
  let segs = (m[2] ?? '').split('/');
  if (segs[0] === 'namespaces' && segs.length >= 3) segs = segs.slice(2); // namespaced: /namespaces/{ns}/{resource}...
  const [resource, name, sub] = segs;
  const verb = r.method === 'PATCH' ? 'patch' : r.query.watch === 'true' ? 'watch' : name ? 'get' : 'list';
  return `${m[1] ?? ''}/${resource}${sub ? `/${sub}` : ''}:${verb}`;
}

/** Every request the kubernetes workload source makes: its informers' lists and watches, and one capture annotation. */
async function sourceRequests(): Promise<string[]> {
  const api = await new FakeKubeApi().start();
  const dir = mkdtempSync(join(tmpdir(), 'deploy-rbac-'));
  const source = new KubernetesWorkloadSource({
    client: new KubeClient({ kubeconfig: join(dir, 'kubeconfig') }), nodeName: 'n0', log: pino({ level: 'silent' }), backoff: { initialMs: 20, maxMs: 200 },
  });
  try {
    writeFileSync(join(dir, 'kubeconfig'), kubeconfigFor(api));
    api.put('pods', { metadata: { name: 'p', namespace: 'app', uid: 'u' }, spec: { nodeName: 'n0' }, status: { phase: 'Running', podIP: '10.0.0.1' } });
    await source.start();
    source.reportCapture({ namespace: 'app', name: 'p', uid: 'u' }, 'enabled');
    const watched = (): boolean => {
      const got = new Set(api.requests.map(grantOf));
      const lists = [...got].filter((g) => g.endsWith(':list'));
      return lists.length > 0 && lists.every((g) => got.has(g.replace(/:list$/, ':watch'))) && got.has('/pods/status:patch');
    };
    for (let i = 0; i < 400 && !watched(); i++) await new Promise((r) => setTimeout(r, 25));
    return [...new Set(api.requests.map(grantOf))].sort();
  } finally {
    await source.stop();
    await api.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('every manifest parses and the set of objects is the expected one', (t) => {
  t.deepEqual(objs.map((o) => `${o.kind}/${o.metadata.name}`).sort(), [
    'ClusterRole/ambient-node',
    'ClusterRoleBinding/ambient-node',
    'ConfigMap/ambient-node-config',
    'DaemonSet/ambient-node',
    'Namespace/ambient-system',
    'Role/ambient-node-install',
    'RoleBinding/ambient-node-install',
    'ServiceAccount/ambient-node',
  ]);
  for (const o of objs.filter((x) => x.kind !== 'Namespace' && !x.kind.startsWith('Cluster'))) t.is(o.metadata.namespace, 'ambient-system', o.kind);
});

test('DaemonSet: node-critical, tolerates every taint, host network, its own service account', (t) => {
  t.is(pod.priorityClassName, 'system-node-critical');
  t.true(pod.hostNetwork);
  t.is(pod.serviceAccountName, one('ServiceAccount').metadata.name);
  t.deepEqual(pod.tolerations, [
    { effect: 'NoSchedule', operator: 'Exists' },
    { effect: 'NoExecute', operator: 'Exists' },
    { key: 'CriticalAddonsOnly', operator: 'Exists' },
  ]);
  t.like(ds.spec.template.metadata.labels, { ...ds.spec.selector.matchLabels, 'istio.io/dataplane-mode': 'none' });
  // The plugin passes the agent's own pods through: they must be named <AGENT_POD_PREFIX>* in agent_namespace.
  t.is(`${ds.metadata.name}-`, AGENT_POD_PREFIX);
  t.is(ds.metadata.namespace, PLUGIN_DEFAULTS.agent_namespace);
  t.deepEqual(pod.containers.map((c) => c.name), ['agent', 'install-cni']);
});

test('agent container: exactly NET_ADMIN, NET_RAW, SYS_ADMIN, SYS_PTRACE; not privileged; ready on /healthz/ready:15021', (t) => {
  const c = container('agent');
  t.deepEqual(c.securityContext.capabilities.drop, ['ALL']);
  t.deepEqual([...(c.securityContext.capabilities.add ?? [])].sort(), ['NET_ADMIN', 'NET_RAW', 'SYS_ADMIN', 'SYS_PTRACE']);
  t.false(c.securityContext.privileged);
  t.deepEqual(c.securityContext.appArmorProfile, { type: 'Unconfined' }, 'ptrace-read of host processes for /host/proc/<pid>/ns/net');
  t.deepEqual(c.readinessProbe.httpGet, { host: '127.0.0.1', path: '/healthz/ready', port: 15021 });
  t.is(c.env?.find((e) => e.name === 'NODE_NAME')?.valueFrom?.fieldRef?.fieldPath, 'spec.nodeName');
  t.deepEqual(c.args, ['agent', '--config', '/etc/ambient-node/config.yaml']);
});

test('agent host mounts: netns dir (HostToContainer), /proc read-only, run dir, state dir, xtables lock; nothing else from the host', (t) => {
  const m = hostMounts(container('agent'));
  t.deepEqual(Object.fromEntries(Object.entries(m).map(([k, v]) => [k, v.host])), {
    '/var/run/netns': '/var/run/netns',
    '/host/proc': '/proc',
    '/var/run/ambient-node': '/var/run/ambient-node',
    '/var/lib/ambient-node': '/var/lib/ambient-node',
    '/run/xtables.lock': '/run/xtables.lock',
  });
  t.is(m['/var/run/netns']?.mount.mountPropagation, 'HostToContainer');
  t.true(m['/host/proc']?.mount.readOnly);
});

test('install-cni container: no capabilities, the CNI bin and conf dirs only, --check probes the same settings it installs', (t) => {
  const c = container('install-cni');
  t.deepEqual(c.securityContext.capabilities, { drop: ['ALL'] });
  t.false(c.securityContext.allowPrivilegeEscalation);
  t.deepEqual(Object.fromEntries(Object.entries(hostMounts(c)).map(([k, v]) => [k, v.host])), {
    '/host/opt/cni/bin': '/opt/cni/bin',
    '/host/etc/cni/net.d': '/etc/cni/net.d',
  });
  t.is(c.args[0], 'install-cni');
  t.true(c.args.includes('--watch'));
  t.true(c.args.includes(`--daemonset=${ds.metadata.namespace}/${ds.metadata.name}`));
  const probe = c.readinessProbe.exec?.command ?? [];
  t.deepEqual(probe.slice(0, c.command.length), c.command);
  const settings = (args: string[]) => args.filter((a) => a !== '--watch' && a !== '--check' && !a.startsWith('--daemonset='));
  t.deepEqual(settings(probe.slice(c.command.length)), settings(c.args));
  // Every flag is one the command really has.
  const program = new Command();
  registerInstallCommands(program);
  const known = program.commands.find((x) => x.name() === 'install-cni')?.options.map((o) => o.long) ?? [];
  for (const a of [...c.args.slice(1), ...probe.slice(c.command.length + 1)]) t.true(known.includes(a.split('=')[0]), a);
});

test('the plugin entry, the agent config and the mounts agree on the agent socket', (t) => {
  const cfg = one<Obj & { data: Record<string, string> }>('ConfigMap');
  const raw = (parseAllDocuments(cfg.data['config.yaml'] ?? '')[0]?.toJS() ?? {}) as RawConfig;
  const socketFlag = container('install-cni').args.find((a) => a.startsWith('--agent-socket='))?.split('=')[1];
  t.is(raw.socketPath, socketFlag);
  t.true(String(socketFlag).startsWith('/var/run/ambient-node/'), 'the socket is in the run dir the agent shares with the host');
});

test('the ConfigMap holds a valid agent config', (t) => {
  const cfg = one<Obj & { data: Record<string, string> }>('ConfigMap');
  const raw = (parseAllDocuments(cfg.data['config.yaml'] ?? '')[0]?.toJS() ?? {}) as RawConfig;
  const parsed = parseAgentConfig(raw, {}, { NODE_NAME: 'node-1' });
  t.like(parsed, { workloadSource: 'kubernetes', kubeconfig: '', ca: 'istio' });
  t.is(hostMounts(container('agent'))[parsed.procRoot]?.host, '/proc', 'procRoot is where the host\'s /proc is mounted');
  t.is(container('agent').readinessProbe.httpGet?.port, parsed.readinessPort);
});

test('RBAC: read pods, namespaces, Services, EndpointSlices and the two Istio security CRDs, patch pods/status, get only its own DaemonSet', (t) => {
  t.deepEqual(grants(one<Obj & { rules: Rule[] }>('ClusterRole').rules), [
    '/namespaces:get',
    '/namespaces:list',
    '/namespaces:watch',
    '/pods/status:patch',
    '/pods:get',
    '/pods:list',
    '/pods:watch',
    '/services:list',
    '/services:watch',
    'discovery.k8s.io/endpointslices:list',
    'discovery.k8s.io/endpointslices:watch',
    'security.istio.io/authorizationpolicies:get',
    'security.istio.io/authorizationpolicies:list',
    'security.istio.io/authorizationpolicies:watch',
    'security.istio.io/peerauthentications:get',
    'security.istio.io/peerauthentications:list',
    'security.istio.io/peerauthentications:watch',
  ]);
  t.deepEqual(grants(one<Obj & { rules: Rule[] }>('Role').rules), ['apps/daemonsets:get@ambient-node']);
  for (const kind of ['ClusterRoleBinding', 'RoleBinding']) {
    const b = one<Obj & { roleRef: { kind: string; name: string }; subjects: Array<{ kind: string; name: string; namespace: string }> }>(kind);
    t.deepEqual(b.subjects, [{ kind: 'ServiceAccount', name: pod.serviceAccountName, namespace: 'ambient-system' }]);
    t.is(b.roleRef.kind, kind.replace('Binding', ''));
  }
});

test('RBAC: the ClusterRole lists, watches and patches exactly what the kubernetes workload source asks the API for', async (t) => {
  const used = await sourceRequests();
  // The informers as the code has them (so a new one cannot be added without its rule), services and endpointslices included.
  t.true(used.includes('/services:list') && used.includes('/services:watch'), used.join(' '));
  t.true(used.includes('discovery.k8s.io/endpointslices:list') && used.includes('discovery.k8s.io/endpointslices:watch'), used.join(' '));
  t.false(used.some((g) => g.endsWith(':get')), 'the source reads only through list and watch');
  const granted = grants(one<Obj & { rules: Rule[] }>('ClusterRole').rules);
  for (const g of used) t.true(granted.includes(g), `the ClusterRole grants ${g}`);
  t.deepEqual(granted.filter((g) => !g.endsWith(':get')), used, 'nothing listed, watched or patched beyond what the source uses');
  // Every resource granted is one the source uses.
  const resource = (g: string): string => g.replace(/:.*$/, '');
  t.deepEqual([...new Set(granted.map(resource))].sort(), [...new Set(used.map(resource))].sort());
});
