// The simulated underlay: a fabric netns with a bridge, node netns wired to it by veth, static routes
// between the nodes' pod CIDRs, and each node's CNI conflist. All of it via `ip -n`, never in the root netns.
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
  /** The agent's event socket (`agent_socket` in the conflist). */
  socketPath: string;
  stateDir: string;
  confDir: string;
  conflistPath: string;
  cacheDir: string;
  ipamDir: string;
}

export const UNDERLAY_PREFIX = '172.30.0';
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
  await ipIn(ns, 'addr', 'add', `${node.underlayIp}/24`, 'dev', NODE_UPLINK);
  await ipIn(ns, 'link', 'set', NODE_UPLINK, 'up');
  for (let j = 0; j < nodeCount; j++) {
    if (j === node.index) continue;
    await ipIn(ns, 'route', 'add', podCidr(j), 'via', underlayIp(j), 'dev', NODE_UPLINK);
  }
  // sysctl inside the node netns only (ip netns exec gives it that netns's /proc/sys/net).
  await execa('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
}

export interface ConflistOptions {
  withAmbientCni: boolean;
  cniLogLevel: string;
  agentTimeoutMs: number;
}

/** The node's conflist: bridge + host-local, then ambient-cni chained last. */
export function buildConflist(node: Pick<TestbedNodeInfo, 'index' | 'ipamDir' | 'socketPath'>, opts: ConflistOptions): CniConfList {
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
          ranges: [[{ subnet: podCidr(node.index), gateway: podGateway(node.index) }]],
          routes: [{ dst: '0.0.0.0/0' }],
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
