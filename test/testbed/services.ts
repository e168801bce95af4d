// Services in the simulated cluster, as pure functions: the ServiceSpec tests give, the v1 Service object written for it,
// ClusterIP allocation, and the EndpointSlice controller (pods + Service -> discovery.k8s.io/v1 EndpointSlices).
import { createHash } from 'node:crypto';
import { isIPv4 } from 'node:net';
import type { Labels } from './workloads.js';

export type ServiceProtocol = 'TCP' | 'UDP';

export interface ServicePortSpec {
  name?: string;
  port: number;
  /** A number, or the name of a container port; default: `port`. */
  targetPort?: number | string;
  protocol?: ServiceProtocol;
}

export interface ServiceEndpointSpec {
  ip: string;
  /** Default true. */
  ready?: boolean;
  nodeName?: string;
  /** Default: every Service port with a numeric targetPort, under the Service port's name. */
  ports?: { name?: string; port: number }[];
}

export interface ServiceSpec {
  /** Default 'default'. */
  namespace?: string;
  name: string;
  ports: ServicePortSpec[];
  /** Pods of the same namespace whose labels match are the endpoints. */
  selector?: Labels;
  /** 'None' = headless; default: allocated from 10.96.0.0/16 (unique per testbed, from 10.96.0.20). */
  clusterIP?: string;
  type?: 'ClusterIP' | 'NodePort' | 'LoadBalancer' | 'ExternalName';
  /** e.g. 'PreferClose'. */
  trafficDistribution?: string;
  internalTrafficPolicy?: 'Cluster' | 'Local';
  publishNotReadyAddresses?: boolean;
  annotations?: Record<string, string>;
  labels?: Labels;
  /** For selector-less Services: explicit endpoints, written as an EndpointSlice by the testbed. */
  endpoints?: ServiceEndpointSpec[];
}

/** A Service port with every default filled in. */
export interface ServicePortResolved {
  /** '' when unnamed. */
  name: string;
  port: number;
  targetPort: number | string;
  protocol: ServiceProtocol;
}

/** A Service the testbed maintains. */
export interface TestbedService {
  namespace: string;
  name: string;
  uid: string;
  /** The allocated (or given) ClusterIP; 'None' for headless, '' for ExternalName. */
  clusterIP: string;
  /** `<name>.<ns>.svc.cluster.local` */
  hostname: string;
  ports: ServicePortResolved[];
  /** The spec as last given (add, then update), namespace filled in. */
  spec: ServiceSpec & { namespace: string };
}

/** What the EndpointSlice controller needs to know about a pod. */
export interface EndpointPod {
  namespace: string;
  name: string;
  uid: string;
  labels: Labels;
  nodeName: string;
  ip: string;
  ready: boolean;
  ports: ContainerPort[];
}

export interface ContainerPort {
  name: string;
  containerPort: number;
  protocol?: ServiceProtocol;
}

export interface EndpointSliceObject {
  apiVersion: 'discovery.k8s.io/v1';
  kind: 'EndpointSlice';
  metadata: { name: string; namespace: string; labels: Labels };
  addressType: 'IPv4';
  endpoints: {
    addresses: string[];
    conditions: { ready: boolean; serving: boolean; terminating: boolean };
    nodeName?: string;
    targetRef?: { kind: 'Pod'; namespace: string; name: string; uid: string };
  }[];
  ports: { name?: string; protocol: ServiceProtocol; port: number }[];
}

export interface ServiceObject {
  apiVersion: 'v1';
  kind: 'Service';
  metadata: { name: string; namespace: string; uid: string; labels: Labels; annotations: Record<string, string> };
  spec: {
    type: string;
    clusterIP?: string;
    clusterIPs?: string[];
    ipFamilies?: string[];
    ipFamilyPolicy?: string;
    ports: { name?: string; port: number; targetPort: number | string; protocol: ServiceProtocol }[];
    selector?: Labels;
    trafficDistribution?: string;
    internalTrafficPolicy: 'Cluster' | 'Local';
    publishNotReadyAddresses?: boolean;
  };
}

export const CLUSTER_DOMAIN = 'cluster.local';
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
const MANAGED_BY_LABEL = 'endpointslice.kubernetes.io/managed-by';
const CONTROLLER_NAME = 'endpointslice-controller.k8s.io';
/** IANA_SVC_NAME: what a named targetPort and a container port name look like. */
const PORT_NAME = /^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** File name of a Service object inside workloads/. */
export function serviceFileName(namespace: string, name: string): string {
  return `svc-${namespace}-${name}.yaml`;
}

/** File name of a Service's EndpointSlices inside workloads/. */
export function endpointSliceFileName(namespace: string, name: string): string {
  return `eps-${namespace}-${name}.yaml`;
}

