// deploy/base and each deploy/overlays/* rendered with `kubectl kustomize`: the fields that matter for a node agent (scheduling,
// host access, exact capabilities, readiness, least-privilege RBAC), their agreement with the code, and what each overlay changes.
import test from 'ava';
import { Command } from 'commander';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pino } from 'pino';
import { parseAllDocuments } from 'yaml';
import { drainWarning, parseAgentConfig, type RawConfig } from '../../agent/src/config.js';
import { registerInstallCommands } from '../../agent/src/install/cli.js';
import { KubeClient } from '../../agent/src/workload/kube/client.js';
import { KubernetesWorkloadSource } from '../../agent/src/workload/kube-source.js';
import { AGENT_POD_PREFIX, CONFIG_DEFAULTS as PLUGIN_DEFAULTS } from '../../cni/src/config.js';
import { FakeKubeApi, kubeconfigFor, type RecordedRequest } from '../fixtures/fake-kube-api.js';
import { AGENT_NODE_FLAGS, REPO_ROOT } from '../testbed/repo.js';

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
  securityContext: { privileged?: boolean; allowPrivilegeEscalation?: boolean; readOnlyRootFilesystem?: boolean; runAsUser?: number; capabilities: { add?: string[]; drop?: string[] }; appArmorProfile?: { type: string } };
  readinessProbe: { httpGet?: { host?: string; path: string; port: number }; exec?: { command: string[] } };
  volumeMounts: Mount[];
}
interface Volume {
  name: string;
  hostPath?: { path: string; type?: string };
  configMap?: { name: string };
  secret?: { secretName: string; defaultMode?: number };
  projected?: unknown;
}
interface PodSpec {
  terminationGracePeriodSeconds?: number;
  serviceAccountName: string;
  priorityClassName: string;
  hostNetwork: boolean;
  tolerations: Array<{ key?: string; operator: string; effect?: string }>;
  containers: Container[];
  volumes: Volume[];
}
interface DaemonSet extends Obj {
  spec: {
    selector: { matchLabels: Record<string, string> };
    updateStrategy?: { type: string; rollingUpdate?: { maxSurge?: number | string; maxUnavailable?: number | string } };
    template: { metadata: { labels: Record<string, string> }; spec: PodSpec };
  };
}

const DEPLOY = join(REPO_ROOT, 'deploy');
const OVERLAYS = ['ebpf', 'nftables', 'builtin-ca', 'trust-domain'] as const;
type Overlay = (typeof OVERLAYS)[number];

/** `kubectl kustomize deploy/<dir>` (offline), every document parsed. */
function render(dir: string): Obj[] {
  const text = execFileSync('kubectl', ['kustomize', join(DEPLOY, dir)], { encoding: 'utf8', timeout: 30_000 });
  return parseAllDocuments(text).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`${dir}: ${doc.errors.map((e) => e.message).join('; ')}`);
    return doc.toJS() as Obj;
  });
}

/** One rendered kustomization and the views of it the tests read. */
class Rendered {
  readonly ds: DaemonSet;
  readonly pod: PodSpec;
  constructor(readonly objs: Obj[]) {
    this.ds = this.one<DaemonSet>('DaemonSet');
    this.pod = this.ds.spec.template.spec;
  }
  one<T extends Obj>(kind: string, name?: string): T {
    const found = this.objs.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
    if (found.length !== 1) throw new Error(`expected one ${kind} ${name ?? ''}, found ${found.length}`);
    return found[0] as T;
  }
  container(name: string): Container {
    const c = this.pod.containers.find((x) => x.name === name);
    if (!c) throw new Error(`no container ${name}`);
    return c;
  }
  /** mountPath -> host path for a container's hostPath mounts. */
  hostMounts(c: Container): Record<string, { host: string; mount: Mount }> {
    const out: Record<string, { host: string; mount: Mount }> = {};
    for (const m of c.volumeMounts) {
      const v = this.pod.volumes.find((x) => x.name === m.name);
      if (v?.hostPath) out[m.mountPath] = { host: v.hostPath.path, mount: m };
    }
    return out;
  }
  /** The agent's config file as the ConfigMap holds it, parsed as YAML. */
  rawConfig(): RawConfig {
    const cfg = this.one<Obj & { data: Record<string, string> }>('ConfigMap');
    return (parseAllDocuments(cfg.data['config.yaml'] ?? '')[0]?.toJS() ?? {}) as RawConfig;
  }
  /** The agent container's mount of a volume, with the volume. */
  mountOf(c: Container, volume: string): { mount: Mount; volume: Volume } | undefined {
    const mount = c.volumeMounts.find((m) => m.name === volume);
    const vol = this.pod.volumes.find((v) => v.name === volume);
    return mount && vol ? { mount, volume: vol } : undefined;
  }
}

