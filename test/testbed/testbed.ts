// The simulated cluster: run dir, fabric and node netns, per-node CNI runtime, agent, kube-proxy rules and DNS, pods,
// Services and their YAML. It owns every name it creates (all carry the run id) and deletes exactly those in destroy().
// Over 500 lines on purpose: the Testbed class is the one owner of the run's names and cleanup; the pieces without that
// state are their own modules beside it (node, pod, cni-runtime, kube-proxy, cluster-dns, services, processes).
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, rmdirSync, rmSync } from 'node:fs';
import { chmod, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { Options, ResultPromise } from 'execa';
import { AgentProcess, type RedirectMode } from './agent-process.js';
import { registerLive, unregisterLive, type Destroyable } from './cleanup.js';
import { DNSMASQ, podResolvConf } from './cluster-dns.js';
import { CniRuntime, type CniOpOutcome } from './cni-runtime.js';
import { type CniConfList, k8sCniArgs } from './cni-types.js';
import { createNetns, deleteNetns, netnsPath } from './netns.js';
import {
  buildConflist,
  disableDad,
  type IpFamily,
  podCidr,
  podCidr6,
  podGateway,
  podGateway6,
  type TestbedNode,
  type TestbedNodeInfo,
  setupFabric,
  setupNodeNetwork,
  underlayIp,
  underlayIp6,
  validateIpFamilies,
} from './node.js';
import { DnsServer, SERVICE_CIDR, setupNodeServices } from './node-services.js';
import { TestbedPod } from './pod.js';
import { ProcessTracker } from './processes.js';
import { ServiceSync } from './service-sync.js';
import {
  ClusterIpAllocator,
  type ContainerPort,
  endpointSliceFileName,
  endpointSlicesFor,
  resolveServicePorts,
  serviceFileName,
  serviceHostname,
  serviceObject,
  type ServiceSpec,
  type TestbedService,
  validateServiceSpec,
} from './services.js';
import { AGENT_MAIN, CNI_MAIN, CNI_SHIM, CNI_STANDALONE, REFERENCE_CNI_DIR } from './repo.js';
import { type Labels, namespaceFileName, type PodObject, podFileName, WorkloadsDir } from './workloads.js';

export interface TestbedOptions {
  nodes: number;
  /**
   * The pods' address families, primary first: ['ipv4'] (default), ['ipv4', 'ipv6'] or ['ipv6', 'ipv4'] (dual-stack),
   * ['ipv6'] (IPv6-only pods). With IPv6, host-local hands out fd00:10:244:<node>::/64 too, nodes get fd00:172:30::<10+i>
   * and IPv6 routes to each other's pod ranges; the IPv4 underlay stays (node services and DNS use it). Services, their
   * kube-proxy rules and DNS stay IPv4: an IPv6-only pod is no Service endpoint here.
   */
  ipFamilies?: IpFamily[];
  /** Passed to every agent as --redirect-mode. Default 'iptables'. */
  redirectMode?: RedirectMode;
  /** Chain ambient-cni after bridge in every conflist. Default true. */
  withAmbientCni?: boolean;
  /** Start one agent per node and wait until ready. Default true. */
  agent?: boolean;
  /** Extra agent command-line arguments. */
  agentArgs?: string[];
  /** Further arguments for one node's agent (by node index), after agentArgs: e.g. one node with a setting off. */
  nodeAgentArgs?: Record<number, string[]>;
  /** Program (and leading args) that runs the agent, default [node, dist/agent/src/main.js]; e.g. a fake. */
  agentCommand?: string[];
  /** Added to the agents' environment (e.g. AMBIENT_MEMORY_RELEASE_MS). */
  agentEnv?: Record<string, string>;
  /** Agent --log-level. Default 'debug'. */
  agentLogLevel?: string;
  /** Default 20000. */
  agentReadyTimeoutMs?: number;
  /**
   * How `ambient-cni` is installed: the native shim with its fast path through the agent (what nodes run), the Node
   * plugin alone, or the standalone executable alone (the shim's fallback on nodes). Default 'shim'.
   */
  cniPlugin?: 'shim' | 'node' | 'standalone';
  /** ambient-cni `log_level`. Default 'info'. */
  cniLogLevel?: string;
  /** ambient-cni `agent_timeout_ms`. Default 10000. */
  agentTimeoutMs?: number;
  /** Timeout of each plugin invocation. Default 30000. */
  cniTimeoutMs?: number;
  /** Edit a node's conflist before it is written and used (e.g. append a failing plugin). */
  conflist?: (node: TestbedNodeInfo, list: CniConfList) => CniConfList;
  /** Runs once the node netns exist, before the agents start (e.g. to start a fake API server inside a node netns). */
  beforeAgents?: (tb: Testbed) => Promise<void>;
  /** Keep the run dir after destroy (default: env AMBIENT_KEEP_TESTBED=1). Namespaces are always deleted. */
  keep?: boolean;
}

/** A node by index, by name, or the node itself. */
export type NodeRef = number | string | TestbedNode;

export interface PodSpec {
  node: NodeRef;
  /** Default 'default'. */
  namespace?: string;
  name: string;
  labels?: Labels;
  /** Default: a random UUID. */
  uid?: string;
  /** Default 'default'. */
  serviceAccount?: string;
  /** Default 'eth0'. */
  ifname?: string;
  /** Container ports, written as `spec.containers[0].ports` (a Service's named targetPort resolves against them). */
  ports?: ContainerPort[];
}

const CONFLIST_FILE = '10-ambient-tb.conflist';
const TEARDOWN_DEL_TIMEOUT_MS = 5000;
/** Kubernetes object names the testbed accepts (they become part of a netns and a file name). */
const DNS_LABEL = /^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$/;
/** Where `ip netns exec` finds per-netns files it bind-mounts over /etc (resolv.conf). */
const ETC_NETNS = '/etc/netns';

export class Testbed implements Destroyable {
  readonly id: string;
  readonly runDir: string;
  readonly binDir: string;
  readonly workloadsDir: string;
  /** The cluster's builtin CA root folder, shared by all agents (tests can issue certificates from it). */
  readonly caDir: string;
  readonly logsDir: string;
  readonly fabricNetns: string;
  readonly nodes: TestbedNode[] = [];
  readonly workloads: WorkloadsDir;
  readonly keep: boolean;
  readonly #opts: TestbedOptions;
  /** Every netns this testbed created and has not deleted yet, in creation order. */
  readonly #netns = new Set<string>();
  readonly #pods = new Map<string, TestbedPod>();
  readonly #podTrackers = new Map<string, ProcessTracker>();
  readonly #tracker = new ProcessTracker();
  readonly #services = new Map<string, TestbedService>();
  readonly #clusterIps = new ClusterIpAllocator();
  readonly #dns: DnsServer[] = [];
  /** /etc/netns/<pod netns> folders this testbed created and has not removed yet. */
  readonly #etcNetns = new Set<string>();
  #sync: ServiceSync | undefined;
  #destroying: Promise<void> | undefined;

  private constructor(id: string, opts: TestbedOptions) {
    this.id = id;
    this.#opts = opts;
    this.runDir = `/tmp/ambient-tb-${id}`;
    this.binDir = join(this.runDir, 'bin');
    this.workloadsDir = join(this.runDir, 'workloads');
    this.caDir = join(this.runDir, 'ca');
    this.logsDir = join(this.runDir, 'logs');
    this.fabricNetns = `atb-${id}-fabric`;
    this.workloads = new WorkloadsDir(this.workloadsDir);
    this.keep = opts.keep ?? process.env.AMBIENT_KEEP_TESTBED === '1';
  }

  /** Build the cluster. On any failure everything created so far is destroyed and the error rethrown. */
  static async create(opts: TestbedOptions): Promise<Testbed> {
    if (!Number.isInteger(opts.nodes) || opts.nodes < 1 || opts.nodes > 200) {
      throw new Error(`nodes must be 1..200, got ${opts.nodes}`);
    }
    if (process.env.AMBIENT_DATA_PATH) {
      throw new Error('AMBIENT_DATA_PATH was removed with the agent\'s --data-path: the native HBONE data path is the only one; unset it');
    }
    const plugin = opts.cniPlugin ?? 'shim';
    const needed = plugin === 'standalone' ? [CNI_STANDALONE] : [CNI_MAIN, ...(plugin === 'shim' ? [CNI_SHIM] : [])];
    for (const built of (opts.withAmbientCni ?? true) ? needed : []) {
      if (!existsSync(built)) throw new Error(`${built} missing: run \`npm run build\``);
    }
    if ((opts.agent ?? true) && opts.agentCommand === undefined && !existsSync(AGENT_MAIN)) {
      throw new Error(`${AGENT_MAIN} missing: run \`npm run build\``);
    }
    if (!existsSync(DNSMASQ)) throw new Error(`${DNSMASQ} missing: install dnsmasq-base (scripts/setup.sh does)`);
    validateIpFamilies(opts.ipFamilies);
    const tb = new Testbed(reserveRunDir(), opts);
    registerLive(tb);
    try {
      await tb.#build();
    } catch (err) {
      await tb.destroy().catch(() => undefined);
      throw err;
    }
    return tb;
  }

  /** Live pods, in creation order. */
  get pods(): TestbedPod[] {
    return [...this.#pods.values()];
  }

  /** Names of the namespaces this testbed currently owns (for leak checks). */
  get netnsNames(): string[] {
    return [...this.#netns];
  }

  node(ref: NodeRef): TestbedNode {
    const node =
      typeof ref === 'object' ? ref : typeof ref === 'number' ? this.nodes[ref] : this.nodes.find((n) => n.name === ref);
    if (node === undefined || !this.nodes.includes(node)) {
      throw new Error(`testbed ${this.id}: no node ${typeof ref === 'object' ? ref.name : ref}`);
    }
    return node;
  }

  /** The node's agent; throws when the testbed runs without agents. */
  agent(ref: NodeRef): AgentProcess {
    const node = this.node(ref);
    if (node.agent === undefined) throw new Error(`testbed ${this.id}: ${node.name} has no agent (agent: false)`);
    return node.agent;
  }

  /**
   * Create a pod like kubelet would: Pod YAML first (Pending, no IP), netns with lo up, CNI ADD, then the
   * YAML gets status.podIP. On ADD failure the netns and YAML are removed and the CniPluginError rethrown.
   */
  async addPod(spec: PodSpec): Promise<TestbedPod> {
    this.#assertAlive();
    const node = this.node(spec.node);
    const namespace = spec.namespace ?? 'default';
    const key = `${namespace}/${spec.name}`;
    if (!DNS_LABEL.test(namespace) || !DNS_LABEL.test(spec.name)) throw new Error(`testbed ${this.id}: invalid pod name ${key}`);
    if (this.#pods.has(key) || this.#podTrackers.has(key)) throw new Error(`testbed ${this.id}: pod ${key} already exists`);
    const tracker = new ProcessTracker();
    this.#podTrackers.set(key, tracker);
    const uid = spec.uid ?? randomUUID();
    const labels = { ...spec.labels };
    const serviceAccount = spec.serviceAccount ?? 'default';
    const containerId = randomBytes(32).toString('hex');
    const netnsName = `atb-${this.id}-n${node.index}-${namespace}-${spec.name}`;
    const ifname = spec.ifname ?? 'eth0';
    const ports = (spec.ports ?? []).map((p) => ({ ...p }));
    const podObject: PodObject = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: spec.name, namespace, uid, labels },
      spec: { nodeName: node.name, serviceAccountName: serviceAccount, containers: containersOf(ports) },
      status: { phase: 'Pending', hostIP: node.underlayIp, conditions: [{ type: 'Ready', status: 'False' }] },
    };
    const cniArgs = k8sCniArgs({ namespace, name: spec.name, uid, infraContainerId: containerId });
    const attachment = { containerId, netns: netnsPath(netnsName), ifname, args: cniArgs };
    let added = false;
    try {
      // Like Kubernetes, a pod's namespace exists: write it (no labels) unless someone already did.
      if (!existsSync(join(this.workloadsDir, namespaceFileName(namespace)))) await this.setNamespace(namespace, {});
      await this.workloads.writePod(podObject);
      await this.#writeResolvConf(netnsName, namespace, node.podGateway);
      await this.#createNetns(netnsName);
      if (node.ipFamilies.includes('ipv6')) await disableDad(netnsName);
      const outcome = await node.cni.add(attachment);
      added = true;
      const ips = podAddresses(outcome.result.ips ?? []);
      for (const f of node.ipFamilies) if (!ips.some((a) => familyOf(a) === f)) throw new Error(`CNI ADD for ${key} returned no ${f} address (got ${ips.join(', ') || 'none'})`);
      const ip = ips.find((a) => familyOf(a) === node.ipFamilies[0]) as string;
      const pod = new TestbedPod({
        node,
        namespace,
        name: spec.name,
        uid,
        serviceAccount,
        labels,
        containerId,
        netnsName,
        ifname,
        cniArgs,
        ip,
        ips,
        addOutcome: outcome,
        tracker,
        ports,
      });
      this.#pods.set(key, pod);
      await this.workloads.writePod(this.#podObject(pod));
    } catch (err) {
      if (!this.#pods.has(key)) {
        this.#podTrackers.delete(key);
        if (added) {
          await node.cni.del(attachment, { continueOnError: true, timeoutMs: TEARDOWN_DEL_TIMEOUT_MS }).catch(() => undefined);
        }
        if (this.#netns.has(netnsName)) {
          await deleteNetns(netnsName).catch(() => undefined);
          this.#netns.delete(netnsName);
        }
        await this.workloads.remove(podFileName(namespace, spec.name)).catch(() => undefined);
        await this.#removeResolvConf(netnsName).catch(() => undefined);
      }
      throw err;
    }
    await this.syncServices();
    const pod = this.#pods.get(key);
    if (pod === undefined) throw new Error(`testbed ${this.id}: pod ${key} was deleted while it was being added`);
    return pod;
  }

  /** Many ADDs in parallel (at most `concurrency` at once, default 8). Throws AggregateError if any failed; the others stay. */
  async addPods(specs: PodSpec[], opts: { concurrency?: number } = {}): Promise<TestbedPod[]> {
    const results: PromiseSettledResult<TestbedPod>[] = new Array(specs.length);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < specs.length) {
        const i = next++;
        const spec = specs[i];
        if (spec === undefined) continue;
        try {
          results[i] = { status: 'fulfilled', value: await this.addPod(spec) };
        } catch (reason) {
          results[i] = { status: 'rejected', reason };
        }
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(opts.concurrency ?? 8, specs.length)) }, worker));
    const errors = results.flatMap((r) => (r.status === 'rejected' ? [r.reason] : []));
    if (errors.length > 0) throw new AggregateError(errors, `${errors.length} of ${specs.length} pod ADDs failed`);
    return results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  }

  /**
   * Delete a pod like kubelet: stop its processes, CNI DEL, delete its netns, then its YAML. If DEL fails the
   * pod is left as it is and the error thrown, unless `force` (then netns and YAML go anyway).
   */
  async deletePod(pod: TestbedPod, opts: { force?: boolean; timeoutMs?: number } = {}): Promise<CniOpOutcome> {
    this.#assertAlive();
    await this.#podTrackers.get(pod.key)?.stopAll();
    let outcome: CniOpOutcome = { invocations: [], durationMs: 0 };
    try {
      outcome = await pod.node.cni.del(pod.attachment, opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs });
    } catch (err) {
      if (opts.force !== true) throw err;
    }
    await deleteNetns(pod.netnsName);
    this.#netns.delete(pod.netnsName);
    await this.#removeResolvConf(pod.netnsName);
    this.#pods.delete(pod.key);
    this.#podTrackers.delete(pod.key);
    await this.workloads.remove(podFileName(pod.namespace, pod.name));
    await this.syncServices();
    return outcome;
  }

  /** CNI CHECK of the pod's attachment. */
  checkPod(pod: TestbedPod): Promise<CniOpOutcome> {
    return pod.node.cni.check(pod.attachment);
  }

  /** Write (or overwrite) the Namespace object with these labels. */
  async setNamespace(name: string, labels: Labels): Promise<void> {
    await this.workloads.writeNamespace(name, labels);
  }

  /** Replace the pod's labels and rewrite its YAML (EndpointSlices, kube-proxy and DNS follow before this returns). */
  async setPodLabels(pod: TestbedPod, labels: Labels): Promise<void> {
    pod.labels = { ...labels };
    await this.workloads.writePod(this.#podObject(pod));
    await this.syncServices();
  }

  /** Set the pod's Ready condition (Pod YAML status.conditions); EndpointSlices, kube-proxy and DNS follow before this returns. */
  async setPodReady(pod: TestbedPod, ready: boolean): Promise<void> {
    this.#assertAlive();
    pod.ready = ready;
    await this.workloads.writePod(this.#podObject(pod));
    await this.syncServices();
  }

  /** Live Services, in creation order. */
  get services(): TestbedService[] {
    return [...this.#services.values()];
  }

  service(namespace: string, name: string): TestbedService {
    const svc = this.#services.get(`${namespace}/${name}`);
    if (svc === undefined) throw new Error(`testbed ${this.id}: no Service ${namespace}/${name}`);
    return svc;
  }

  /**
   * Create a Service: its v1 YAML (`svc-<ns>-<name>.yaml`), its EndpointSlices (`eps-<ns>-<name>.yaml`) from the pods its
   * selector matches (or its explicit endpoints), kube-proxy rules on every node and its DNS name, all before returning.
   */
  async addService(spec: ServiceSpec): Promise<TestbedService> {
    this.#assertAlive();
    const namespace = spec.namespace ?? 'default';
    const key = `${namespace}/${spec.name}`;
    if (this.#services.has(key)) throw new Error(`testbed ${this.id}: Service ${key} already exists`);
    const full = { ...spec, namespace };
    validateServiceSpec(full);
    const ports = resolveServicePorts(`Service ${key}`, full.ports, full.clusterIP === 'None' || full.type === 'ExternalName');
    let clusterIP = '';
    if (full.type !== 'ExternalName') {
      if (full.clusterIP === undefined) clusterIP = this.#clusterIps.allocate();
      else if (full.clusterIP === 'None') clusterIP = 'None';
      else {
        this.#clusterIps.reserve(full.clusterIP);
        clusterIP = full.clusterIP;
      }
    }
    const svc: TestbedService = { namespace, name: spec.name, uid: randomUUID(), clusterIP, hostname: serviceHostname(namespace, spec.name), ports, spec: full };
    this.#services.set(key, svc);
    try {
      if (!existsSync(join(this.workloadsDir, namespaceFileName(namespace)))) await this.setNamespace(namespace, {});
      await this.workloads.write(serviceFileName(namespace, spec.name), serviceObject(svc));
    } catch (err) {
      this.#services.delete(key);
      if (clusterIP !== '' && clusterIP !== 'None') this.#clusterIps.release(clusterIP);
      throw err;
    }
    await this.syncServices();
    return svc;
  }

  /** Change a Service (its ClusterIP is immutable, as in Kubernetes); YAML, EndpointSlices, rules and DNS follow before returning. */
  async updateService(namespace: string, name: string, changes: Partial<ServiceSpec>): Promise<TestbedService> {
    this.#assertAlive();
    const old = this.service(namespace, name);
    if (changes.clusterIP !== undefined && changes.clusterIP !== (old.spec.clusterIP ?? old.clusterIP)) {
      throw new Error(`testbed ${this.id}: Service ${namespace}/${name}: clusterIP is immutable`);
    }
    if ((changes.type === 'ExternalName') !== (old.spec.type === 'ExternalName') && changes.type !== undefined) {
      throw new Error(`testbed ${this.id}: Service ${namespace}/${name}: changing to or from ExternalName is not supported`);
    }
    const full = { ...old.spec, ...changes, namespace, name };
    validateServiceSpec(full);
    const ports = resolveServicePorts(`Service ${namespace}/${name}`, full.ports, old.clusterIP === 'None' || full.type === 'ExternalName');
    const svc: TestbedService = { ...old, ports, spec: full };
    await this.workloads.write(serviceFileName(namespace, name), serviceObject(svc));
    this.#services.set(`${namespace}/${name}`, svc);
    await this.syncServices();
    return svc;
  }

  /** Delete a Service, its EndpointSlices, rules and DNS name (all gone before this returns). */
  async removeService(namespace: string, name: string): Promise<void> {
    this.#assertAlive();
    const svc = this.service(namespace, name);
    this.#services.delete(`${namespace}/${name}`);
    if (svc.clusterIP !== '' && svc.clusterIP !== 'None') this.#clusterIps.release(svc.clusterIP);
    await this.workloads.remove(serviceFileName(namespace, name));
    await this.syncServices();
  }

  /**
   * One sync that starts now: the EndpointSlice controller writes its slices, then every node's kube-proxy rules and the
   * DNS records are rendered from all Services and EndpointSlices in the workloads folder (including ones written with
   * writeWorkload) and applied. The folder is also watched, so direct writes are picked up within ~100 ms anyway.
   */
  async syncServices(): Promise<void> {
    this.#assertAlive();
    if (this.#sync === undefined) throw new Error(`testbed ${this.id}: services are not set up yet`);
    await this.#sync.request();
  }

  /** Write any Kubernetes-shaped objects (AuthorizationPolicy, PeerAuthentication, ...) into workloads/. */
  writeWorkload(fileName: string, docs: object | object[]): Promise<string> {
    return this.workloads.write(fileName, docs);
  }

  removeWorkload(fileName: string): Promise<void> {
    return this.workloads.remove(fileName);
  }

  /** Run a command in the node netns (e.g. a kubelet-style probe to a pod IP). */
  nodeExec<O extends Options = {}>(node: NodeRef, cmd: string, args: readonly string[] = [], opts?: O): ResultPromise<{} & O> {
    return this.#tracker.runInNetns(this.node(node).netnsName, cmd, args, opts, false);
  }

  /** Start a long-running process in the node netns (e.g. tshark on eth0); killed at teardown. */
  nodeSpawn<O extends Options = {}>(node: NodeRef, cmd: string, args: readonly string[] = [], opts?: O): ResultPromise<{} & O> {
    return this.#tracker.runInNetns(this.node(node).netnsName, cmd, args, opts, true);
  }

  /** Start a long-running process in the fabric netns (e.g. tshark on br0: sees all inter-node traffic). */
  fabricSpawn<O extends Options = {}>(cmd: string, args: readonly string[] = [], opts?: O): ResultPromise<{} & O> {
    return this.#tracker.runInNetns(this.fabricNetns, cmd, args, opts, true);
  }

  /**
   * Idempotent teardown: stop pod and node processes, best-effort CNI DEL of remaining pods (agents still up),
   * stop agents, delete pod, node and fabric netns by exact name, remove the run dir (unless kept).
   */
  destroy(): Promise<void> {
    this.#destroying ??= this.#teardown();
    return this.#destroying;
  }

  /** Synchronous best effort for process-exit hooks: SIGKILL, delete netns, remove the run dir. */
  destroySync(): void {
    for (const t of this.#podTrackers.values()) t.killAllSync();
    this.#tracker.killAllSync();
    for (const node of this.nodes) node.agent?.killSync();
    for (const name of [...this.#etcNetns]) {
      rmSync(join(ETC_NETNS, name), { recursive: true, force: true });
      this.#etcNetns.delete(name);
    }
    for (const name of [...this.#netns].reverse()) {
      try {
        execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
      } catch {
        // already gone
      }
      this.#netns.delete(name);
    }
    if (!this.keep) rmSync(this.runDir, { recursive: true, force: true });
    unregisterLive(this);
  }

  async #teardown(): Promise<void> {
    try {
      await this.#teardownAll();
    } finally {
      for (const name of [...this.#etcNetns]) {
        rmSync(join(ETC_NETNS, name), { recursive: true, force: true });
        this.#etcNetns.delete(name);
      }
    }
  }

  async #teardownAll(): Promise<void> {
    const errors: unknown[] = [];
    await this.#sync?.close();
    await Promise.all([...this.#podTrackers.values()].map((t) => t.stopAll()));
    await this.#tracker.stopAll();
    await Promise.allSettled(
      [...this.#pods.values()].map((p) => p.node.cni.del(p.attachment, { timeoutMs: TEARDOWN_DEL_TIMEOUT_MS, continueOnError: true })),
    );
    await Promise.all(this.nodes.map((n) => n.agent?.stop()));
    for (const name of [...this.#netns].reverse()) {
      try {
        await deleteNetns(name);
        this.#netns.delete(name);
      } catch (err) {
        errors.push(err);
      }
    }
    this.#pods.clear();
    this.#podTrackers.clear();
    try {
      if (this.keep) process.stderr.write(`testbed ${this.id}: kept ${this.runDir} for debugging\n`);
      else rmSync(this.runDir, { recursive: true, force: true });
    } catch (err) {
      errors.push(err);
    }
    unregisterLive(this);
    if (errors.length > 0) throw new AggregateError(errors, `testbed ${this.id}: teardown left things behind`);
  }

  async #build(): Promise<void> {
    const o = this.#opts;
    for (const d of ['bin', 'net.d', 'cache', 'ipam', 'state', 'workloads', 'logs']) {
      await mkdir(join(this.runDir, d), { recursive: true });
    }
    for (const p of ['bridge', 'host-local', 'loopback']) await symlink(join(REFERENCE_CNI_DIR, p), join(this.binDir, p));
    const wrapper = join(this.binDir, 'ambient-cni');
    if ((o.cniPlugin ?? 'shim') === 'shim') {
      await symlink(CNI_SHIM, wrapper);
    } else if (o.cniPlugin === 'standalone') {
      await symlink(CNI_STANDALONE, wrapper);
    } else {
      await writeFile(wrapper, `#!/bin/sh\nexec ${shQuote(process.execPath)} ${shQuote(CNI_MAIN)} "$@"\n`);
      await chmod(wrapper, 0o755);
    }

    await this.#createNetns(this.fabricNetns);
    await setupFabric(this.fabricNetns);
    for (let i = 0; i < o.nodes; i++) {
      const node = this.#describeNode(i);
      this.nodes.push(node);
      await this.#createNetns(node.netnsName);
      await setupNodeNetwork(this.fabricNetns, node, o.nodes);
      for (const d of [node.confDir, node.cacheDir, node.ipamDir, node.stateDir]) await mkdir(d, { recursive: true });
      await writeFile(node.conflistPath, JSON.stringify(node.conflist, null, 2));
    }
    await this.#startServices();
    this.#assertAlive();
    await o.beforeAgents?.(this);
    if (o.agent ?? true) {
      // allSettled: a failed start must not leave the others' rejections unhandled.
      const started = await Promise.allSettled(this.nodes.map((n) => n.agent?.start()));
      const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
    }
  }

  /**
   * Services on every node: bridged traffic through iptables, kube-proxy's base chains and jumps, a dnsmasq on the pod
   * gateway address serving <runDir>/dns/hosts; then the first sync and the folder watcher.
   */
  async #startServices(): Promise<void> {
    const dnsDir = join(this.runDir, 'dns');
    const tmpDir = join(this.runDir, 'dns-tmp');
    const hostsFile = join(dnsDir, 'hosts');
    // dnsmasq drops to an unprivileged user: it must be able to reach and read the hosts folder.
    chmodSync(this.runDir, 0o755);
    for (const d of [dnsDir, tmpDir]) {
      await mkdir(d, { recursive: true });
      await chmod(d, 0o755);
    }
    await writeFile(hostsFile, '');
    await chmod(hostsFile, 0o644);
    for (const node of this.nodes) {
      this.#assertAlive();
      await setupNodeServices(node.netnsName);
      const dns = new DnsServer(
        node.netnsName,
        { listenAddress: node.podGateway, hostsDir: dnsDir, pidFile: join(this.runDir, `dnsmasq-${node.name}.pid`) },
        hostsFile,
        join(this.logsDir, `dnsmasq-${node.name}.log`),
      );
      this.#dns.push(dns);
      await dns.start(this.#tracker);
    }
    this.#sync = new ServiceSync({
      workloads: this.workloads,
      nodes: this.nodes,
      controllerFiles: () => this.#endpointSliceFiles(),
      dns: { hostsFile, tmpDir, servers: this.#dns, current: '' },
      onBackgroundError: (err) => {
        if (this.#destroying === undefined) process.stderr.write(`testbed ${this.id}: background service sync failed: ${String(err)}\n`);
      },
    });
    await this.#sync.request();
    this.#sync.watch();
  }

  /** The EndpointSlice controller: desired `eps-<ns>-<name>.yaml` files from the live Services and pods. */
  #endpointSliceFiles(): Map<string, object[]> {
    const pods = this.pods.map((p) => ({
      namespace: p.namespace,
      name: p.name,
      uid: p.uid,
      labels: p.labels,
      nodeName: p.node.name,
      ip: p.ip4 ?? '', // the testbed's Services are IPv4 only: an IPv6-only pod is no endpoint
      ready: p.ready,
      ports: p.ports,
    }));
    const files = new Map<string, object[]>();
    for (const svc of this.#services.values()) {
      const slices = endpointSlicesFor(svc, pods);
      if (slices.length > 0) files.set(endpointSliceFileName(svc.namespace, svc.name), slices);
    }
    return files;
  }

  /** /etc/netns/<netns>/resolv.conf, which `ip netns exec` bind-mounts over /etc/resolv.conf for the pod. */
  async #writeResolvConf(netnsName: string, namespace: string, nameserver: string): Promise<void> {
    const dir = join(ETC_NETNS, netnsName);
    this.#etcNetns.add(netnsName);
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'resolv.conf'), podResolvConf(namespace, nameserver));
  }

  async #removeResolvConf(netnsName: string): Promise<void> {
    await rm(join(ETC_NETNS, netnsName), { recursive: true, force: true });
    this.#etcNetns.delete(netnsName);
  }

  /** Create a netns owned by this testbed; if destroy() started meanwhile, delete it again and throw. */
  async #createNetns(name: string): Promise<void> {
    this.#assertAlive();
    this.#netns.add(name);
    await createNetns(name);
    if (this.#destroying !== undefined) {
      await deleteNetns(name).catch(() => undefined);
      this.#netns.delete(name);
      this.#assertAlive();
    }
  }

  #describeNode(i: number): TestbedNode {
    const o = this.#opts;
    const name = `atb-${this.id}-n${i}`;
    const paths = {
      socketPath: join(this.runDir, `${name}.sock`),
      stateDir: join(this.runDir, 'state', name),
      confDir: join(this.runDir, 'net.d', name),
      cacheDir: join(this.runDir, 'cache', name),
      ipamDir: join(this.runDir, 'ipam', name),
    };
    const info: TestbedNodeInfo = {
      index: i,
      name,
      netnsName: name,
      netnsPath: netnsPath(name),
      underlayIp: underlayIp(i),
      podCidr: podCidr(i),
      podGateway: podGateway(i),
      ipFamilies: validateIpFamilies(o.ipFamilies),
      underlayIp6: (o.ipFamilies ?? []).includes('ipv6') ? underlayIp6(i) : undefined,
      podCidr6: (o.ipFamilies ?? []).includes('ipv6') ? podCidr6(i) : undefined,
      podGateway6: (o.ipFamilies ?? []).includes('ipv6') ? podGateway6(i) : undefined,
      ...paths,
      conflistPath: join(paths.confDir, CONFLIST_FILE),
    };
    let conflist = buildConflist(info, {
      withAmbientCni: o.withAmbientCni ?? true,
      cniLogLevel: o.cniLogLevel ?? 'info',
      agentTimeoutMs: o.agentTimeoutMs ?? 10_000,
    });
    if (o.conflist !== undefined) conflist = o.conflist(info, conflist);
    const cni = new CniRuntime({
      conflist,
      binDirs: [this.binDir],
      cacheDir: paths.cacheDir,
      netns: name,
      ...(o.cniTimeoutMs !== undefined ? { timeoutMs: o.cniTimeoutMs } : {}),
    });
    const node: TestbedNode = { ...info, conflist, cni, agent: undefined };
    if (o.agent ?? true) {
      node.agent = new AgentProcess({
        ...(o.agentCommand !== undefined ? { command: o.agentCommand } : {}),
        ...(o.agentEnv !== undefined ? { env: o.agentEnv } : {}),
        nodeName: name,
        netnsPath: node.netnsPath,
        stateDir: paths.stateDir,
        socketPath: paths.socketPath,
        workloadsDir: this.workloadsDir,
        caDir: this.caDir,
        redirectMode: o.redirectMode ?? 'iptables',
        logLevel: o.agentLogLevel ?? 'debug',
        logFile: join(this.logsDir, `agent-${name}.log`),
        // The real agent knows the cluster's Service range, as a production config should (deploy/base/config.yaml).
        extraArgs: [...(o.agentCommand === undefined ? ['--service-cidrs', SERVICE_CIDR] : []), ...(o.agentArgs ?? []), ...(o.nodeAgentArgs?.[i] ?? [])],
        readyTimeoutMs: o.agentReadyTimeoutMs ?? 20_000,
      });
    }
    return node;
  }

  #podObject(pod: TestbedPod): PodObject {
    return {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: pod.name, namespace: pod.namespace, uid: pod.uid, labels: pod.labels },
      spec: { nodeName: pod.node.name, serviceAccountName: pod.serviceAccount, containers: containersOf(pod.ports) },
      status: {
        phase: 'Running',
        hostIP: pod.node.underlayIp,
        podIP: pod.ip,
        podIPs: pod.ips.map((ip) => ({ ip })),
        conditions: [{ type: 'Ready', status: pod.ready ? 'True' : 'False' }],
      },
    };
  }

  #assertAlive(): void {
    if (this.#destroying !== undefined) throw new Error(`testbed ${this.id} is destroyed`);
  }
}

