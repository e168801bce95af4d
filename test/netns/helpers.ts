// Traffic and inspection helpers for the end-to-end tests: byte-exact transfers, echo servers, rule dumps, agent state.
// Everything runs inside the testbed's pod or node namespaces; nothing touches the root namespace.
import { createHash, randomBytes } from 'node:crypto';
import type { RedirectMode, Testbed, TestbedPod } from '../testbed/index.js';
import type { PodView } from '../../agent/src/reconcile/enroller.js';
import { AGENT_MAIN } from '../testbed/repo.js';
import { podCounters } from '../../agent/src/redirect/ebpf.js';
import { STAT_NAMES, type Counters } from '../../agent/src/redirect/ebpf-config.js';

/** Absolute: node_modules/.bin holds an unrelated `nft` that would shadow nftables under npx/ava. */
export const NFT = '/usr/sbin/nft';

export const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/** Starts a server in `pod` that reads everything on `port` once; `digest` resolves with its sha256. */
export async function startSink(pod: TestbedPod, port: number): Promise<{ digest: Promise<string> }> {
  const proc = pod.spawn('sh', ['-c', `ncat -l ${port} --recv-only | sha256sum`], { timeout: 60_000 });
  await pod.waitForPort(port);
  // Wrapped in an object: an async function returning a bare promise would wait for it. Marked handled: a test that fails
  // before awaiting it has the sink killed at teardown, which must not add an unhandled rejection (callers still see it).
  const digest = proc.then((r) => String(r.stdout).split(' ')[0] ?? '');
  digest.catch(() => undefined);
  return { digest };
}

/** Sends `size` random bytes from `client` to ip:port; resolves with their sha256. */
export async function sendRandom(client: TestbedPod, ip: string, port: number, size: number): Promise<string> {
  const data = randomBytes(size);
  await client.exec('ncat', ['--send-only', '-w', '5', ip, String(port)], { input: data, timeout: 30_000 });
  return sha256(data);
}

/** A pod's IPv6 address; throws when it has none (a dual-stack or IPv6-only testbed is expected). */
export function ip6(p: TestbedPod): string {
  if (!p.ip6) throw new Error(`${p.key} has no IPv6 address`);
  return p.ip6;
}

/** An echo server answering "pong:<line> from <client addr>" for every connection. */
export async function startEcho(pod: TestbedPod, port: number): Promise<void> {
  void pod.spawn('ncat', ['-l', '-k', String(port), '--sh-exec', 'read l; echo "pong:$l from $NCAT_REMOTE_ADDR"']).catch(() => undefined);
  await pod.waitForPort(port);
}

export interface Attempt {
  ok: boolean;
  output: string;
}

/** One request/response to an echo server; never throws. */
export async function ask(client: TestbedPod, ip: string, port: number, msg = 'ping'): Promise<Attempt> {
  const r = await client.exec('ncat', ['--no-shutdown', '-w', '3', ip, String(port)], { input: `${msg}\n`, timeout: 10_000, reject: false });
  const output = `${String(r.stdout)}${String(r.stderr)}`.trim();
  return { ok: r.exitCode === 0 && String(r.stdout).includes(`pong:${msg}`), output };
}

export interface PodRules {
  iptables: string;
  nft: string;
  /** `tc filter show` for both directions of the pod interface, `ip rule`, table 100 and accept_local (the ebpf pieces). */
  ebpf: string;
}

/** Everything of ours a pod could hold: iptables-save of the nat and mangle tables, the nft ruleset and the ebpf and reply-routing pieces. */
export async function podRules(pod: TestbedPod): Promise<PodRules> {
  const ipt = await pod.exec('sh', ['-c', 'iptables-save -t nat; iptables-save -t mangle'], { reject: false });
  const nft = await pod.exec(NFT, ['list', 'ruleset'], { reject: false });
  const dev = pod.ifname;
  const ebpf = await pod.exec('sh', ['-c', [
    `tc filter show dev ${dev} ingress`, `tc filter show dev ${dev} egress`, 'ip rule show', 'ip route show table 100',
    `echo accept_local=$(sysctl -n net.ipv4.conf.${dev}.accept_local)`,
  ].join('; ')], { reject: false });
  return { iptables: String(ipt.stdout), nft: String(nft.stdout), ebpf: String(ebpf.stdout) };
}

