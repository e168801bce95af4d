// Domain types for the workloads the agent knows about, converted once from Kubernetes-shaped objects.
// Nothing past fromK8sObject sees raw YAML; unknown kinds are left to the caller, malformed ones are reported with their name and field.

import { parsePeerAuthentication, type PeerAuthentication } from '../policy/peer-authentication.js';
import { parseAuthorizationPolicy, type AuthorizationPolicy } from '../policy/authorization.js';
import { normalizeIp } from '../protocol/address.js';
import { isObj, stringMap, WorkloadParseError, type Obj } from './k8s-fields.js';
import { flat, intern, internMap } from './intern.js';
import { parseEndpointSlice, parseService, type EndpointSliceInfo, type ServiceInfo } from './service-objects.js';

export { WorkloadParseError } from './k8s-fields.js';

export const DATAPLANE_MODE_LABEL = 'istio.io/dataplane-mode';

/** The pod annotations the agent reads (the kubernetes source's capture state); a PodInfo keeps only these. */
export const POD_ANNOTATIONS_KEPT: readonly string[] = ['ambient.istio.io/redirection'];

/**
 * A pod as the agent keeps it: a compact record of the fields it uses, never the parsed object. Repeated strings
 * (namespace, node, service account, label keys and values) and whole label sets are shared copies (intern.ts): labels
 * and annotations are frozen and shared between pods.
 */
export interface PodInfo {
  namespace: string;
  name: string;
  uid: string;
  labels: Readonly<Record<string, string>>;
  /** Only POD_ANNOTATIONS_KEPT (all are checked to be strings). */
  annotations: Readonly<Record<string, string>>;
  nodeName: string;
  serviceAccount: string;
  hostNetwork: boolean;
  podIPs: string[];
  /** Set when the pod is being deleted (metadata.deletionTimestamp): never enrolled late. */
  terminating?: true;
}

export interface NamespaceInfo {
  name: string;
  labels: Record<string, string>;
}

export type WorkloadObject =
  | { kind: 'Pod'; pod: PodInfo }
  | { kind: 'Namespace'; namespace: NamespaceInfo }
  | { kind: 'PeerAuthentication'; peerAuthentication: PeerAuthentication }
  | { kind: 'AuthorizationPolicy'; authorizationPolicy: AuthorizationPolicy }
  | { kind: 'Service'; service: ServiceInfo }
  | { kind: 'EndpointSlice'; endpointSlice: EndpointSliceInfo };

function reqString(o: Obj, key: string, where: string): string {
  const v = o[key];
  if (typeof v !== 'string' || v === '') throw new WorkloadParseError(`${where}.${key} must be a non-empty string`);
  return v;
}

/** Converts one Kubernetes-shaped object; returns undefined for kinds (and versions) the agent does not use. */
export function fromK8sObject(doc: unknown): WorkloadObject | undefined {
  if (!isObj(doc)) throw new WorkloadParseError('object must be a mapping');
  const kind = doc.kind;
  const istioSecurity = typeof doc.apiVersion === 'string' && doc.apiVersion.startsWith('security.istio.io/');
  if (kind === 'PeerAuthentication' && istioSecurity) return { kind, peerAuthentication: parsePeerAuthentication(doc) };
  if (kind === 'AuthorizationPolicy' && istioSecurity) return { kind, authorizationPolicy: parseAuthorizationPolicy(doc) };
  // Only the versions whose shape is parsed here: an older EndpointSlice (v1beta1 had `topology`) is not read as v1.
  if (kind === 'Service' && doc.apiVersion === 'v1') return { kind, service: parseService(doc) };
  if (kind === 'EndpointSlice' && doc.apiVersion === 'discovery.k8s.io/v1') return { kind, endpointSlice: parseEndpointSlice(doc) };
  if (kind !== 'Pod' && kind !== 'Namespace') return undefined;
  const meta = doc.metadata;
  if (!isObj(meta)) throw new WorkloadParseError(`${kind}: metadata must be a mapping`);
  const name = reqString(meta, 'name', `${kind}.metadata`);
  if (kind === 'Namespace') {
    return { kind, namespace: { name: intern(name), labels: internMap(stringMap(meta.labels, `Namespace ${name}: metadata.labels`)) } };
  }
  const where = `Pod ${String(meta.namespace ?? 'default')}/${name}`;
  const spec = isObj(doc.spec) ? doc.spec : {};
  const status = isObj(doc.status) ? doc.status : {};
  // status.podIP first (the primary), then the rest of status.podIPs (dual-stack: one per family), each in canonical
  // form (protocol/address.ts) so that `fd00:0:0::1` and `fd00::1` are one address everywhere; duplicates dropped.
  const ips: string[] = [];
  const add = (v: unknown): void => {
    if (typeof v !== 'string' || v === '') return;
    const ip = flat(normalizeIp(v));
    if (!ips.includes(ip)) ips.push(ip);
  };
  add(status.podIP);
  if (Array.isArray(status.podIPs)) for (const p of status.podIPs) if (isObj(p)) add(p.ip);
  return {
    kind,
    pod: {
      namespace: typeof meta.namespace === 'string' && meta.namespace ? intern(meta.namespace) : 'default',
      name: flat(name),
      uid: typeof meta.uid === 'string' ? flat(meta.uid) : '',
      labels: internMap(stringMap(meta.labels, `${where}: metadata.labels`)),
      annotations: keptAnnotations(stringMap(meta.annotations, `${where}: metadata.annotations`)),
      nodeName: typeof spec.nodeName === 'string' ? intern(spec.nodeName) : '',
      serviceAccount: typeof spec.serviceAccountName === 'string' && spec.serviceAccountName ? intern(spec.serviceAccountName) : 'default',
      hostNetwork: spec.hostNetwork === true,
      podIPs: ips.slice(), // exactly sized (a pushed-to array keeps room for 17)
      ...(meta.deletionTimestamp ? { terminating: true as const } : {}),
    },
  };
}

/** The annotations of POD_ANNOTATIONS_KEPT in `all`, as a shared map. */
function keptAnnotations(all: Record<string, string>): Readonly<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const k of POD_ANNOTATIONS_KEPT) {
    const v = all[k];
    if (v !== undefined) out[k] = v;
  }
  return internMap(out);
}
