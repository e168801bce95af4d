// The Service table: for each ClusterIP and TCP port, the Service behind it and the endpoints a new connection may
// go to (EndpointSlices, ready ones, this node's first when the Service asks for it). Pure; rebuilt when Services or
// EndpointSlices change, reusing the entries of every Service whose objects did not.
import { formatHostPort } from '../protocol/address.js';
import { isIP } from 'node:net';
import type { EndpointInfo, EndpointSliceInfo, ServiceInfo, ServicePort } from './service-objects.js';

/** Which Service a connection was addressed to, as telemetry names it. */
export interface ServiceRef {
  namespace: string;
  name: string;
  /** `<name>.<namespace>.svc.<cluster domain>` */
  hostname: string;
}

export interface ServiceEndpoint {
  ip: string;
  /** The port to dial on the endpoint: the EndpointSlice port of the Service port's name (see endpointPort). */
  port: number;
  ready: boolean;
  serving: boolean;
  terminating: boolean;
  node?: string;
  /** `kind/namespace/name` of the object behind the endpoint (usually a Pod). */
  targetRef?: string;
  /** On this agent's node. */
  local: boolean;
}

/**
 * How an endpoint is picked: `standard` any ready endpoint; `prefer-node` ready endpoints on this node when there are
 * some, else any (trafficDistribution PreferClose / PreferSameZone / PreferSameNode: the node is the closest locality
 * the agent knows); `node-only` only this node's (internalTrafficPolicy: Local).
 */
export type BalanceMode = 'standard' | 'prefer-node' | 'node-only';

export interface ServiceEntry {
  service: ServiceRef;
  vip: string;
  port: ServicePort;
  mode: BalanceMode;
  /** Every endpoint the slices list for this port, ready or not (for the CLI). */
  endpoints: ServiceEndpoint[];
  /** What a new connection picks from, at random (the mode and readiness already applied). */
  candidates: ServiceEndpoint[];
}

export interface ServiceTable {
  /** ClusterIP -> TCP port -> entry. Two levels: the IP string from the socket is hashed once, never concatenated. */
  byVip: Map<string, Map<number, ServiceEntry>>;
  /** Every ClusterIP of every Service, whatever its ports and protocols. */
  vips: Set<string>;
  /**
   * Endpoint IP -> target port -> the first Service (by namespace/name) that sends there; only endpoints on this node
   * (or of no known node), the only ones whose inbound connections this agent names.
   */
  byEndpoint: Map<string, Map<number, ServiceRef>>;
}

export const emptyServiceTable = (): ServiceTable => ({ byVip: new Map(), vips: new Set(), byEndpoint: new Map() });

export interface ServiceTableOptions {
  /** This agent's node: endpoints there are `local`. */
  nodeName: string;
  /** DNS suffix of Service host names. Default cluster.local. */
  clusterDomain?: string;
}

/** Facts the builder skipped rather than guess at, one line each (logged once by the caller). */
export interface ServiceTableNotes {
  notes: string[];
}

/**
 * What the last build made of each Service: reused as it is when neither the Service nor any of its slices changed
 * (the sources keep an unchanged object's identity), so a change to one Service costs one Service, not the cluster.
 */
export type ServiceTableCache = Map<string, { service: ServiceInfo; slices: EndpointSliceInfo[]; entries: ServiceEntry[] }>;

const PREFER_NODE = new Set(['PreferClose', 'PreferSameZone', 'PreferSameNode']);

export function balanceMode(s: Pick<ServiceInfo, 'internalTrafficPolicy' | 'trafficDistribution'>): BalanceMode {
  if (s.internalTrafficPolicy === 'Local') return 'node-only';
  return s.trafficDistribution && PREFER_NODE.has(s.trafficDistribution) ? 'prefer-node' : 'standard';
}

/** `ip:port` (`[ip]:port` for IPv6), for messages and keys outside the hot path. */
export const vipKey = (ip: string, port: number): string => formatHostPort(ip, port);