export function hasOurRules(r: PodRules): boolean {
  return /AMBIENT_/.test(r.iptables) || /ambient-nat/.test(r.nft) || /ambient_(in|out)|fwmark 0x1000|fwmark 0x111|local default|accept_local=1/.test(r.ebpf);
}

/** The local address of every TCP socket listening inside the pod, as `ss` prints it: `127.0.0.1:15001`, `[::]:15008`, `*:9000`. */
export async function listeningAddresses(pod: TestbedPod): Promise<string[]> {
  const r = await pod.exec('ss', ['-Hltn']);
  return String(r.stdout).split('\n').map((l) => l.split(/\s+/)[3] ?? '').filter((a) => /:\d+$/.test(a));
}

/** TCP ports listening inside the pod. */
export async function listeningPorts(pod: TestbedPod): Promise<number[]> {
  return (await listeningAddresses(pod)).map((a) => Number(/:(\d+)$/.exec(a)?.[1])).filter((n) => n > 0);
}

/** The agent's view of its pods on a node. */
export async function agentPods(tb: Testbed, node: number): Promise<PodView[]> {
  const r = await tb.agent(node).request('GET', '/v1/pods');
  return (r.body as { pods: PodView[] }).pods;
}

export async function agentPod(tb: Testbed, pod: TestbedPod): Promise<PodView | undefined> {
  return (await agentPods(tb, pod.node.index)).find((p) => p.containerId === pod.containerId);
}

export async function eventually<T>(fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (ok(v) || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
}

export const AMBIENT = { 'istio.io/dataplane-mode': 'ambient' };
export const NONE = { 'istio.io/dataplane-mode': 'none' };

/**
 * The seeds' scenario: namespace app in ambient mode, productpage (label app=productpage) on node 1 with an echo
 * server on 9080, and the clients sleep and notsleep (each with its own service account) on node 0.
 */
/** An enrolled client (app/sleep, node 0) and a plain server (plain/web, node 1) echoing on 8080. */
export async function meshClientPlainServer(tb: Testbed): Promise<{ client: TestbedPod; server: TestbedPod }> {
  await tb.setNamespace('app', AMBIENT);
  const [client, server] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep' },
    { node: 1, namespace: 'plain', name: 'web' },
  ]);
  if (!client || !server) throw new Error('pods missing');
  await startEcho(server, 8080);
  return { client, server };
}

export async function bookinfo(tb: Testbed): Promise<{ productpage: TestbedPod; sleep: TestbedPod; notsleep: TestbedPod }> {
  await tb.setNamespace('app', AMBIENT);
  const [productpage, sleep, notsleep] = await tb.addPods([
    { node: 1, namespace: 'app', name: 'productpage', serviceAccount: 'productpage', labels: { app: 'productpage' } },
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 0, namespace: 'app', name: 'notsleep', serviceAccount: 'notsleep' },
  ]);
  if (!productpage || !sleep || !notsleep) throw new Error('pods missing');
  await startEcho(productpage, 9080);
  return { productpage, sleep, notsleep };
}

/** Runs `ambient-node <args>` inside a node against its agent; never throws on a non-zero exit. */
export function cli(tb: Testbed, node: number) {
  return async (...args: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }> => {
    const r = await tb.nodeExec(node, process.execPath, [AGENT_MAIN, ...args, '--socket', tb.node(node).socketPath], { reject: false });
    return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
  };
}

/** One HTTP request from inside a node's network namespace (where the agent's 127.0.0.1 admin ports live). */
export async function adminHttp(tb: Testbed, node: number, method: string, url: string): Promise<{ status: number; body: string }> {
  const script = `fetch(${JSON.stringify(url)}, { method: ${JSON.stringify(method)} })
    .then(async (r) => process.stdout.write(JSON.stringify({ status: r.status, body: await r.text() })))
    .catch((e) => { process.stderr.write(String(e)); process.exit(1); });`;
  const r = await tb.nodeExec(node, process.execPath, ['-e', script], { timeout: 10_000 });
  return JSON.parse(String(r.stdout)) as { status: number; body: string };
}

/** The value of the first Prometheus sample of `name` whose labels include every given pair, or undefined. */
export function metricSample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

