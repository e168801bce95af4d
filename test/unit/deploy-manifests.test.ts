// deploy/*.yaml parsed with the yaml package: the fields that matter for a node agent (scheduling, host access, exact
// capabilities, readiness, least-privilege RBAC) and their agreement with the code (flags, config keys, socket path).
import test from 'ava';
import { Command } from 'commander';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { parseAgentConfig, type RawConfig } from '../../agent/src/config.js';
import { registerInstallCommands } from '../../agent/src/install/cli.js';
import { AGENT_POD_PREFIX, CONFIG_DEFAULTS as PLUGIN_DEFAULTS } from '../../cni/src/config.js';
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

test('RBAC: read pods, namespaces and the two Istio security CRDs, patch pods/status, get only its own DaemonSet', (t) => {
  t.deepEqual(grants(one<Obj & { rules: Rule[] }>('ClusterRole').rules), [
    '/namespaces:get',
    '/namespaces:list',
    '/namespaces:watch',
    '/pods/status:patch',
    '/pods:get',
    '/pods:list',
    '/pods:watch',
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