export function serviceHostname(namespace: string, name: string): string {
  return `${name}.${namespace}.svc.${CLUSTER_DOMAIN}`;
}

/** The ports with defaults filled in; throws on what the API server would reject. */
export function resolveServicePorts(where: string, ports: ServicePortSpec[], headless: boolean): ServicePortResolved[] {
  if (ports.length === 0 && !headless) throw new Error(`${where}: a Service needs at least one port`);
  const out = ports.map((p, i): ServicePortResolved => {
    const name = p.name ?? '';
    if (name !== '' && !PORT_NAME.test(name)) throw new Error(`${where}: ports[${i}].name ${JSON.stringify(name)} is not a valid port name`);
    if (!validPort(p.port)) throw new Error(`${where}: ports[${i}].port must be 1-65535`);
    const targetPort = p.targetPort ?? p.port;
    if (typeof targetPort === 'number' ? !validPort(targetPort) : !PORT_NAME.test(targetPort)) {
      throw new Error(`${where}: ports[${i}].targetPort ${JSON.stringify(targetPort)} is neither a port number nor a port name`);
    }
    return { name, port: p.port, targetPort, protocol: p.protocol ?? 'TCP' };
  });
  if (out.length > 1 && out.some((p) => p.name === '')) throw new Error(`${where}: every port must be named when there are several`);
  const names = out.map((p) => p.name);
  if (new Set(names).size !== names.length) throw new Error(`${where}: duplicate port names`);
  const keys = out.map((p) => `${p.port}/${p.protocol}`);
  if (new Set(keys).size !== keys.length) throw new Error(`${where}: duplicate port/protocol`);
  return out;
}

function validPort(n: unknown): boolean {
  return typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= 65535;
}

/** Checks the parts of a spec that do not depend on the rest of the cluster. */
export function validateServiceSpec(spec: ServiceSpec & { namespace: string }): void {
  const where = `Service ${spec.namespace}/${spec.name}`;
  if (!DNS_LABEL.test(spec.namespace) || !DNS_LABEL.test(spec.name)) throw new Error(`${where}: invalid name`);
  if (spec.selector !== undefined && spec.endpoints !== undefined) throw new Error(`${where}: give a selector or explicit endpoints, not both`);
  if (spec.clusterIP !== undefined && spec.clusterIP !== 'None' && !isIPv4(spec.clusterIP)) throw new Error(`${where}: clusterIP must be IPv4 or None`);
  for (const [i, e] of (spec.endpoints ?? []).entries()) {
    if (!isIPv4(e.ip)) throw new Error(`${where}: endpoints[${i}].ip must be IPv4`);
    for (const p of e.ports ?? []) if (!validPort(p.port)) throw new Error(`${where}: endpoints[${i}] port must be 1-65535`);
  }
}

/** Hands out ClusterIPs from 10.96.0.0/16, starting at 10.96.0.20, never one in use. */
export class ClusterIpAllocator {
  #next = 20;
  readonly #used = new Set<string>();