/** The host side of a pod's veth in its node's netns, found through the peer ifindex (`eth0@ifN`), whatever CNI made it. */
export async function hostVeth(tb: Testbed, pod: TestbedPod): Promise<string> {
  const own = String((await pod.exec('ip', ['-o', 'link', 'show', 'dev', pod.ifname])).stdout);
  const peer = /@if(\d+):/.exec(own)?.[1];
  if (!peer) throw new Error(`${pod.key}: ${pod.ifname} is not a veth with a visible peer: ${own}`);
  const links = String((await tb.nodeExec(pod.node.index, 'ip', ['-o', 'link', 'show'])).stdout);
  const line = links.split('\n').find((l) => l.startsWith(`${peer}: `));
  const name = line ? /^\d+: ([^@:]+)/.exec(line)?.[1] : undefined;
  if (!name) throw new Error(`${pod.key}: no interface with index ${peer} in ${pod.node.name}`);
  return name;
}

/** One ADD or DEL of a pod's attachment sent to its agent alone (no other plugin of the chain runs: the pod keeps its interface). */
export async function agentCni(tb: Testbed, pod: TestbedPod, command: 'ADD' | 'DEL'): Promise<{ statusCode: number; body: unknown }> {
  const event = {
    command, cniVersion: '1.0.0', containerId: pod.containerId, netns: pod.netnsPath, ifname: pod.ifname, args: '',
    k8s: { podNamespace: pod.namespace, podName: pod.name, podUid: pod.uid },
    ips: (pod.addOutcome.result.ips ?? []).map((ip) => ({ address: ip.address })), network: 'testbed',
  };
  const r = await tb.agent(pod.node.index).request('POST', command === 'ADD' ? '/v1/cni/add' : '/v1/cni/del', event, 15_000);
  return { statusCode: r.statusCode, body: r.body };
}

/** A node's probe set of one family as the backend keeps it (ipset for iptables and ebpf, the nft host table's set for nftables). */
export async function probeSet(tb: Testbed, node: number, mode: RedirectMode, family: 4 | 6 = 4): Promise<string> {
  const r = mode === 'nftables'
    ? await tb.nodeExec(node, NFT, ['list', 'set', 'inet', 'ambient-node-host', `probes-v${family}`], { reject: false })
    : await tb.nodeExec(node, 'ipset', ['list', `ambient-node-probes-v${family}`], { reject: false });
  return `${String(r.stdout)}${String(r.stderr)}`;
}

/** Whether a set listing holds exactly `addr` (not merely a longer address it begins). */
export function holds(listing: string, addr: string): boolean {
  return listing.split(/[\s{},]+/).includes(addr);
}

/**
 * A pod's rule dump (podRules) as lines to compare across a re-install: without what changes by itself (iptables-save's
 * comments and chain counters, packet counters, eBPF program ids).
 */
export function comparableRules(r: PodRules): string[] {
  return [r.iptables, r.nft, r.ebpf].join('\n').split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('#'))
    .map((l) => l.replace(/\[\d+:\d+\]/g, '').replace(/ packets \d+ bytes \d+/g, '').replace(/ id \d+/g, '').trimEnd());
}

/** Un-enrols a running pod (labelled dataplane-mode=none) and waits until its agent reports it skipped. */
export async function unenrolByLabel(tb: Testbed, pod: TestbedPod): Promise<void> {
  await tb.setPodLabels(pod, { ...pod.labels, ...NONE });
  const v = await eventually(() => agentPod(tb, pod), (p) => p?.state === 'skipped');
  if (v?.state !== 'skipped') throw new Error(`${pod.key} was not un-enrolled: ${JSON.stringify(v)}`);
}

/** The eBPF programs' counters in a pod, every one of them; throws when no programs are attached or a counter is missing. */
export function ebpfCounters(pod: TestbedPod): Counters {
  const c = podCounters(pod.netnsPath, pod.ifname);
  if (!c) throw new Error(`no ebpf programs attached in ${pod.key}`);
  const missing = STAT_NAMES.filter((n) => c[n] === undefined);
  if (missing.length) throw new Error(`the programs in ${pod.key} have no counter ${missing.join(', ')} (an older build of bpf/redirect.c?)`);
  return c as Counters;
}