/** The entry for a ClusterIP and TCP port, if any. */
export function lookupService(t: ServiceTable, ip: string, port: number): ServiceEntry | undefined {
  return t.byVip.get(ip)?.get(port);
}

/** Every entry of the table (each ClusterIP and TCP port). */
export function allEntries(t: ServiceTable): ServiceEntry[] {
  const out: ServiceEntry[] = [];
  for (const ports of t.byVip.values()) out.push(...ports.values());
  return out;
}

/**
 * The endpoint port for a Service port: the slice's port of the same name and protocol, as kube-proxy reads it; a slice
 * that lists no ports at all (hand-written) falls back to a numeric targetPort. Otherwise none: the endpoint is skipped.
 */
export function endpointPort(sp: ServicePort, slice: Pick<EndpointSliceInfo, 'ports'>): number | undefined {
  for (const p of slice.ports) if (p.name === sp.name && p.protocol === sp.protocol) return p.port;
  return slice.ports.length === 0 && typeof sp.targetPort === 'number' ? sp.targetPort : undefined;
}

const byName = (a: { namespace: string; name: string }, b: { namespace: string; name: string }): number =>
  a.namespace < b.namespace ? -1 : a.namespace > b.namespace ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0;

/** Builds the table from every Service and EndpointSlice. Pure, apart from what it reads from and leaves in `cache`. */
export function buildServiceTable(
  services: readonly ServiceInfo[],
  slices: readonly EndpointSliceInfo[],
  opts: ServiceTableOptions,
  out: ServiceTableNotes = { notes: [] },
  cache: ServiceTableCache = new Map(),
): ServiceTable {
  const slicesOf = new Map<string, EndpointSliceInfo[]>();
  for (const s of slices) {
    if (!s.serviceName) {
      out.notes.push(`EndpointSlice ${s.namespace}/${s.name} has no kubernetes.io/service-name label: it belongs to no Service`);
      continue;
    }
    if (s.addressType === 'FQDN') {
      out.notes.push(`EndpointSlice ${s.namespace}/${s.name} has addressType FQDN: not used (host names are not endpoints the agent dials)`);
      continue;
    }
    const key = `${s.namespace}/${s.serviceName}`;
    const list = slicesOf.get(key);
    if (list) list.push(s);
    else slicesOf.set(key, [s]);
  }
  const table = emptyServiceTable();
  const seen = new Set<string>();
  for (const svc of [...services].sort(byName)) {
    const key = `${svc.namespace}/${svc.name}`;
    seen.add(key);
    const mySlices = (slicesOf.get(key) ?? []).sort(byName);
    const prev = cache.get(key);
    const entries = prev && prev.service === svc && sameItems(prev.slices, mySlices) ? prev.entries : serviceEntries(svc, mySlices, opts);
    cache.set(key, { service: svc, slices: mySlices, entries });
    if (svc.type !== 'ExternalName') for (const vip of svc.clusterIPs) table.vips.add(vip);
    for (const e of entries) {
      let ports = table.byVip.get(e.vip);
      if (!ports) table.byVip.set(e.vip, (ports = new Map()));
      const taken = ports.get(e.port.port);
      if (taken) {
        out.notes.push(`Service ${key} port ${e.port.port}: ${vipKey(e.vip, e.port.port)} is already taken by ${taken.service.namespace}/${taken.service.name}`);
        continue;
      }
      ports.set(e.port.port, e);
      for (const ep of e.endpoints) {
        if (ep.node !== undefined && !ep.local) continue;
        let eports = table.byEndpoint.get(ep.ip);
        if (!eports) table.byEndpoint.set(ep.ip, (eports = new Map()));
        if (!eports.has(ep.port)) eports.set(ep.port, e.service);
      }
    }
  }
  for (const key of cache.keys()) if (!seen.has(key)) cache.delete(key);
  return table;
}

