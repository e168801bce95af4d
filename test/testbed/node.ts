// The simulated underlay: a fabric netns with a bridge, node netns wired to it by veth, static routes between the nodes'
// pod CIDRs (IPv4, and IPv6 ULA ranges when the cluster has IPv6), and each node's CNI conflist. All of it via `ip -n`
// or inside the testbed's namespaces, never in the root netns.
import { execa } from 'execa';
import type { AgentProcess } from './agent-process.js';
import type { CniConfList } from './cni-types.js';
import type { CniRuntime } from './cni-runtime.js';
import { ipIn } from './netns.js';

/** Everything about one simulated node. Paths are inside the testbed's run dir. */
export interface TestbedNode extends TestbedNodeInfo {
  conflist: CniConfList;
  cni: CniRuntime;
  /** Undefined when the testbed runs without agents. */
  agent: AgentProcess | undefined;
}

/** A node's names, addresses and paths (what a conflist hook gets). */
export interface TestbedNodeInfo {
  index: number;
  /** Kubernetes node name; also the name of the node's netns. */
  name: string;
  netnsName: string;
  netnsPath: string;
  /** Underlay address, 172.30.0.<10+index> (inside the testbed's namespaces only). */
  underlayIp: string;
  /** 10.244.<index>.0/24 */
  podCidr: string;
  /** 10.244.<index>.1, the cni0 bridge address. */
  podGateway: string;
  /** The cluster's pod address families, in order (the first is the primary: a pod's `podIP`). */
  ipFamilies: IpFamily[];
  /** IPv6 underlay address fd00:172:30::<10+index> (ULA, inside the testbed's namespaces only); set when ipFamilies has ipv6. */
  underlayIp6: string | undefined;
  /** fd00:10:244:<index>::/64; set when ipFamilies has ipv6. */
  podCidr6: string | undefined;
  /** fd00:10:244:<index>::1, cni0's IPv6 address; set when ipFamilies has ipv6. */
  podGateway6: string | undefined;
  /** The agent's event socket (`agent_socket` in the conflist). */
  socketPath: string;
  stateDir: string;
  confDir: string;
  conflistPath: string;
  cacheDir: string;
  ipamDir: string;
}

export type IpFamily = 'ipv4' | 'ipv6';

export const UNDERLAY_PREFIX = '172.30.0';
/** The IPv6 underlay and pod ranges: unique local addresses (fd00::/8), never routed outside the testbed. */
export const UNDERLAY6_PREFIX = 'fd00:172:30::';
export const POD6_PREFIX = 'fd00:10:244';
export const FABRIC_BRIDGE = 'br0';
/** Name of the node's interface to the fabric, inside the node netns. */
export const NODE_UPLINK = 'eth0';

export function underlayIp(index: number): string {
  return `${UNDERLAY_PREFIX}.${10 + index}`;
}

export function podCidr(index: number): string {
  return `10.244.${index}.0/24`;
}

export function podGateway(index: number): string {
  return `10.244.${index}.1`;
}

export function underlayIp6(index: number): string {
  return `${UNDERLAY6_PREFIX}${10 + index}`;
}

export function podCidr6(index: number): string {
  return `${POD6_PREFIX}:${index}::/64`;
}

export function podGateway6(index: number): string {
  return `${POD6_PREFIX}:${index}::1`;
}

/** Checks a testbed's ipFamilies: ['ipv4'] (the default), ['ipv4', 'ipv6'], ['ipv6', 'ipv4'] or ['ipv6']. */
export function validateIpFamilies(f: readonly string[] | undefined): IpFamily[] {
  const families = [...(f ?? ['ipv4'])];
  if (families.length === 0 || families.length > 2 || new Set(families).size !== families.length || families.some((x) => x !== 'ipv4' && x !== 'ipv6')) {
    throw new Error(`ipFamilies must be ['ipv4'], ['ipv6'] or both, got ${JSON.stringify(f)}`);
  }
  return families as IpFamily[];
}

/**
 * IPv6 sysctls for a namespace the testbed made, before any interface is added: no duplicate address detection (an
 * address would stay tentative, unusable, for about 2 s; every address here is unique by construction), so addresses
 * work at once. `all` and `default` both: the kernel skips DAD only when both the device's and `all`'s are 0, and
 * devices created later (veths, cni0) take `default`. Inside that namespace only (ip netns exec).
 */
