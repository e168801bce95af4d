// Cluster DNS as pure functions: the hosts file dnsmasq serves (Service names -> ClusterIP, headless -> ready endpoint
// IPs), a pod's resolv.conf, and dnsmasq's command line. The dnsmasq processes themselves live in node-services.ts.
import { isIPv4 } from 'node:net';
import type { EndpointSliceInfo, ServiceInfo } from '../../agent/src/workload/service-objects.js';
import { CLUSTER_DOMAIN, serviceHostname } from './services.js';

/** Path of dnsmasq in Debian's dnsmasq-base (the `dnsmasq` package would also start a system service). */
export const DNSMASQ = '/usr/sbin/dnsmasq';

/**
 * The A records of the cluster, one `IP name` line each, sorted: `<svc>.<ns>.svc.cluster.local` -> its IPv4 ClusterIPs;
 * a headless Service -> each address of its ready IPv4 endpoints (none: no line, so NXDOMAIN). ExternalName: nothing.
 */
export function renderDnsHosts(services: readonly ServiceInfo[], slices: readonly EndpointSliceInfo[]): string {
  const lines = new Set<string>();
  for (const svc of services) {
    if (svc.type === 'ExternalName') continue;
    const host = serviceHostname(svc.namespace, svc.name);
    if (!svc.headless) {
      for (const ip of svc.clusterIPs) if (isIPv4(ip)) lines.add(`${ip} ${host}`);
      continue;
    }
    for (const slice of slices) {
      if (slice.namespace !== svc.namespace || slice.serviceName !== svc.name || slice.addressType !== 'IPv4') continue;
      for (const e of slice.endpoints) if (e.ready) for (const ip of e.addresses) lines.add(`${ip} ${host}`);
    }
  }
  return [...lines].sort().map((l) => `${l}\n`).join('');
}

/** A pod's /etc/resolv.conf: its node's DNS server and Kubernetes' search path. */
export function podResolvConf(namespace: string, nameserver: string): string {
  return [
    `nameserver ${nameserver}`,
    `search ${namespace}.svc.${CLUSTER_DOMAIN} svc.${CLUSTER_DOMAIN} ${CLUSTER_DOMAIN}`,
    'options ndots:5',
    '',
  ].join('\n');
}

export interface DnsmasqOptions {
  /** The one address it answers on (the node's pod gateway; it may appear later: --bind-dynamic binds when it does). */
  listenAddress: string;
  /** Folder of hosts files, re-read by dnsmasq (inotify) when a file in it changes. */
  hostsDir: string;
  pidFile: string;
}

/**
 * dnsmasq as a cluster DNS that never forwards: no config file, no upstream (no resolv.conf), no /etc/hosts, answers
 * for cluster.local from the hosts folder only (NXDOMAIN otherwise), logs to stderr, stays in the foreground.
 */
export function dnsmasqArgs(o: DnsmasqOptions): string[] {
  return [
    '--conf-file=/dev/null',
    '--no-resolv',
    '--no-hosts',
    '--keep-in-foreground',
    '--log-facility=-',
    `--local=/${CLUSTER_DOMAIN}/`,
    '--domain-needed',
    '--bogus-priv',
    `--hostsdir=${o.hostsDir}`,
    `--listen-address=${o.listenAddress}`,
    '--bind-dynamic',
    `--pid-file=${o.pidFile}`,
  ];
}
