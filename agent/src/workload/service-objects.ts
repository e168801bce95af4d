// Kubernetes Services (v1) and EndpointSlices (discovery.k8s.io/v1) as the agent's domain types, parsed once from
// Kubernetes-shaped objects. Pure; a malformed field throws WorkloadParseError naming the object and the field.
import { canonicalIp, ipFamily } from '../protocol/address.js';
import { isIP } from 'node:net';
import { isObj, stringMap, WorkloadParseError, type Obj } from './k8s-fields.js';

export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
/** Istio's fallback for spec.trafficDistribution, read from the Service (istiod also reads it from the namespace). */
export const TRAFFIC_DISTRIBUTION_ANNOTATION = 'networking.istio.io/traffic-distribution';

export type ServiceType = 'ClusterIP' | 'NodePort' | 'LoadBalancer' | 'ExternalName';
export type L4Protocol = 'TCP' | 'UDP' | 'SCTP';

export interface ServicePort {
  /** '' for the single unnamed port a Service may have. */
  name: string;
  port: number;
  /** A number, or the name of a container port (resolved per endpoint through the EndpointSlice). */
  targetPort: number | string;
  protocol: L4Protocol;
}

export interface ServiceInfo {
  namespace: string;
  name: string;
  uid: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  type: ServiceType;
  /** spec.clusterIPs (else spec.clusterIP) without '' and 'None'. Empty for headless and ExternalName Services. */
  clusterIPs: string[];
  /** clusterIP: None. */
  headless: boolean;
  ports: ServicePort[];
  selector: Record<string, string>;
  /** spec.trafficDistribution, else the networking.istio.io/traffic-distribution annotation. */
  trafficDistribution?: string;
  internalTrafficPolicy: 'Cluster' | 'Local';
  publishNotReadyAddresses: boolean;
}

export interface EndpointInfo {
  addresses: string[];
  /** conditions.ready; absent means ready (the API's rule). */
  ready: boolean;
  /** conditions.serving; absent means the same as ready. */
  serving: boolean;
  /** conditions.terminating; absent means false. */
  terminating: boolean;
  nodeName?: string;
  /** `kind/namespace/name`, e.g. `Pod/app/productpage-1`. */
  targetRef?: string;
}

export interface EndpointPortInfo {
  /** '' when unnamed: matches the Service's unnamed port. */
  name: string;
  port: number;
  protocol: L4Protocol;
}

export interface EndpointSliceInfo {
  namespace: string;
  name: string;
  /** The label kubernetes.io/service-name: the Service this slice belongs to ('' when unlabelled: no Service). */
  serviceName: string;
  addressType: 'IPv4' | 'IPv6' | 'FQDN';
  endpoints: EndpointInfo[];
  ports: EndpointPortInfo[];
}

const SERVICE_TYPES: readonly ServiceType[] = ['ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName'];
const PROTOCOLS: readonly L4Protocol[] = ['TCP', 'UDP', 'SCTP'];
/** IANA_SVC_NAME, the shape of a named targetPort: up to 15 lowercase alphanumerics and '-', at least one letter. */
const PORT_NAME = /^(?=.*[a-z])[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$/;

function meta(doc: Obj, kind: string): { name: string; namespace: string; uid: string; labels: Record<string, string>; annotations: Record<string, string>; where: string } {
  const m = doc.metadata;
  if (!isObj(m)) throw new WorkloadParseError(`${kind}: metadata must be a mapping`);
  if (typeof m.name !== 'string' || m.name === '') throw new WorkloadParseError(`${kind}.metadata.name must be a non-empty string`);
  const namespace = typeof m.namespace === 'string' && m.namespace ? m.namespace : 'default';
  const where = `${kind} ${namespace}/${m.name}`;
  return {
    name: m.name, namespace, uid: typeof m.uid === 'string' ? m.uid : '', where,
    labels: stringMap(m.labels, `${where}: metadata.labels`),
    annotations: stringMap(m.annotations, `${where}: metadata.annotations`),
  };
}

function portNumber(v: unknown, where: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535) throw new WorkloadParseError(`${where} must be a port number 1-65535, got ${JSON.stringify(v)}`);
  return v;
}

function protocol(v: unknown, where: string): L4Protocol {
  if (v === undefined || v === null) return 'TCP';
  if (typeof v !== 'string' || !PROTOCOLS.includes(v as L4Protocol)) throw new WorkloadParseError(`${where} must be one of ${PROTOCOLS.join(', ')}, got ${JSON.stringify(v)}`);
  return v as L4Protocol;
}

function optionalString(v: unknown, where: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new WorkloadParseError(`${where} must be a string`);
  return v;
}

