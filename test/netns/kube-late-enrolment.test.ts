// End to end with the kubernetes workload source (a fake API server inside the node netns) and no CNI ADD reaching the
// agent: labelling a namespace enrols its running pods (netns found through /proc and the pod's cgroup), traffic is
// captured, the pods are annotated and survive an agent restart; removing the label releases them; a pod's own label
// works the same way. Processes claiming a pod UID in the host or the agent's own netns are never taken for the pod.
import { execa, type ResultPromise } from 'execa';
import { mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { Netns } from '../../agent/src/platform/netns.js';
import { listenFdIn } from '../../agent/src/platform/sockets.js';
import type { PodView } from '../../agent/src/reconcile/enroller.js';
import { REDIRECTION_ANNOTATION } from '../../agent/src/workload/kube/pod-annotator.js';
import { FakeKubeApi, kubeconfigFor, makeTestTls } from '../fixtures/fake-kube-api.js';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { AGENT_MAIN, netnsPath, type Testbed, type TestbedPod } from '../testbed/index.js';
import { AMBIENT, agentPods, ask, eventually, hasOurRules, listeningPorts, podRules, startEcho } from './helpers.js';

const NSENTER = '/usr/bin/nsenter';

/** Where cgroup v2 is mounted (here /sys/fs/cgroup/unified; /sys/fs/cgroup on pure v2 hosts). */
function cgroup2Root(): string {
  const line = readFileSync('/proc/mounts', 'utf8').split('\n').find((l) => l.split(' ')[2] === 'cgroup2');
  const root = line?.split(' ')[1];
  if (!root) throw new Error('no cgroup2 mount');
  return root;
}

/**
 * Test-owned cgroups laid out like kubelet's (…/kubepods/besteffort/pod<uid>) and processes inside them. Everything is
 * removed in teardown: processes killed by their own pid, then the directories, deepest first.
 */
class PodProcesses {
  private readonly base: string;
  private readonly dirs: string[] = [];
  private readonly procs: ResultPromise[] = [];

  constructor(t: ExecutionContext, id: string) {
    this.base = join(cgroup2Root(), `ambient-test-${id}`);
    mkdirSync(join(this.base, 'kubepods', 'besteffort'), { recursive: true });
    this.dirs.push(this.base, join(this.base, 'kubepods'), join(this.base, 'kubepods', 'besteffort'));
    t.teardown(() => this.cleanup());
  }

  /** Starts `sleep` in the pod's cgroup, inside the given netns (undefined: this process's own, i.e. the host's). */
  start(uid: string, netns: string | undefined): void {
    const dir = join(this.base, 'kubepods', 'besteffort', `pod${uid}`);
    if (!this.dirs.includes(dir)) {
      mkdirSync(dir);
      this.dirs.push(dir);
    }
    const exec = netns ? `exec ${NSENTER} --net=${netns} -- sleep 600` : 'exec sleep 600';
    const p = execa('sh', ['-c', `echo $$ > ${join(dir, 'cgroup.procs')} && ${exec}`], { reject: false });
    this.procs.push(p);
  }

  private async cleanup(): Promise<void> {
    for (const p of this.procs) p.kill('SIGKILL');
    await Promise.all(this.procs);
    for (const d of [...this.dirs].reverse()) {
      try {
        rmdirSync(d);
      } catch {
        // already gone
      }
    }
  }
}

const podObject = (pod: TestbedPod, labels: Record<string, string> = pod.labels): Record<string, unknown> => ({
  metadata: { name: pod.name, namespace: pod.namespace, uid: pod.uid, labels },
  spec: { nodeName: pod.node.name, serviceAccountName: pod.serviceAccount },
  status: { phase: 'Running', podIP: pod.ip, podIPs: [{ ip: pod.ip }] },
});

const viewOf = async (tb: Testbed, name: string): Promise<PodView | undefined> => (await agentPods(tb, 0)).find((p) => p.name === name);

/**
 * A one-node testbed whose agent uses the kubernetes source, talking HTTPS to a fake API server that listens on
 * 127.0.0.1 inside the node netns (where the agent runs). The namespace `app` exists, unlabelled.
 */
async function kubeTestbed(t: ExecutionContext, withAmbientCni: boolean): Promise<{ tb: Testbed; kube: FakeKubeApi }> {
  const tls = makeTestTls();
  t.teardown(() => tls.cleanup());
  const dir = mkdtempSync(join(tmpdir(), 'kube-e2e-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const kubeconfig = join(dir, 'kubeconfig');
  let api: FakeKubeApi | undefined;
  t.teardown(() => api?.stop());
  const tb = await withTestbed(t, {
    nodes: 1,
    withAmbientCni,
    agentArgs: ['--workload-source', 'kubernetes', '--kubeconfig', kubeconfig],
    beforeAgents: async (bed) => {
      const node = Netns.open(bed.node(0).netnsPath);
      try {
        api = await new FakeKubeApi({ tls, fd: listenFdIn(node, { address: '127.0.0.1', port: 0 }) }).start();
      } finally {
        node.close();
      }
      writeFileSync(kubeconfig, kubeconfigFor(api, { caFile: tls.caFile }));
      api.put('namespaces', { metadata: { name: 'app' } });
    },
  });
  if (!api) throw new Error('fake API not started');
  return { tb, kube: api };
}

const annotation = (kube: FakeKubeApi, key: string): string | undefined =>
  (kube.get('pods', key)?.metadata.annotations as Record<string, string> | undefined)?.[REDIRECTION_ANNOTATION];

netnsTest.serial('kubernetes source: labelling a namespace or a pod enrols its running pods (found through /proc), removing the label releases them', async (t) => {
  // No ambient-cni in the chain: the agent never sees an ADD, so every pod it enrols was found running.
  const { tb, kube } = await kubeTestbed(t, false);
  const [sleep, web] = await tb.addPods([{ node: 0, namespace: 'app', name: 'sleep' }, { node: 0, namespace: 'app', name: 'web' }]);
  if (!sleep || !web) throw new Error('pods missing');
  const procs = new PodProcesses(t, tb.id);
  for (const p of [sleep, web]) {
    kube.put('pods', podObject(p));
    procs.start(p.uid, netnsPath(p.netnsName));
  }
  // A pod whose "IP" is the node's bridge address, with processes in its cgroup in the node netns (the agent's own)
  // and in the host netns: neither may ever be taken for it.
  const ghost = { name: 'ghost', uid: '0a1b2c3d-0000-4000-8000-00000000beef' };
  kube.put('pods', { metadata: { name: ghost.name, namespace: 'app', uid: ghost.uid }, spec: { nodeName: tb.node(0).name }, status: { phase: 'Running', podIP: tb.node(0).podGateway } });
  procs.start(ghost.uid, tb.node(0).netnsPath);
  procs.start(ghost.uid, undefined);
  await startEcho(web, 8080);

  t.deepEqual(await agentPods(tb, 0), [], 'nothing enrolled while the namespace is not labelled');
  t.false(hasOurRules(await podRules(sleep)));

  kube.put('namespaces', { metadata: { name: 'app', labels: AMBIENT } });
  for (const p of [sleep, web]) {
    const v = await eventually(() => viewOf(tb, p.name), (x) => x?.state === 'enrolled' && x.listening === true, 20_000);
    t.like(v, { state: 'enrolled', listening: true, uid: p.uid, ips: [p.ip] }, p.name);
    t.regex(v?.netnsPath ?? '', /^\/proc\/\d+\/ns\/net$/);
    t.true(hasOurRules(await podRules(p)), `${p.name} has rules`);
    t.deepEqual((await listeningPorts(p)).filter((n) => n >= 15001 && n <= 15008).sort(), [15001, 15006, 15008]);
    const ann = await eventually(async () => annotation(kube, `app/${p.name}`), (a) => a === 'enabled');
    t.is(ann, 'enabled', `${p.name} annotated through pods/status`);
  }
  const captured = await ask(sleep, web.ip, 8080, 'captured');
  t.true(captured.ok, captured.output);
  const stats = await eventually(() => viewOf(tb, 'sleep'), (v) => (v?.stats?.outbound.opened ?? 0) >= 1);
  t.true((stats?.stats?.outbound.opened ?? 0) >= 1, 'the agent carried the connection');
  t.true(kube.requests.some((r) => r.method === 'PATCH' && r.path === '/api/v1/namespaces/app/pods/sleep/status'));

  const ghostAnn = await eventually(async () => annotation(kube, 'app/ghost'), (a) => a === 'pending');
  t.is(ghostAnn, 'pending', 'the ghost pod is marked pending: no netns qualifies');
  t.is(await viewOf(tb, 'ghost'), undefined, 'never enrolled into the host or node netns');
  t.true(hasNodeRulesUntouched(await tb.nodeExec(0, 'iptables-save', ['-t', 'nat']).then((r) => String(r.stdout))));

  // Pods found through /proc are re-adopted from the state dir after an agent restart, without a rescan.
  await tb.agent(0).kill('SIGKILL');
  await tb.agent(0).start();
  const readopted = await eventually(() => viewOf(tb, 'sleep'), (v) => v?.state === 'enrolled' && v.listening === true);
  t.like(readopted, { state: 'enrolled', listening: true });
  const afterRestart = await eventually(() => ask(sleep, web.ip, 8080, 'after-restart'), (a) => a.ok);
  t.true(afterRestart.ok, afterRestart.output);
  const logs = await tb.agent(0).logs({ currentRun: true });
  t.true(logs.some((l) => l.msg === 'adopted pods from the state dir' && l.enrolled === 2), 'both pods re-adopted');
  t.false(logs.some((l) => l.msg === 'running pod enrolled late'), 'no rediscovery was needed');

  kube.put('namespaces', { metadata: { name: 'app' } });
  for (const p of [sleep, web]) {
    const v = await eventually(() => viewOf(tb, p.name), (x) => x?.state === 'skipped');
    t.is(v?.state, 'skipped', p.name);
    t.false(hasOurRules(await podRules(p)), `${p.name} rules removed`);
    const ann = await eventually(async () => annotation(kube, `app/${p.name}`), (a) => a === undefined);
    t.is(ann, undefined, `${p.name} annotation removed`);
  }
  const direct = await ask(sleep, web.ip, 8080, 'direct');
  t.true(direct.ok, direct.output);
  t.true(direct.output.includes(`from ${sleep.ip}`), `plain traffic again: ${direct.output}`);

  // The pod's own label works the same way: ambient enrols the running pod, none releases it.
  const solo = await tb.addPod({ node: 0, namespace: 'other', name: 'solo' });
  kube.put('namespaces', { metadata: { name: 'other' } });
  kube.put('pods', podObject(solo));
  procs.start(solo.uid, netnsPath(solo.netnsName));
  kube.put('pods', podObject(solo, AMBIENT));
  const on = await eventually(() => viewOf(tb, 'solo'), (v) => v?.state === 'enrolled' && v.listening === true);
  t.like(on, { state: 'enrolled', uid: solo.uid });
  t.true(hasOurRules(await podRules(solo)));
  kube.put('pods', podObject(solo, { 'istio.io/dataplane-mode': 'none' }));
  const off = await eventually(() => viewOf(tb, 'solo'), (v) => v?.state === 'skipped');
  t.is(off?.state, 'skipped');
  t.false(hasOurRules(await podRules(solo)));
});

/** The node netns keeps only the probe SNAT chain: no pod redirection rules landed there. */
function hasNodeRulesUntouched(natRules: string): boolean {
  return !/AMBIENT_OUTPUT|AMBIENT_PRERT/.test(natRules);
}

netnsTest.serial('kubernetes source: a pod ADDed through the plugin is enrolled from the API\'s view and annotated', async (t) => {
  const { tb, kube } = await kubeTestbed(t, true);
  kube.put('namespaces', { metadata: { name: 'app', labels: AMBIENT } });
  const uid = '7e57ab1e-0000-4000-8000-000000000001';
  // Like the API server: the pod exists (Pending, no IP) before kubelet runs the CNI chain.
  kube.put('pods', { metadata: { name: 'sleep', namespace: 'app', uid }, spec: { nodeName: tb.node(0).name }, status: { phase: 'Pending' } });
  const pod = await tb.addPod({ node: 0, namespace: 'app', name: 'sleep', uid });
  // kubelet then reports the IP through the status (keeping metadata, where the agent's annotation may already be).
  kube.put('pods', { ...kube.get('pods', 'app/sleep'), status: { phase: 'Running', podIP: pod.ip, podIPs: [{ ip: pod.ip }] } });
  const v = await viewOf(tb, 'sleep');
  t.like(v, { state: 'enrolled', containerId: pod.containerId, uid });
  t.true(hasOurRules(await podRules(pod)));
  t.is(await eventually(async () => annotation(kube, 'app/sleep'), (a) => a === 'enabled'), 'enabled');
  kube.put('namespaces', { metadata: { name: 'app' } });
  t.is((await eventually(() => viewOf(tb, 'sleep'), (x) => x?.state === 'skipped'))?.state, 'skipped');
  t.is(await eventually(async () => annotation(kube, 'app/sleep'), (a) => a === undefined), undefined);
  t.false(hasOurRules(await podRules(pod)));
});

netnsTest.serial('a broken kubeconfig stops the agent at start, before it installs anything on the node', async (t) => {
  const name = `amb-kcfg-${process.pid}`;
  const dir = mkdtempSync(join(tmpdir(), 'amb-kcfg-'));
  await execa('ip', ['netns', 'add', name]);
  t.teardown(async () => {
    await execa('ip', ['netns', 'del', name], { reject: false });
    rmSync(dir, { recursive: true, force: true });
  });
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, [
    'apiVersion: v1', 'kind: Config', 'current-context: fake',
    'clusters:', '- name: fake', '  cluster:', '    server: https://127.0.0.1:6443',
    'users:', '- name: agent', '  user:', `    client-certificate: ${join(dir, 'missing.crt')}`,
    'contexts:', '- name: fake', '  context:', '    cluster: fake', '    user: agent', '',
  ].join('\n'));
  const r = await execa(NSENTER, [`--net=${netnsPath(name)}`, process.execPath, AGENT_MAIN, 'agent', '--node-name', 'n0',
    '--state-dir', join(dir, 'state'), '--socket', join(dir, 'agent.sock'), '--ca-dir', join(dir, 'ca'),
    '--workload-source', 'kubernetes', '--kubeconfig', kubeconfig], { reject: false, timeout: 60_000 });
  t.is(r.exitCode, 1, 'a failed start');
  t.regex(String(r.stderr), /AMB_ERR_KUBE_API|kubeconfig/, 'the error names the kubeconfig');
  const nat = await execa('ip', ['netns', 'exec', name, 'iptables-save', '-t', 'nat'], { reject: false });
  t.notRegex(String(nat.stdout), /AMBIENT/, 'no node rule was installed');
  const sets = await execa('ip', ['netns', 'exec', name, 'ipset', 'list', '-n'], { reject: false });
  t.notRegex(String(sets.stdout), /ambient/, 'no ipset was made');
});
