// The workload directory: for any IP, is it a mesh workload, and who is it (namespace, service account, identity, node);
// for any ClusterIP and port, which Service and endpoints. Derived from the workload source; rebuilt when it changes.
import { spiffeId } from '../identity/spiffe.js';
import { decideEnrolment } from './enrolment.js';
import type { Logger } from '../log.js';
import { isIP, type BlockList } from 'node:net';
import { parseServiceCidrs } from './service-cidrs.js';
import { allEntries, buildServiceTable, emptyServiceTable, lookupService, type ServiceEndpoint, type ServiceEntry, type ServiceRef, type ServiceTable, type ServiceTableCache } from './service-table.js';
import type { WorkloadChange, WorkloadSource } from './source.js';
import type { PodInfo } from './types.js';

export interface MeshWorkload {
  ip: string;
  namespace: string;
  name: string;
  serviceAccount: string;
  /** spiffe://<trust domain>/ns/<namespace>/sa/<service account> */
  identity: string;
  node: string;
}

export function workloadIdentity(trustDomain: string, pod: Pick<PodInfo, 'namespace' | 'serviceAccount'>): string {
  return spiffeId(trustDomain, pod.namespace, pod.serviceAccount);
}

/** Pure: every IP of every pod selected for the mesh. A later pod with the same IP wins (IPs are reused). */
export function buildDirectory(source: Pick<WorkloadSource, 'pods' | 'getNamespace'>, trustDomain: string): Map<string, MeshWorkload> {
  const out = new Map<string, MeshWorkload>();
  for (const pod of source.pods()) {
    if (pod.podIPs.length === 0) continue;
    if (!decideEnrolment(pod, source.getNamespace(pod.namespace)).enrol) continue;
    let identity: string;
    try {
      identity = workloadIdentity(trustDomain, pod);
    } catch {
      continue; // a name that cannot form a SPIFFE ID: not a mesh destination (traffic to it stays plain)
    }
    for (const ip of pod.podIPs) {
      out.set(ip, {
        ip,
        namespace: pod.namespace,
        name: pod.name,
        serviceAccount: pod.serviceAccount,
        identity,
        node: pod.nodeName,
      });
    }
  }
  return out;
}

export interface DirectoryOptions {
  /** This agent's node, for Services that prefer or require endpoints on the same node. */
  nodeName: string;
  /** DNS suffix of Service host names (default cluster.local). */
  clusterDomain?: string;
  /** Where the Service table's notes (objects it could not use) go, once each, at debug. */
  log?: Logger;
  /**
   * The cluster's Service ranges (kube-apiserver's --service-cluster-ip-range), as CIDRs. An address inside them that
   * is no known Service is refused instead of passed through in clear (the Service may be too new for the agent).
   */
  serviceCidrs?: readonly string[];
  /** How long Service and EndpointSlice changes are gathered before the table is rebuilt (a lookup rebuilds at once). */
  serviceRebuildDelayMs?: number;
}

/** What an address is to the Service table: a known ClusterIP, inside the Service ranges but unknown, or neither. */
export type ServiceAddressKind = 'known' | 'unknown' | undefined;

/** One endpoint of a Service port as `ambient-node services` shows it. */
export interface ServiceEndpointView extends Omit<ServiceEndpoint, 'local'> {
  /** A mesh workload: reached in HBONE under `identity`; otherwise in plain TCP. */
  mesh: boolean;
  identity?: string;
  /** New connections from this node may go here (ready, and allowed by the Service's node preference). */
  candidate: boolean;
}

/** One Service port at one ClusterIP, with its endpoints. */
export interface ServiceView {
  namespace: string;
  name: string;
  hostname: string;
  vip: string;
  port: number;
  portName: string;
  targetPort: number | string;
  mode: ServiceEntry['mode'];
  endpoints: ServiceEndpointView[];
}