function optionalBool(v: unknown, where: string): boolean | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw new WorkloadParseError(`${where} must be true or false`);
  return v;
}

/** An address, in canonical form (protocol/address.ts: `fd00:0:0::1` is `fd00::1`) so lookups by any form find it. */
function ip(v: unknown, where: string): string {
  if (typeof v !== 'string' || isIP(v) === 0) throw new WorkloadParseError(`${where} must be an IP address, got ${JSON.stringify(v)}`);
  return canonicalIp(v) as string;
}

/**
 * Addresses the API server refuses as endpoints (loopback, link-local, unspecified, multicast): refused here too, so a
 * hand-written slice cannot make a pod's agent dial its own loopback or a link-local address.
 */
function endpointIp(v: unknown, where: string): string {
  const a = ip(v, where);
  const lower = a.toLowerCase();
  const special = isIP(a) === 4
    ? /^(127\.|0\.|169\.254\.|22[4-9]\.|23\d\.)/.test(a)
    : lower === '::' || lower === '::1' || /^fe[89ab]/.test(lower) || lower.startsWith('ff');
  if (special) throw new WorkloadParseError(`${where} ${a} is a loopback, link-local, unspecified or multicast address: not a valid endpoint`);
  return a;
}

function targetPort(v: unknown, port: number, where: string): number | string {
  if (v === undefined || v === null) return port; // the API's default: the same as port
  if (typeof v === 'number') return portNumber(v, where);
  if (typeof v === 'string') {
    // The API accepts "8080" written as a string (an IntOrString holding a string of digits is rejected by the API
    // server, but YAML written by hand often quotes numbers): read it as the number it clearly is.
    if (/^\d+$/.test(v)) return portNumber(Number(v), where);
    if (PORT_NAME.test(v)) return v;
  }
  throw new WorkloadParseError(`${where} must be a port number or a port name, got ${JSON.stringify(v)}`);
}

/** Parses a v1 Service. */
export function parseService(doc: Obj): ServiceInfo {
  const m = meta(doc, 'Service');
  const where = m.where;
  const spec = doc.spec === undefined ? {} : doc.spec;
  if (!isObj(spec)) throw new WorkloadParseError(`${where}: spec must be a mapping`);
  const type = spec.type ?? 'ClusterIP';
  if (typeof type !== 'string' || !SERVICE_TYPES.includes(type as ServiceType)) {
    throw new WorkloadParseError(`${where}: spec.type must be one of ${SERVICE_TYPES.join(', ')}, got ${JSON.stringify(type)}`);
  }
  // Each value with the field it came from, so an error names what the file says.
  const raw: [unknown, string][] = [];
  if (spec.clusterIPs !== undefined && spec.clusterIPs !== null) {
    if (!Array.isArray(spec.clusterIPs)) throw new WorkloadParseError(`${where}: spec.clusterIPs must be a list`);
    (spec.clusterIPs as unknown[]).forEach((v, i) => raw.push([v, `spec.clusterIPs[${i}]`]));
  } else if (spec.clusterIP !== undefined && spec.clusterIP !== null) raw.push([spec.clusterIP, 'spec.clusterIP']);
  const headless = raw.some(([v]) => v === 'None');
  const clusterIPs = type === 'ExternalName' ? [] : raw.filter(([v]) => v !== '' && v !== 'None').map(([v, field]) => ip(v, `${where}: ${field}`));
  const ports: ServicePort[] = [];
  if (spec.ports !== undefined && spec.ports !== null) {
    if (!Array.isArray(spec.ports)) throw new WorkloadParseError(`${where}: spec.ports must be a list`);
    spec.ports.forEach((p: unknown, i: number) => {
      const pw = `${where}: spec.ports[${i}]`;
      if (!isObj(p)) throw new WorkloadParseError(`${pw} must be a mapping`);
      const port = portNumber(p.port, `${pw}.port`);
      ports.push({ name: optionalString(p.name, `${pw}.name`) ?? '', port, targetPort: targetPort(p.targetPort, port, `${pw}.targetPort`), protocol: protocol(p.protocol, `${pw}.protocol`) });
    });
  }
  const itp = spec.internalTrafficPolicy ?? 'Cluster';
  if (itp !== 'Cluster' && itp !== 'Local') throw new WorkloadParseError(`${where}: spec.internalTrafficPolicy must be Cluster or Local, got ${JSON.stringify(itp)}`);
  const trafficDistribution = optionalString(spec.trafficDistribution, `${where}: spec.trafficDistribution`) || m.annotations[TRAFFIC_DISTRIBUTION_ANNOTATION];
  return {
    namespace: m.namespace, name: m.name, uid: m.uid, labels: m.labels, annotations: m.annotations,
    type: type as ServiceType,
    clusterIPs,
    headless,
    ports,
    selector: stringMap(spec.selector, `${where}: spec.selector`),
    ...(trafficDistribution ? { trafficDistribution } : {}),
    internalTrafficPolicy: itp,
    publishNotReadyAddresses: optionalBool(spec.publishNotReadyAddresses, `${where}: spec.publishNotReadyAddresses`) ?? false,
  };
}