/** Pick a fresh 4-hex run id by creating its run dir exclusively (mkdir fails if another run owns it). */
function reserveRunDir(): string {
  for (let attempt = 0; attempt < 50; attempt++) {
    const id = randomBytes(2).toString('hex');
    try {
      mkdirSync(`/tmp/ambient-tb-${id}`, { mode: 0o755 });
    } catch (err) {
      if (err instanceof Error && 'code' in err && err.code === 'EEXIST') continue;
      throw err;
    }
    // A namespace leaked by an earlier run with the same id would be deleted by our teardown: skip the id.
    if (listNetnsFiles().some((n) => n.startsWith(`atb-${id}-`))) {
      rmdirSync(`/tmp/ambient-tb-${id}`);
      continue;
    }
    return id;
  }
  throw new Error('testbed: no free run id after 50 attempts (stale /tmp/ambient-tb-* dirs?)');
}

function listNetnsFiles(): string[] {
  try {
    return readdirSync('/run/netns');
  } catch {
    return [];
  }
}

/** The pod's one container (`app`), with its ports when it has any. */
function containersOf(ports: readonly ContainerPort[]): NonNullable<PodObject['spec']['containers']> {
  return [{ name: 'app', ...(ports.length > 0 ? { ports: ports.map((p) => ({ name: p.name, containerPort: p.containerPort, protocol: p.protocol ?? 'TCP' })) } : {}) }];
}

/** The CNI result's addresses without prefix, in its order. */
function podAddresses(ips: { address: string }[]): string[] {
  return ips.map((ip) => ip.address.split('/')[0] ?? '').filter((a) => isIP(a) !== 0);
}

function familyOf(addr: string): IpFamily | undefined {
  const f = isIP(addr);
  return f === 4 ? 'ipv4' : f === 6 ? 'ipv6' : undefined;
}

function shQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