export async function disableDad(netns: string): Promise<void> {
  await execa('ip', ['netns', 'exec', netns, 'sysctl', '-qw', 'net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0']);
}

/** The fabric: the bridge every node's uplink is enslaved to, inside the (already created) fabric netns. */
export async function setupFabric(name: string): Promise<void> {
  await ipIn(name, 'link', 'add', FABRIC_BRIDGE, 'type', 'bridge');
  await ipIn(name, 'link', 'set', FABRIC_BRIDGE, 'up');
}

/**
 * Wire an (already created) node netns: veth uplink created inside the node (peer moved straight into the
 * fabric, so the pair never exists in the root netns), underlay address, routes to the other nodes' pod CIDRs, ip_forward=1.
 */
export async function setupNodeNetwork(fabric: string, node: TestbedNodeInfo, nodeCount: number): Promise<void> {
  const ns = node.netnsName;
  const peer = `n${node.index}`;
  await ipIn(ns, 'link', 'add', NODE_UPLINK, 'type', 'veth', 'peer', 'name', peer, 'netns', fabric);
  await ipIn(fabric, 'link', 'set', peer, 'master', FABRIC_BRIDGE, 'up');
  const v4 = node.ipFamilies.includes('ipv4');
  const v6 = node.ipFamilies.includes('ipv6');
  if (v6) await disableDad(ns);
  // The IPv4 underlay is there in every cluster (the node's own services, kube-proxy rules and DNS use it).
  await ipIn(ns, 'addr', 'add', `${node.underlayIp}/24`, 'dev', NODE_UPLINK);
  if (v6) await ipIn(ns, '-6', 'addr', 'add', `${underlayIp6(node.index)}/64`, 'dev', NODE_UPLINK, 'nodad');
  await ipIn(ns, 'link', 'set', NODE_UPLINK, 'up');
  for (let j = 0; j < nodeCount; j++) {
    if (j === node.index) continue;
    if (v4) await ipIn(ns, 'route', 'add', podCidr(j), 'via', underlayIp(j), 'dev', NODE_UPLINK);
    if (v6) await ipIn(ns, '-6', 'route', 'add', podCidr6(j), 'via', underlayIp6(j), 'dev', NODE_UPLINK);
  }
  // sysctl inside the node netns only (ip netns exec gives it that netns's /proc/sys/net).
  await execa('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', ...(v6 ? ['net.ipv6.conf.all.forwarding=1'] : [])]);
}

export interface ConflistOptions {
  withAmbientCni: boolean;
  cniLogLevel: string;
  agentTimeoutMs: number;
}

/**
 * The node's conflist: bridge + host-local, then ambient-cni chained last. host-local gets one range set per family, in
 * the cluster's order (so the pod's first address is of the primary family), and a default route per family.
 */
export function buildConflist(node: Pick<TestbedNodeInfo, 'index' | 'ipamDir' | 'socketPath'> & { ipFamilies?: IpFamily[] }, opts: ConflistOptions): CniConfList {
  const families = node.ipFamilies ?? ['ipv4'];
  const range = (f: IpFamily): { subnet: string; gateway: string }[] =>
    f === 'ipv4' ? [{ subnet: podCidr(node.index), gateway: podGateway(node.index) }] : [{ subnet: podCidr6(node.index), gateway: podGateway6(node.index) }];
  const list: CniConfList = {
    cniVersion: '1.0.0',
    name: 'ambient-tb',
    plugins: [
      {
        type: 'bridge',
        bridge: 'cni0',
        isGateway: true,
        ipMasq: false,
        ipam: {
          type: 'host-local',
          ranges: families.map(range),
          routes: families.map((f) => ({ dst: f === 'ipv4' ? '0.0.0.0/0' : '::/0' })),
          dataDir: node.ipamDir,
        },
      },
    ],
  };
  if (opts.withAmbientCni) {
    list.plugins.push({
      type: 'ambient-cni',
      agent_socket: node.socketPath,
      agent_timeout_ms: opts.agentTimeoutMs,
      log_level: opts.cniLogLevel,
    });
  }
  return list;
}
