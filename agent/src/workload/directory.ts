// The workload directory: for any IP, is it a mesh workload, and who is it (namespace, service account, identity, node);
// for any ClusterIP and port, which Service and endpoints. Derived from the workload source; rebuilt when it changes.
import { spiffeId } from '../identity/spiffe.js';
import { decideEnrolment } from './enrolment.js';
import type { Logger } from '../log.js';
import { isIP, type BlockList } from 'node:net';
import { ipFamily, type IpFamily } from '../protocol/address.js';
import { parseServiceCidrs } from './service-cidrs.js';
import { InternPool } from './intern.js';
import { allEntries, buildServiceTable, emptyServiceTable, lookupService, type ServiceEndpoint, type ServiceEntry, type ServiceRef, type ServiceTable, type ServiceTableCache } from './service-table.js';
import type { WorkloadChange, WorkloadSource } from './source.js';
import type { NamespaceInfo, PodInfo } from './types.js';

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

/** Identities by trust domain, namespace and service account: one shared string (checked once) for all their pods. */
const identities = new InternPool<string, string>(100_000);

/** workloadIdentity, shared; '' when the names cannot form a SPIFFE ID. */
function sharedIdentity(trustDomain: string, pod: Pick<PodInfo, 'namespace' | 'serviceAccount'>): string {
  return identities.get(`${trustDomain}\u0000${pod.namespace}\u0000${pod.serviceAccount}`, () => {
    try {
      return workloadIdentity(trustDomain, pod);
    } catch {
      return '';
    }
  });
}

/**
 * Pure: the mesh workloads of one pod (one per IP), or none when it is not selected for the mesh. `families`: the
 * address families the node's redirection captures (RedirectBackend.captureFamilies): an address of another family is
 * no mesh workload, so no peer sends HBONE to it (the pod could not receive it: its TCP in that family is refused), and
 * an IPv6-only pod refused at enrolment is no mesh destination at all. Default: every family.
 */
export function meshWorkloads(pod: PodInfo, namespace: NamespaceInfo | undefined, trustDomain: string, families: readonly IpFamily[] = ALL_FAMILIES): MeshWorkload[] {
  if (pod.podIPs.length === 0) return [];
  if (!decideEnrolment(pod, namespace).enrol) return [];
  const identity = sharedIdentity(trustDomain, pod);
  if (!identity) return []; // a name that cannot form a SPIFFE ID: not a mesh destination (traffic to it stays plain)
  const ips = families.length === ALL_FAMILIES.length ? pod.podIPs : pod.podIPs.filter((ip) => families.includes(ipFamily(ip) ?? 'ipv4'));
  return ips.map((ip) => ({ ip, namespace: pod.namespace, name: pod.name, serviceAccount: pod.serviceAccount, identity, node: pod.nodeName }));
}

/** Pure: every IP of every pod selected for the mesh. A later pod with the same IP wins (IPs are reused). */
export function buildDirectory(source: Pick<WorkloadSource, 'pods' | 'getNamespace'>, trustDomain: string): Map<string, MeshWorkload> {
  const out = new Map<string, MeshWorkload>();
  for (const pod of source.pods()) for (const w of meshWorkloads(pod, source.getNamespace(pod.namespace), trustDomain)) out.set(w.ip, w);
  return out;
}

const samePod = (a: { namespace: string; name: string }, b: { namespace: string; name: string }): boolean => a.namespace === b.namespace && a.name === b.name;

/**
 * Mesh workloads by IP, changed pod by pod. An IP two pods claim (reused before the old pod is gone) is the last
 * claimant's; the others wait in `shadowed` and the latest of them comes back when that one lets the IP go.
 */
export class WorkloadsByIp {
  private readonly byIp = new Map<string, MeshWorkload>();
  private readonly shadowed = new Map<string, MeshWorkload[]>();

  static from(workloads: Iterable<MeshWorkload>): WorkloadsByIp {
    const out = new WorkloadsByIp();
    for (const w of workloads) out.add(w);
    return out;
  }