const base = new Rendered(render('base'));
const overlays = Object.fromEntries(OVERLAYS.map((o) => [o, new Rendered(render(`overlays/${o}`))])) as Record<Overlay, Rendered>;
const objs = base.objs;
const one = <T extends Obj>(kind: string, name?: string): T => base.one<T>(kind, name);
const ds = base.ds;
const pod = base.pod;
const container = (name: string): Container => base.container(name);
const hostMounts = (c: Container): Record<string, { host: string; mount: Mount }> => base.hostMounts(c);
/** Object names with kustomize's content hash suffix removed (ambient-node-config-<10 chars>). */
const unhashed = (o: Obj): string => `${o.kind}/${o.kind === 'ConfigMap' ? o.metadata.name.replace(/-[a-z0-9]{10}$/, '') : o.metadata.name}`;

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

test('the base renders and the set of objects is the expected one', (t) => {
  t.deepEqual(objs.map(unhashed).sort(), [
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

test('DaemonSet upgrades overlap: the new pod starts before the old one stops, and the old one may drain in full', (t) => {
  t.deepEqual(ds.spec.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } });
  const drain = parsedConfig(base).drainSeconds;
  t.true((pod.terminationGracePeriodSeconds ?? 30) > drain, `terminationGracePeriodSeconds (${pod.terminationGracePeriodSeconds}) is above the drain (${drain} s)`);
  t.is(drainWarning(parsedConfig(base)), undefined, 'the drain fits the grace period');
  // A container that exits is restarted by the kubelet, and would take the node back from the new agent.
  t.false(parsedConfig(base).exitAfterHandover, 'the old agent stays up idle after handing over, until its pod is deleted');
  // Two agents share these across a take-over: the state dir (its locks) and the event socket's folder are the host's.
  const mounts = base.hostMounts(base.container('agent'));
  t.is(mounts['/var/lib/ambient-node']?.host, '/var/lib/ambient-node');
  t.is(mounts['/var/run/ambient-node']?.host, '/var/run/ambient-node');
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
  const raw = base.rawConfig();
  const socketFlag = container('install-cni').args.find((a) => a.startsWith('--agent-socket='))?.split('=')[1];
  t.is(raw.socketPath, socketFlag);
  t.true(String(socketFlag).startsWith('/var/run/ambient-node/'), 'the socket is in the run dir the agent shares with the host');
});

test('the ConfigMap holds a valid agent config', (t) => {
  const raw = base.rawConfig();
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

/** The agent config as the parser reads it (unknown keys throw), for a node named node-1. */
const parsedConfig = (r: Rendered) => parseAgentConfig(r.rawConfig(), {}, { NODE_NAME: 'node-1' });
/** What each overlay changes in the agent's config file, and nothing else: keys set, keys removed. */
const CONFIG_CHANGES: Record<Overlay, { set: RawConfig; removed: string[] }> = {
  ebpf: { set: { redirectMode: 'ebpf' }, removed: [] },
  nftables: { set: { redirectMode: 'nftables' }, removed: [] },
  'trust-domain': { set: { trustDomain: 'mesh.example.com' }, removed: [] },
  'builtin-ca': { set: { ca: 'builtin', caDir: '/var/run/secrets/ambient-node-ca' }, removed: ['istioCaAddress', 'istioCaRootCert', 'istioCaTokenFile'] },
};

test('every overlay renders the same objects as the base, and the DaemonSet mounts the config it generates', (t) => {
  for (const [name, r] of [['base', base] as const, ...Object.entries(overlays)]) {
    t.deepEqual(r.objs.map(unhashed).sort(), objs.map(unhashed).sort(), name);
    const cm = r.one<Obj>('ConfigMap');
    t.regex(cm.metadata.name, /^ambient-node-config-[a-z0-9]{10}$/, `${name}: hashed, so a changed config rolls the DaemonSet`);
    t.is(r.mountOf(r.container('agent'), 'config')?.volume.configMap?.name, cm.metadata.name, name);
    t.is(r.mountOf(r.container('agent'), 'config')?.mount.mountPath, '/etc/ambient-node', name);
  }
});

test('each overlay\'s agent config is the base\'s with only its own keys changed, and the agent\'s parser accepts it', (t) => {
  const baseRaw = base.rawConfig();
  for (const o of OVERLAYS) {
    const { set, removed } = CONFIG_CHANGES[o];
    const expected: RawConfig = { ...baseRaw, ...set };
    for (const k of removed) delete expected[k];
    t.deepEqual(overlays[o].rawConfig(), expected, o);
    t.like(parsedConfig(overlays[o]), set, o);
  }
  t.is(parsedConfig(base).redirectMode, 'iptables');
});

test('capabilities: BPF and privileged only in the ebpf overlay; the other overlays keep the base\'s exact securityContext', (t) => {
  const agentCaps = (r: Rendered) => [...(r.container('agent').securityContext.capabilities.add ?? [])].sort();
  for (const o of OVERLAYS) {
    const r = overlays[o];
    const sc = r.container('agent').securityContext;
    if (o === 'ebpf') {
      t.deepEqual(agentCaps(r), ['BPF', 'NET_ADMIN', 'NET_RAW', 'SYS_ADMIN', 'SYS_PTRACE']);
      t.true(sc.privileged, 'accept_local on the pod interface: /proc/sys is read-only unprivileged');
      t.is(parsedConfig(r).redirectMode, 'ebpf');
    } else {
      t.deepEqual(sc, container('agent').securityContext, o);
      t.false(agentCaps(r).includes('BPF'), o);
    }
    // install-cni never changes with the overlay.
    t.deepEqual(r.container('install-cni'), container('install-cni'), o);
  }
  t.false(agentCaps(base).includes('BPF'));
});

test('Istio CA overlays mount the token and root the config names; builtin-ca mounts the shared root Secret read-only instead', (t) => {
  for (const [name, r] of [['base', base] as const, ...Object.entries(overlays)]) {
    const cfg = parsedConfig(r);
    const agent = r.container('agent');
    if (name === 'builtin-ca') {
      t.is(cfg.ca, 'builtin');
      const ca = r.mountOf(agent, 'ca-root');
      t.is(ca?.volume.secret?.secretName, 'ambient-node-ca');
      t.is(ca?.mount.mountPath, cfg.caDir);
      t.true(ca?.mount.readOnly);
      t.is(ca?.volume.secret?.defaultMode, 0o400, 'the root key is readable by root only');
      t.deepEqual(r.pod.volumes.filter((v) => v.name.startsWith('istio')), [], 'no istiod token or root certificate to wait for');
      t.false(agent.volumeMounts.some((m) => m.mountPath.startsWith('/var/run/secrets/istio') || m.mountPath === '/var/run/secrets/tokens'));
    } else {
      t.is(cfg.ca, 'istio', name);
      t.is(r.mountOf(agent, 'istio-token')?.mount.mountPath, dirname(cfg.istioCaTokenFile), name);
      t.is(r.mountOf(agent, 'istio-ca-root-cert')?.mount.mountPath, dirname(cfg.istioCaRootCert), name);
      t.is(r.mountOf(agent, 'istio-ca-root-cert')?.volume.configMap?.name, 'istio-ca-root-cert', name);
    }
  }
});

test('the image the manifests run: both containers use the image name kustomize sets and the entry point the Containerfile installs', (t) => {
  const containerfile = readFileSync(join(DEPLOY, 'image/Containerfile'), 'utf8');
  for (const [name, r] of [['base', base] as const, ...Object.entries(overlays)]) {
    for (const c of r.pod.containers) {
      t.is((c as Container & { image: string }).image, 'ambient-node:0.1.0', `${name}/${c.name}`);
      const main = c.command.find((a) => a.endsWith('/main.js'));
      t.is(main, '/opt/ambient-node/dist/agent/src/main.js', `${name}/${c.name}`);
      t.is(c.command[0], 'node');
    }
  }
  t.true(containerfile.includes('/opt/ambient-node'), 'the image installs the build at /opt/ambient-node');
});

test('the agent runs with the same node flags everywhere: its shebang, the DaemonSet, the image entry point, the testbed', (t) => {
  const shebang = readFileSync(join(REPO_ROOT, 'agent/src/main.ts'), 'utf8').split('\n')[0];
  t.is(shebang, `#!/usr/bin/env -S node ${AGENT_NODE_FLAGS.join(' ')}`);
  const main = '/opt/ambient-node/dist/agent/src/main.js';
  for (const [name, r] of [['base', base] as const, ...Object.entries(overlays)]) {
    t.deepEqual(r.pod.containers.find((c) => c.name === 'agent')?.command, ['node', ...AGENT_NODE_FLAGS, main], name);
  }
  const entrypoint = /^ENTRYPOINT (.*)$/m.exec(readFileSync(join(DEPLOY, 'image/Containerfile'), 'utf8'))?.[1];
  t.deepEqual(JSON.parse(entrypoint ?? 'null'), ['node', ...AGENT_NODE_FLAGS, main]);
});
