// kube-proxy's iptables mode as pure functions: chain names, the iptables-restore text that renders every Service and
// EndpointSlice for one node, and the jumps from the built-in chains. The kernel side lives in kube-proxy-node.ts.
import { createHash } from 'node:crypto';
import { isIPv4 } from 'node:net';
import type { EndpointSliceInfo, ServiceInfo, ServicePort } from '../../agent/src/workload/service-objects.js';

export const KUBE_SERVICES = 'KUBE-SERVICES';
export const KUBE_NODEPORTS = 'KUBE-NODEPORTS';
export const KUBE_POSTROUTING = 'KUBE-POSTROUTING';
export const KUBE_MARK_MASQ = 'KUBE-MARK-MASQ';
export const MASQ_MARK = '0x4000';
/** The cluster's pod CIDR (every node's 10.244.<i>.0/24 is in it). */
export const CLUSTER_CIDR = '10.244.0.0/16';

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 base32 (with the standard alphabet; no padding needed for a 16-character prefix). */
export function base32(bytes: Uint8Array): string {
  let out = '';
  let acc = 0;
  let bits = 0;
  for (const b of bytes) {
    acc = ((acc << 8) | b) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(acc >> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32[(acc << (5 - bits)) & 31];
  return out;
}

/** kube-proxy's ServicePortName string: `ns/name`, plus `:portName` when the port is named. */
export function servicePortName(namespace: string, name: string, portName: string): string {
  return `${namespace}/${name}${portName !== '' ? `:${portName}` : ''}`;
}

function hash16(s: string): string {
  return base32(createHash('sha256').update(s).digest()).slice(0, 16);
}

/** `KUBE-SVC-` + first 16 chars of base32(sha256(spn + proto)); proto lowercase. */
export function serviceChainName(spn: string, protocol: string): string {
  return `KUBE-SVC-${hash16(spn + protocol.toLowerCase())}`;
}

/** `KUBE-SVL-`: the chain of an internalTrafficPolicy: Local service port (same hash). */
export function serviceLocalChainName(spn: string, protocol: string): string {
  return `KUBE-SVL-${hash16(spn + protocol.toLowerCase())}`;
}

/** `KUBE-SEP-` + hash of spn + proto + `ip:port`. */
export function endpointChainName(spn: string, protocol: string, endpoint: string): string {
  return `KUBE-SEP-${hash16(spn + protocol.toLowerCase() + endpoint)}`;
}

/** `%0.10f` of 1/(n-i): the probability of endpoint rule i of n. */
export function probability(i: number, n: number): string {
  return (1 / (n - i)).toFixed(10);
}

/** One endpoint of one Service port, as kube-proxy sees it. */
export interface ProxyEndpoint {
  ip: string;
  port: number;
  ready: boolean;
  serving: boolean;
  terminating: boolean;
  nodeName?: string;
}

/**
 * The endpoints of a Service port from its EndpointSlices (same namespace, labelled with the Service's name, IPv4),
 * matched by port name and protocol, de-duplicated on ip:port and sorted by address then port.
 */
export function endpointsFor(svc: ServiceInfo, port: ServicePort, slices: readonly EndpointSliceInfo[]): ProxyEndpoint[] {
  const seen = new Map<string, ProxyEndpoint>();
  for (const slice of slices) {
    if (slice.namespace !== svc.namespace || slice.serviceName !== svc.name || slice.addressType !== 'IPv4') continue;
    const sp = slice.ports.find((p) => p.name === port.name && p.protocol === port.protocol);
    if (sp === undefined) continue;
    for (const e of slice.endpoints) {
      const ip = e.addresses[0];
      if (ip === undefined || !isIPv4(ip)) continue;
      const key = `${ip}:${sp.port}`;
      if (seen.has(key)) continue;
      seen.set(key, { ip, port: sp.port, ready: e.ready, serving: e.serving, terminating: e.terminating, ...(e.nodeName !== undefined ? { nodeName: e.nodeName } : {}) });
    }
  }
  return [...seen.values()].sort((a, b) => ipKey(a.ip) - ipKey(b.ip) || a.port - b.port);
}

/** Ready endpoints; when none is ready, the serving and terminating ones (KEP-1669). */
export function usableEndpoints(all: readonly ProxyEndpoint[]): ProxyEndpoint[] {
  const ready = all.filter((e) => e.ready);
  return ready.length > 0 ? ready : all.filter((e) => e.serving && e.terminating);
}

function ipKey(ip: string): number {
  return ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
}

export interface RenderOptions {
  /** The node rendered for (internalTrafficPolicy: Local keeps its endpoints only). */
  nodeName?: string;
  /** Default CLUSTER_CIDR. */
  clusterCidr?: string;
  /** KUBE-SVC/SVL/SEP chains present now: those no longer rendered are declared (so flushed) and deleted. */
  existingChains?: Iterable<string>;
}

const q = (comment: string): string => (/\s/.test(comment) ? `"${comment}"` : comment);

/**
 * The iptables-restore --noflush input for one node: filter and nat KUBE-* chains declared (so flushed and rewritten in
 * one transaction), every ClusterIP service port rendered the way kube-proxy writes it, stale per-service chains deleted.
 * The jumps from built-in chains are not here (see kubeProxyJumps).
 */
export function renderKubeProxyRules(services: readonly ServiceInfo[], slices: readonly EndpointSliceInfo[], opts: RenderOptions = {}): string {
  const cidr = opts.clusterCidr ?? CLUSTER_CIDR;
  const filterRules: string[] = [];
  const natServices: string[] = [];
  const natChains = new Map<string, string[]>();
  const sorted = [...services].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
  for (const svc of sorted) {
    if (svc.type === 'ExternalName') continue;
    const vip = svc.clusterIPs.find((ip) => isIPv4(ip));
    if (vip === undefined) continue; // headless: no proxying
    for (const port of svc.ports) {
      if (port.protocol === 'SCTP') continue; // not rendered here
      const proto = port.protocol.toLowerCase();
      const spn = servicePortName(svc.namespace, svc.name, port.name);
      const match = `-m ${proto} -p ${proto} -d ${vip} --dport ${port.port}`;
      const all = endpointsFor(svc, port, slices);
      const local = svc.internalTrafficPolicy === 'Local';
      const usable = usableEndpoints(all).filter((e) => !local || e.nodeName === opts.nodeName);
      if (usable.length === 0) {
        const noLocal = local && usableEndpoints(all).length > 0;
        filterRules.push(
          `-A ${KUBE_SERVICES} -m comment --comment ${q(`${spn} has no ${noLocal ? 'local ' : ''}endpoints`)} ${match} -j ${noLocal ? 'DROP' : 'REJECT'}`,
        );
        continue;
      }
      const chain = local ? serviceLocalChainName(spn, proto) : serviceChainName(spn, proto);
      natServices.push(`-A ${KUBE_SERVICES} -m comment --comment ${q(`${spn} cluster IP`)} ${match} -j ${chain}`);
      const rules: string[] = [];
      if (!local) rules.push(`-A ${chain} -m comment --comment ${q(`${spn} cluster IP`)} ${match} ! -s ${cidr} -j ${KUBE_MARK_MASQ}`);
      usable.forEach((e, i) => {
        const ep = `${e.ip}:${e.port}`;
        const sep = endpointChainName(spn, proto, ep);
        const stat = i < usable.length - 1 ? ` -m statistic --mode random --probability ${probability(i, usable.length)}` : '';
        rules.push(`-A ${chain} -m comment --comment ${q(`${spn} -> ${ep}`)}${stat} -j ${sep}`);
        natChains.set(sep, [
          `-A ${sep} -m comment --comment ${q(spn)} -s ${e.ip} -j ${KUBE_MARK_MASQ}`,
          `-A ${sep} -m comment --comment ${q(spn)} -m ${proto} -p ${proto} -j DNAT --to-destination ${ep}`,
        ]);
      });
      natChains.set(chain, rules);
    }
  }
  const perService = [...natChains.keys()].sort();
  const stale = [...new Set(opts.existingChains ?? [])].filter((c) => /^KUBE-(SVC|SVL|SEP)-/.test(c) && !natChains.has(c)).sort();
  return [
    '*filter',
    `:${KUBE_SERVICES} - [0:0]`,
    ...filterRules,
    'COMMIT',
    '*nat',
    ...[KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ, ...perService, ...stale].map((c) => `:${c} - [0:0]`),
    `-A ${KUBE_POSTROUTING} -m mark ! --mark ${MASQ_MARK}/${MASQ_MARK} -j RETURN`,
    `-A ${KUBE_POSTROUTING} -j MARK --xor-mark ${MASQ_MARK}`,
    `-A ${KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`,
    `-A ${KUBE_MARK_MASQ} -j MARK --or-mark ${MASQ_MARK}`,
    ...natServices,
    `-A ${KUBE_SERVICES} -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j ${KUBE_NODEPORTS}`,
    ...perService.flatMap((c) => natChains.get(c) ?? []),
    ...stale.map((c) => `-X ${c}`),
    'COMMIT',
    '',
  ].join('\n');
}

/** The per-service chains (KUBE-SVC/SVL/SEP) a rendered text declares and keeps (not the ones it deletes). */
export function renderedServiceChains(text: string): string[] {
  const deleted = new Set(text.split('\n').filter((l) => l.startsWith('-X ')).map((l) => l.slice(3).trim()));
  return text
    .split('\n')
    .filter((l) => /^:KUBE-(SVC|SVL|SEP)-/.test(l))
    .map((l) => l.slice(1).split(' ')[0] ?? '')
    .filter((c) => c !== '' && !deleted.has(c));
}

/**
 * The jumps from the built-in chains, inserted first as kube-proxy does, with the base chains declared: an
 * iptables-restore --noflush input for a node netns that has none of them yet.
 */
export function kubeProxyJumps(): string {
  const portals = '-m comment --comment "kubernetes service portals"';
  return [
    '*filter',
    `:${KUBE_SERVICES} - [0:0]`,
    `-I OUTPUT 1 -m conntrack --ctstate NEW ${portals} -j ${KUBE_SERVICES}`,
    `-I FORWARD 1 -m conntrack --ctstate NEW ${portals} -j ${KUBE_SERVICES}`,
    'COMMIT',
    '*nat',
    ...[KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ].map((c) => `:${c} - [0:0]`),
    `-I PREROUTING 1 ${portals} -j ${KUBE_SERVICES}`,
    `-I OUTPUT 1 ${portals} -j ${KUBE_SERVICES}`,
    `-I POSTROUTING 1 -m comment --comment "kubernetes postrouting rules" -j ${KUBE_POSTROUTING}`,
    'COMMIT',
    '',
  ].join('\n');
}