/** Parses a discovery.k8s.io/v1 EndpointSlice. */
export function parseEndpointSlice(doc: Obj): EndpointSliceInfo {
  const m = meta(doc, 'EndpointSlice');
  const where = m.where;
  const addressType = doc.addressType;
  if (addressType !== 'IPv4' && addressType !== 'IPv6' && addressType !== 'FQDN') {
    throw new WorkloadParseError(`${where}: addressType must be IPv4, IPv6 or FQDN, got ${JSON.stringify(addressType)}`);
  }
  const endpoints: EndpointInfo[] = [];
  const rawEndpoints = doc.endpoints ?? [];
  if (!Array.isArray(rawEndpoints)) throw new WorkloadParseError(`${where}: endpoints must be a list`);
  rawEndpoints.forEach((e: unknown, i: number) => {
    const ew = `${where}: endpoints[${i}]`;
    if (!isObj(e)) throw new WorkloadParseError(`${ew} must be a mapping`);
    if (!Array.isArray(e.addresses) || e.addresses.length === 0) throw new WorkloadParseError(`${ew}.addresses must be a non-empty list`);
    const addresses = e.addresses.map((a: unknown, j: number) => {
      if (addressType === 'FQDN') {
        if (typeof a !== 'string' || a === '') throw new WorkloadParseError(`${ew}.addresses[${j}] must be a host name`);
        return a;
      }
      const v = endpointIp(a, `${ew}.addresses[${j}]`);
      // Written in the slice's family, and of it once canonical: an IPv4-mapped IPv6 address (IPv4 on the wire) belongs
      // to neither slice type, as the API server has it.
      if ((isIP(a as string) === 4) !== (addressType === 'IPv4') || (ipFamily(v) === 'ipv4') !== (addressType === 'IPv4')) {
        throw new WorkloadParseError(`${ew}.addresses[${j}] ${String(a)} is not an ${addressType} address`);
      }
      return v;
    });
    const c = e.conditions ?? {};
    if (!isObj(c)) throw new WorkloadParseError(`${ew}.conditions must be a mapping`);
    const ready = optionalBool(c.ready, `${ew}.conditions.ready`) ?? true;
    let targetRef: string | undefined;
    if (e.targetRef !== undefined && e.targetRef !== null) {
      if (!isObj(e.targetRef)) throw new WorkloadParseError(`${ew}.targetRef must be a mapping`);
      const kind = optionalString(e.targetRef.kind, `${ew}.targetRef.kind`) ?? '';
      const ns = optionalString(e.targetRef.namespace, `${ew}.targetRef.namespace`) ?? m.namespace;
      const name = optionalString(e.targetRef.name, `${ew}.targetRef.name`) ?? '';
      if (name) targetRef = `${kind}/${ns}/${name}`;
    }
    const nodeName = optionalString(e.nodeName, `${ew}.nodeName`);
    endpoints.push({
      addresses,
      ready,
      serving: optionalBool(c.serving, `${ew}.conditions.serving`) ?? ready,
      terminating: optionalBool(c.terminating, `${ew}.conditions.terminating`) ?? false,
      ...(nodeName ? { nodeName } : {}),
      ...(targetRef ? { targetRef } : {}),
    });
  });
  const ports: EndpointPortInfo[] = [];
  const rawPorts = doc.ports ?? [];
  if (!Array.isArray(rawPorts)) throw new WorkloadParseError(`${where}: ports must be a list`);
  rawPorts.forEach((p: unknown, i: number) => {
    const pw = `${where}: ports[${i}]`;
    if (!isObj(p)) throw new WorkloadParseError(`${pw} must be a mapping`);
    // A port with no number means "all ports" in the API; no Service port maps to it, so it is left out.
    if (p.port === undefined || p.port === null) return;
    ports.push({ name: optionalString(p.name, `${pw}.name`) ?? '', port: portNumber(p.port, `${pw}.port`), protocol: protocol(p.protocol, `${pw}.protocol`) });
  });
  return { namespace: m.namespace, name: m.name, serviceName: m.labels[SERVICE_NAME_LABEL] ?? '', addressType, endpoints, ports };
}