/** Pure: the Service table as operators read it, with each endpoint's mesh membership. */
export function serviceViews(entries: Iterable<ServiceEntry>, lookup: (ip: string) => MeshWorkload | undefined): ServiceView[] {
  const out: ServiceView[] = [];
  for (const e of entries) {
    const candidates = new Set(e.candidates);
    out.push({
      namespace: e.service.namespace, name: e.service.name, hostname: e.service.hostname, vip: e.vip, port: e.port.port,
      portName: e.port.name, targetPort: e.port.targetPort, mode: e.mode,
      endpoints: e.endpoints.map((ep) => {
        const w = lookup(ep.ip);
        const { local: _local, ...rest } = ep;
        return { ...rest, mesh: w !== undefined, ...(w ? { identity: w.identity } : {}), candidate: candidates.has(ep) };
      }),
    });
  }
  return out.sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`) || a.vip.localeCompare(b.vip) || a.port - b.port);
}

export class WorkloadDirectory {
  private byIp = new Map<string, MeshWorkload>();
  /** `Pod/<ns>/<name>` of every pod the source knows, mesh or not (an EndpointSlice targetRef's form). */
  private podRefs = new Set<string>();
  private services_: ServiceTable = emptyServiceTable();
  /** Service or EndpointSlice changes not yet in the table; the next lookup or the timer rebuilds it. */
  private servicesDirty = false;
  private rebuildTimer: NodeJS.Timeout | undefined;
  private readonly serviceRanges: BlockList | undefined;
  private readonly noted = new Set<string>();
  /** Each Service's entries from the last build, reused while neither it nor its slices change. */
  private readonly serviceCache: ServiceTableCache = new Map();

  constructor(private readonly source: WorkloadSource, readonly trustDomain: string, private readonly opts: DirectoryOptions = { nodeName: '' }) {
    this.serviceRanges = opts.serviceCidrs?.length ? parseServiceCidrs(opts.serviceCidrs) : undefined;
    this.rebuild();
    source.onChange((c) => this.rebuild(c));
  }

  /** Stops the pending rebuild timer (the agent is stopping). */
  close(): void {
    clearTimeout(this.rebuildTimer);
    this.rebuildTimer = undefined;
  }

  /** Whether the source knows the pod an EndpointSlice targetRef names (`Pod/<ns>/<name>`), in the mesh or not. */
  knownPod(targetRef: string): boolean {
    return this.podRefs.has(targetRef);
  }

  /** A known ClusterIP, an unknown address inside the configured Service ranges, or neither. */
  serviceAddress(ip: string): ServiceAddressKind {
    if (this.table().vips.has(ip)) return 'known';
    const family = isIP(ip);
    return this.serviceRanges && family !== 0 && this.serviceRanges.check(ip, family === 4 ? 'ipv4' : 'ipv6') ? 'unknown' : undefined;
  }

  lookup(ip: string): MeshWorkload | undefined {
    return this.byIp.get(ip);
  }

  all(): MeshWorkload[] {
    return [...this.byIp.values()];
  }

  /** The Service port at `ip:port` (a ClusterIP and a TCP port it defines), if any. */
  service(ip: string, port: number): ServiceEntry | undefined {
    return lookupService(this.table(), ip, port);
  }

  /** The Service that sends to this endpoint address and port (the first by namespace/name), to name inbound traffic. */
  serviceOfEndpoint(ip: string, port: number): ServiceRef | undefined {
    return this.table().byEndpoint.get(ip)?.get(port);
  }

  /** Every Service port with its endpoints. */
  services(): ServiceEntry[] {
    return allEntries(this.table());
  }

  /** What `ambient-node services` shows. */
  serviceViews(): ServiceView[] {
    return serviceViews(allEntries(this.table()), (ip) => this.lookup(ip));
  }

  private rebuild(change?: WorkloadChange): void {
    if (!change || change.pods.length > 0 || change.namespaces.length > 0) {
      this.byIp = buildDirectory(this.source, this.trustDomain);
      this.podRefs = new Set(this.source.pods().map((p) => `Pod/${p.namespace}/${p.name}`));
    }
    if (!change || change.services) {
      // A burst of watch events (a rollout moves many endpoints) is one rebuild, done by whichever comes first: the
      // next connection that needs the table, or the timer.
      this.servicesDirty = true;
      this.rebuildTimer ??= setTimeout(() => this.table(), this.opts.serviceRebuildDelayMs ?? 20);
      this.rebuildTimer.unref?.();
    }
  }

  /** The Service table, rebuilt first if Services or EndpointSlices changed since. */
  private table(): ServiceTable {
    if (this.servicesDirty) {
      this.servicesDirty = false;
      clearTimeout(this.rebuildTimer);
      this.rebuildTimer = undefined;
      const notes: string[] = [];
      this.services_ = buildServiceTable(this.source.services(), this.source.endpointSlices(), this.opts, { notes }, this.serviceCache);
      for (const n of notes) {
        if (this.noted.has(n)) continue;
        if (this.noted.size >= 10_000) this.noted.clear(); // bounded: at worst a note is logged again
        this.noted.add(n);
        this.opts.log?.debug({ note: n }, 'service table: object not used (logged once)');
      }
    }
    return this.services_;
  }
}