function sameItems<T>(a: readonly T[], b: readonly T[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** The entries of one Service: one per ClusterIP and TCP port. */
function serviceEntries(svc: ServiceInfo, slices: readonly EndpointSliceInfo[], opts: ServiceTableOptions): ServiceEntry[] {
  if (svc.type === 'ExternalName' || svc.headless || svc.clusterIPs.length === 0) return [];
  const ref: ServiceRef = { namespace: svc.namespace, name: svc.name, hostname: `${svc.name}.${svc.namespace}.svc.${opts.clusterDomain ?? 'cluster.local'}` };
  const mode = balanceMode(svc);
  const out: ServiceEntry[] = [];
  for (const vip of svc.clusterIPs) {
    const family = isIP(vip) === 4 ? 'IPv4' : 'IPv6';
    const sameFamily = slices.filter((s) => s.addressType === family);
    for (const sp of svc.ports) {
      if (sp.protocol !== 'TCP') continue; // only TCP is captured; UDP and SCTP stay kube-proxy's
      const endpoints = endpointsFor(sp, sameFamily, opts.nodeName);
      const usable = svc.publishNotReadyAddresses ? endpoints : endpoints.filter((e) => e.ready);
      const local = usable.filter((e) => e.local);
      const candidates = mode === 'node-only' ? local : mode === 'prefer-node' && local.length > 0 ? local : usable;
      out.push({ service: ref, vip, port: sp, mode, endpoints, candidates });
    }
  }
  return out;
}

/** One Service port's endpoints from its slices: first address of each endpoint, duplicates merged (ready wins). */
function endpointsFor(sp: ServicePort, slices: readonly EndpointSliceInfo[], nodeName: string): ServiceEndpoint[] {
  const byAddr = new Map<string, ServiceEndpoint>();
  for (const slice of slices) {
    const port = endpointPort(sp, slice);
    if (port === undefined) continue; // a named targetPort this slice does not resolve
    for (const e of slice.endpoints) {
      const ep = endpoint(e, port, nodeName);
      if (!ep) continue;
      const k = vipKey(ep.ip, ep.port);
      const prev = byAddr.get(k);
      if (!prev || (!prev.ready && ep.ready)) byAddr.set(k, ep);
    }
  }
  return [...byAddr.values()];
}

function endpoint(e: EndpointInfo, port: number, nodeName: string): ServiceEndpoint | undefined {
  // The API keeps `addresses` a list for the future, but consumers use the first one only (kube-proxy does).
  const ip = e.addresses[0];
  if (ip === undefined) return undefined;
  return {
    ip, port, ready: e.ready, serving: e.serving, terminating: e.terminating,
    ...(e.nodeName ? { node: e.nodeName } : {}),
    ...(e.targetRef ? { targetRef: e.targetRef } : {}),
    local: e.nodeName !== undefined && e.nodeName === nodeName,
  };
}

/** Picks the endpoint for one new connection: uniformly at random among the candidates. Pure given `random`. */
export function pickEndpoint(entry: ServiceEntry, random: () => number = Math.random): ServiceEndpoint | undefined {
  const c = entry.candidates;
  if (c.length === 0) return undefined;
  return c[c.length === 1 ? 0 : Math.min(c.length - 1, Math.floor(random() * c.length))];
}

/** Why a Service port has nothing to pick, in ztunnel's words plus the detail an operator needs. */
export function noEndpointReason(entry: ServiceEntry): string {
  const what = `${entry.service.namespace}/${entry.service.name}`;
  const ready = entry.endpoints.filter((e) => e.ready).length;
  const detail = entry.endpoints.length === 0
    ? `${what} has no endpoints for port ${entry.port.port}`
    : entry.mode === 'node-only' && ready > 0
      ? `${what} has internalTrafficPolicy Local and no ready endpoint on this node`
      : `${what} has ${entry.endpoints.length} endpoint(s) for port ${entry.port.port}, none ready`;
  return `no healthy upstream: ${vipKey(entry.vip, entry.port.port)} (${detail})`;
}