  /** `ip` canonical (protocol/address.ts: the sources store canonical addresses, callers canonicalise at their edge). */
  get(ip: string): MeshWorkload | undefined {
    return this.byIp.get(ip);
  }

  values(): MeshWorkload[] {
    return [...this.byIp.values()];
  }

  add(w: MeshWorkload): void {
    const cur = this.byIp.get(w.ip);
    if (cur && !samePod(cur, w)) {
      const waiting = this.shadowed.get(w.ip) ?? [];
      this.shadowed.set(w.ip, [...waiting.filter((x) => !samePod(x, w)), cur]);
    }
    this.byIp.set(w.ip, w);
  }

  /** The pod lets the IP go. */
  remove(ip: string, pod: { namespace: string; name: string }): void {
    const cur = this.byIp.get(ip);
    const waiting = this.shadowed.get(ip);
    if (cur && samePod(cur, pod)) {
      const next = waiting?.pop();
      if (next) this.byIp.set(ip, next);
      else this.byIp.delete(ip);
    } else if (waiting) {
      const i = waiting.findIndex((x) => samePod(x, pod));
      if (i >= 0) waiting.splice(i, 1);
    }
    if (waiting?.length === 0) this.shadowed.delete(ip);
  }
}

const ALL_FAMILIES: readonly IpFamily[] = ['ipv4', 'ipv6'];

export interface DirectoryOptions {
  /** The families the node's redirection captures: addresses of others are no mesh workloads (see meshWorkloads). */
  meshFamilies?: readonly IpFamily[];
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
  private byIp = new WorkloadsByIp();
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
    const [kind, namespace, name, ...rest] = targetRef.split('/');
    return kind === 'Pod' && namespace !== undefined && name !== undefined && rest.length === 0 && this.source.getPod(namespace, name) !== undefined;
  }

  /** A known ClusterIP, an unknown address inside the configured Service ranges, or neither. `ip` canonical. */
  serviceAddress(ip: string): ServiceAddressKind {
    if (this.table().vips.has(ip)) return 'known';
    const family = isIP(ip);
    return this.serviceRanges && family !== 0 && this.serviceRanges.check(ip, family === 4 ? 'ipv4' : 'ipv6') ? 'unknown' : undefined;
  }

  /**
   * The mesh workload at `ip`. Like service(), serviceOfEndpoint() and serviceAddress(), it takes the CANONICAL text
   * (canonicalIp): they sit on every new connection's path, so the caller canonicalises once at its edge (the socket's
   * addresses, a parsed :authority, an operator's argument) and passes that string on; any other form matches nothing.
   */
  lookup(ip: string): MeshWorkload | undefined {
    return this.byIp.get(ip);
  }

  all(): MeshWorkload[] {
    return this.byIp.values();
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
    if (!change || change.namespaces.length > 0) {
      // A namespace's labels select or drop all its pods at once: rebuilt whole (rare).
      // Straight into the index (no intermediate map of the whole cluster); a later pod with the same IP wins.
      const byIp = new WorkloadsByIp();
      for (const pod of this.source.pods()) for (const w of meshWorkloads(pod, this.source.getNamespace(pod.namespace), this.trustDomain, this.opts.meshFamilies)) byIp.add(w);
      this.byIp = byIp;
    } else {
      // Pod by pod: the old version's IPs let go, the source's current version (it may hold the pod from more than
      // one list, as the kubernetes source does) claims its own: the cost is per change, not per cluster.
      for (const { before, after } of change.pods) {
        const ref = after ?? before;
        if (!ref) continue;
        if (before) for (const ip of before.podIPs) this.byIp.remove(ip, before);
        const pod = this.source.getPod(ref.namespace, ref.name);
        if (pod) for (const w of meshWorkloads(pod, this.source.getNamespace(pod.namespace), this.trustDomain, this.opts.meshFamilies)) this.byIp.add(w);
      }
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
