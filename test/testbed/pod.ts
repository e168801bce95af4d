// A pod handle: its netns, CNI attachment and address, and the way to run things in it. Every client and
// server runs inside the pod netns (ip netns exec), never in the root netns.
import type { Options, ResultPromise } from 'execa';
import { isIPv4, isIPv6 } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CniAddOutcome } from './cni-runtime.js';
import type { RuntimeConf } from './cni-types.js';
import { execInNetns, netnsPath } from './netns.js';
import type { TestbedNode } from './node.js';
import type { ProcessTracker } from './processes.js';
import type { ContainerPort } from './services.js';
import type { Labels } from './workloads.js';

export interface PodInit {
  node: TestbedNode;
  namespace: string;
  name: string;
  uid: string;
  serviceAccount: string;
  labels: Labels;
  containerId: string;
  netnsName: string;
  ifname: string;
  cniArgs: [string, string][];
  /** The primary address (of the cluster's first family). */
  ip: string;
  /** Every address the CNI result gave, in its order. Default [ip]. */
  ips?: string[];
  addOutcome: CniAddOutcome;
  tracker: ProcessTracker;
  /** Container ports (named ones resolve a Service's named targetPort). Default none. */
  ports?: ContainerPort[];
  /** Default true. */
  ready?: boolean;
}

export class TestbedPod {
  readonly node: TestbedNode;
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
  readonly serviceAccount: string;
  /** 64 hex chars, CNI_CONTAINERID. */
  readonly containerId: string;
  readonly netnsName: string;
  readonly netnsPath: string;
  readonly ifname: string;
  /** The primary address without prefix, from the CNI result: IPv4, unless the cluster's first family is IPv6. */
  readonly ip: string;
  /** Every address from the CNI result (one per family in a dual-stack cluster), without prefix. */
  readonly ips: string[];
  /** The ADD's result and per-plugin timings. */
  readonly addOutcome: CniAddOutcome;
  /** Current labels (as last written to the Pod YAML). */
  labels: Labels;
  /** The Ready condition as last written to the Pod YAML (tb.setPodReady changes it). */
  ready: boolean;
  /** The container's ports, as written to the Pod YAML. */
  readonly ports: ContainerPort[];
  readonly #cniArgs: [string, string][];
  readonly #tracker: ProcessTracker;

  constructor(init: PodInit) {
    this.node = init.node;
    this.namespace = init.namespace;
    this.name = init.name;
    this.uid = init.uid;
    this.serviceAccount = init.serviceAccount;
    this.labels = init.labels;
    this.ready = init.ready ?? true;
    this.ports = init.ports ?? [];
    this.containerId = init.containerId;
    this.netnsName = init.netnsName;
    this.netnsPath = netnsPath(init.netnsName);
    this.ifname = init.ifname;
    this.ip = init.ip;
    this.ips = init.ips ?? [init.ip];
    this.addOutcome = init.addOutcome;
    this.#cniArgs = init.cniArgs;
    this.#tracker = init.tracker;
  }

  /** The pod's IPv4 address, if it has one. */
  get ip4(): string | undefined {
    return this.ips.find((a) => isIPv4(a));
  }

  /** The pod's IPv6 address, if it has one. */
  get ip6(): string | undefined {
    return this.ips.find((a) => isIPv6(a));
  }

  /** "namespace/name" */
  get key(): string {
    return `${this.namespace}/${this.name}`;
  }

  /** The runtime config the CNI runtime used for this pod (for direct DEL/CHECK calls). */
  get attachment(): RuntimeConf {
    return { containerId: this.containerId, netns: this.netnsPath, ifname: this.ifname, args: this.#cniArgs };
  }

  /** Run a short command inside the pod netns (execa semantics: rejects on non-zero exit unless reject:false). */
  exec<O extends Options = {}>(cmd: string, args: readonly string[] = [], opts?: O): ResultPromise<{} & O> {
    return this.#tracker.runInNetns(this.netnsName, cmd, args, opts, false);
  }

  /** Start a long-running process (a server) inside the pod netns; killed, with its process group, at teardown. */
  spawn<O extends Options = {}>(cmd: string, args: readonly string[] = [], opts?: O): ResultPromise<{} & O> {
    return this.#tracker.runInNetns(this.netnsName, cmd, args, opts, true);
  }

  /** Wait until something listens on TCP `port` inside the pod netns (polls `ss`). */
  async waitForPort(port: number, timeoutMs = 5000): Promise<void> {
    await waitForListener(this.netnsName, port, timeoutMs);
  }
}

/** Poll `ss -Hltn` in netns `netns` until a socket listens on `port`. */
export async function waitForListener(netns: string, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await execInNetns(netns, 'ss', ['-Hltn', `sport = :${port}`], { reject: false });
    if (r.exitCode === 0 && String(r.stdout).trim() !== '') return;
    if (Date.now() > deadline) throw new Error(`nothing listens on port ${port} in netns ${netns} after ${timeoutMs} ms`);
    await sleep(50);
  }
}