  /** Reserve `ip` (given by the caller); throws if taken or outside 10.96.0.0/16. */
  reserve(ip: string): void {
    if (!ip.startsWith('10.96.')) throw new Error(`clusterIP ${ip} is outside the service CIDR 10.96.0.0/16`);
    if (this.#used.has(ip)) throw new Error(`clusterIP ${ip} is already allocated`);
    this.#used.add(ip);
  }

  allocate(): string {
    for (; this.#next < 65535; this.#next++) {
      const ip = `10.96.${this.#next >> 8}.${this.#next & 255}`;
      if ((this.#next & 255) === 0 || this.#used.has(ip)) continue;
      this.#used.add(ip);
      this.#next++;
      return ip;
    }
    throw new Error('service CIDR 10.96.0.0/16 exhausted');
  }

  release(ip: string): void {
    this.#used.delete(ip);
  }
}

/** The v1 Service object for a testbed Service. */
export function serviceObject(svc: TestbedService): ServiceObject {
  const s = svc.spec;
  const type = s.type ?? 'ClusterIP';
  const spec: ServiceObject['spec'] = {
    type,
    ports: svc.ports.map((p) => ({ ...(p.name !== '' ? { name: p.name } : {}), port: p.port, targetPort: p.targetPort, protocol: p.protocol })),
    internalTrafficPolicy: s.internalTrafficPolicy ?? 'Cluster',
  };
  if (type !== 'ExternalName') {
    spec.clusterIP = svc.clusterIP;
    spec.clusterIPs = [svc.clusterIP];
    spec.ipFamilies = ['IPv4'];
    spec.ipFamilyPolicy = 'SingleStack';
  }
  if (s.selector !== undefined) spec.selector = { ...s.selector };
  if (s.trafficDistribution !== undefined) spec.trafficDistribution = s.trafficDistribution;
  if (s.publishNotReadyAddresses !== undefined) spec.publishNotReadyAddresses = s.publishNotReadyAddresses;
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: svc.name, namespace: svc.namespace, uid: svc.uid, labels: { ...s.labels }, annotations: { ...s.annotations } },
    spec,
  };
}

/** Whether every key of a non-empty selector has the same value in `labels` (an empty selector selects nothing). */
export function selectorMatches(selector: Labels, labels: Labels): boolean {
  const keys = Object.keys(selector);
  return keys.length > 0 && keys.every((k) => labels[k] === selector[k]);
}

type SlicePort = EndpointSliceObject['ports'][number];
type SliceEndpoint = EndpointSliceObject['endpoints'][number];

/**
 * A pod's port mapping for the Service: one entry per Service port whose targetPort resolves (a number always; a name
 * against the pod's container ports of the same protocol). Unresolvable ports are left out, as Kubernetes does.
 */
export function endpointPorts(ports: ServicePortResolved[], containerPorts: ContainerPort[]): SlicePort[] {
  const out: SlicePort[] = [];
  for (const p of ports) {
    let port: number | undefined;
    if (typeof p.targetPort === 'number') port = p.targetPort;
    else port = containerPorts.find((c) => c.name === p.targetPort && (c.protocol ?? 'TCP') === p.protocol)?.containerPort;
    if (port !== undefined) out.push({ ...(p.name !== '' ? { name: p.name } : {}), protocol: p.protocol, port });
  }
  return out;
}

/**
 * The EndpointSlice controller for one Service: its selected pods (or its explicit endpoints), grouped into one slice per
 * distinct port mapping. A Service with a selector and no endpoints gets one empty slice (Kubernetes' placeholder); a
 * selector-less Service without explicit endpoints gets none (someone else owns its slices).
 */
export function endpointSlicesFor(svc: TestbedService, pods: readonly EndpointPod[]): EndpointSliceObject[] {
  const s = svc.spec;
  const groups = new Map<string, { ports: SlicePort[]; endpoints: SliceEndpoint[] }>();
  const add = (ports: SlicePort[], endpoint: SliceEndpoint): void => {
    const key = JSON.stringify(ports);
    const g = groups.get(key) ?? { ports, endpoints: [] };
    g.endpoints.push(endpoint);
    groups.set(key, g);
  };
  if (s.selector !== undefined) {
    const selector = s.selector;
    const selected = pods
      .filter((p) => p.namespace === svc.namespace && p.ip !== '' && selectorMatches(selector, p.labels))
      .sort((a, b) => a.name.localeCompare(b.name));
    for (const pod of selected) {
      add(endpointPorts(svc.ports, pod.ports), {
        addresses: [pod.ip],
        // publishNotReadyAddresses: the endpoint counts as ready whatever the pod says; serving is the pod's readiness.
        conditions: { ready: pod.ready || s.publishNotReadyAddresses === true, serving: pod.ready, terminating: false },
        nodeName: pod.nodeName,
        targetRef: { kind: 'Pod', namespace: pod.namespace, name: pod.name, uid: pod.uid },
      });
    }
  } else if (s.endpoints !== undefined) {
    for (const e of s.endpoints) {
      const ports: SlicePort[] =
        e.ports !== undefined
          ? e.ports.map((p) => ({
              ...(p.name ? { name: p.name } : {}),
              protocol: svc.ports.find((sp) => sp.name === (p.name ?? ''))?.protocol ?? 'TCP',
              port: p.port,
            }))
          : endpointPorts(svc.ports, []);
      const ready = e.ready ?? true;
      add(ports, {
        addresses: [e.ip],
        conditions: { ready, serving: ready, terminating: false },
        ...(e.nodeName !== undefined ? { nodeName: e.nodeName } : {}),
      });
    }
  } else {
    return [];
  }
  if (groups.size === 0 && s.selector !== undefined) groups.set('[]', { ports: [], endpoints: [] });
  return [...groups.entries()].map(([key, g]) => ({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: {
      name: `${svc.name}-${shortHash(key)}`,
      namespace: svc.namespace,
      labels: { [SERVICE_NAME_LABEL]: svc.name, [MANAGED_BY_LABEL]: CONTROLLER_NAME },
    },
    addressType: 'IPv4',
    endpoints: g.endpoints,
    ports: g.ports,
  }));
}

/** Five lowercase base-36 characters, stable for the same input (the slice name suffix). */
function shortHash(s: string): string {
  return BigInt(`0x${createHash('sha256').update(s).digest('hex').slice(0, 12)}`).toString(36).slice(0, 5).padStart(5, '0');
}
