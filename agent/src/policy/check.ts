// `ambient-node policy check`: what the destination's agent would decide for a connection from a service account to a
// pod's port, or to a Service's port (per endpoint behind it), and which policy decided. Pure: argument parsing and the
// evaluation over the current policies.
import { AmbientError } from '../errors.js';
import { spiffeId } from '../identity/spiffe.js';
import { canonicalIp, formatHostPort, normalizeIp } from '../protocol/address.js';
import type { ServiceEntry } from '../workload/service-table.js';
import type { PodInfo } from '../workload/types.js';
import { appliesTo, authorize, type AuthorizationPolicy, type DryRunResult } from './authorization.js';
import { effectiveMtlsMode, malformedPeerAuthenticationsFor, type MtlsMode, type PeerAuthentication } from './peer-authentication.js';

export interface PolicyCheckQuery {
  from: { namespace: string; serviceAccount: string; ip?: string };
  /** `kind` when the argument said it (`<ns>/pod/<name>:<port>`, `<ns>/service/<name>:<port>`); else a Service of that name wins. */
  to: { namespace: string; name: string; port: number; kind?: 'pod' | 'service' };
}

export interface PolicyCheckResult {
  from: { principal: string; namespace: string; ip?: string };
  to: { pod: string; ip: string; port: number };
  /** The AuthorizationPolicy decision for an HBONE (mutual TLS) connection from that identity. */
  allowed: boolean;
  reason: string;
  /** `ns/name` of the policy that decided; absent when a default decided. */
  policy?: string;
  /** Every AuthorizationPolicy that applies to the destination pod, `ns/name (ACTION)`; a malformed one `ns/name (MALFORMED: error)`. */
  applicable: string[];
  dryRun: DryRunResult[];
  dryRunAllowed?: boolean;
  /** PeerAuthentication on that port: whether a plaintext (non-mesh) client would be let in at all. */
  mtlsMode: Exclude<MtlsMode, 'UNSET'>;
  /** Malformed PeerAuthentications in the pod's scope, `ns/name (MALFORMED: error)`: they make the mode STRICT. Absent when none. */
  mtlsMalformed?: string[];
  /** L7-only fields dropped from the applicable policies, as parsing reported them. */
  warnings: string[];
}

export class PolicyCheckArgError extends AmbientError<'AMB_ERR_BAD_REQUEST'> {
  constructor(msg: string) {
    super('AMB_ERR_BAD_REQUEST', msg);
  }
}

const NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

const KINDS = new Map<string, 'pod' | 'service'>([['pod', 'pod'], ['pods', 'pod'], ['po', 'pod'], ['service', 'service'], ['services', 'service'], ['svc', 'service']]);

/**
 * Parses `--from <ns>/<sa>` and `--to <ns>/<name>:<port>` (a Service of that name, else the pod), or the explicit
 * `<ns>/pod/<name>:<port>` and `<ns>/service/<name>:<port>` (kubectl's short forms too), plus an optional source IP.
 */
export function parsePolicyCheckArgs(from: string, to: string, fromIp?: string): PolicyCheckQuery {
  const f = /^([^/]+)\/([^/]+)$/.exec(from);
  if (!f || !NAME.test(f[1] ?? '') || !NAME.test(f[2] ?? '')) throw new PolicyCheckArgError(`--from must be <namespace>/<serviceaccount>, got ${JSON.stringify(from)}`);
  const t = /^([^/]+)\/(?:([^/]+)\/)?([^/:]+):(\d+)$/.exec(to);
  const kind = t?.[2] === undefined ? undefined : KINDS.get(t[2]);
  if (!t || !NAME.test(t[1] ?? '') || !NAME.test(t[3] ?? '') || (t[2] !== undefined && !kind)) {
    throw new PolicyCheckArgError(`--to must be <namespace>/<service or pod>:<port> (or <namespace>/pod/<name>:<port>, <namespace>/service/<name>:<port>), got ${JSON.stringify(to)}`);
  }
  const port = Number(t[4]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new PolicyCheckArgError(`--to port must be 1-65535, got ${t[4]}`);
  const ip = fromIp === undefined ? undefined : canonicalIp(fromIp);
  if (fromIp !== undefined && ip === undefined) throw new PolicyCheckArgError(`--from-ip must be an IPv4 or IPv6 address, got ${JSON.stringify(fromIp)}`);
  return {
    from: { namespace: f[1] as string, serviceAccount: f[2] as string, ...(ip ? { ip } : {}) },
    to: { namespace: t[1] as string, name: t[3] as string, port, ...(kind ? { kind } : {}) },
  };
}

/** Evaluates the query against the current policies, for the destination pod as the workload source describes it. */
export function checkPolicy(
  q: PolicyCheckQuery,
  pod: PodInfo,
  policies: { authorization: readonly AuthorizationPolicy[]; peerAuthentication: readonly PeerAuthentication[] },
  trustDomain: string,
  opts: { ip?: string; port?: number } = {},
): PolicyCheckResult {
  const principal = spiffeId(trustDomain, q.from.namespace, q.from.serviceAccount);
  const ip = (opts.ip && pod.podIPs.includes(normalizeIp(opts.ip)) ? normalizeIp(opts.ip) : pod.podIPs[0]) ?? '';
  const port = opts.port ?? q.to.port;
  const dst = { namespace: pod.namespace, labels: pod.labels };
  const d = authorize(policies.authorization, {
    source: { ip: q.from.ip ?? '', principal },
    destination: { ...dst, ip, port },
  });
  const applicable = policies.authorization.filter((p) => appliesTo(p, dst));
  const badPa = malformedPeerAuthenticationsFor(policies.peerAuthentication, dst);
  return {
    from: { principal, namespace: q.from.namespace, ...(q.from.ip ? { ip: q.from.ip } : {}) },
    to: { pod: `${pod.namespace}/${pod.name}`, ip, port },
    allowed: d.allowed,
    reason: d.reason,
    ...(d.policy ? { policy: d.policy } : {}),
    applicable: applicable.map((p) => `${p.namespace}/${p.name} (${p.malformed !== undefined ? `MALFORMED: ${p.malformed}` : `${p.action}${p.dryRun ? ', dry-run' : ''}`})`).sort(),
    dryRun: d.dryRun,
    ...(d.dryRunAllowed !== undefined ? { dryRunAllowed: d.dryRunAllowed } : {}),
    mtlsMode: effectiveMtlsMode(policies.peerAuthentication, dst, port),
    ...(badPa.length > 0 ? { mtlsMalformed: badPa.map((p) => `${p.namespace}/${p.name} (MALFORMED: ${p.malformed ?? ''})`) } : {}),
    warnings: applicable.flatMap((p) => p.warnings),
  };
}

/** One endpoint behind a Service port, and what its agent would decide. */
export interface ServiceEndpointCheck {
  /** `ip:targetPort` */
  endpoint: string;
  ready: boolean;
  /** Whether new connections are sent here (ready, and on this node when the Service wants that). */
  candidate: boolean;
  mesh: boolean;
  /** The pod behind the endpoint, when the workload source knows it. */
  pod?: string;
  /** Set for a mesh endpoint whose pod is known: the destination agent's decision. */
  result?: PolicyCheckResult;
  /** Why there is no decision (not in the mesh: plain TCP and no policy; pod unknown). */
  note?: string;
}

export interface ServicePolicyCheckResult {
  from: { principal: string; namespace: string; ip?: string };
  service: { namespace: string; name: string; hostname: string; port: number; vips: string[] };
  /** True when every endpoint that is a candidate for new connections admits the client (none: false). */
  allowed: boolean;
  reason: string;
  endpoints: ServiceEndpointCheck[];
}

/**
 * Answers for a Service port: each endpoint behind it (of every ClusterIP of the Service), evaluated at its target
 * port against the policies of its pod. Non-mesh endpoints enforce nothing (plain TCP); they admit the client.
 */
export function checkServicePolicy(
  q: PolicyCheckQuery,
  entries: readonly ServiceEntry[],
  resolve: (endpoint: { ip: string; targetRef?: string }) => { pod?: PodInfo; mesh: boolean },
  policies: { authorization: readonly AuthorizationPolicy[]; peerAuthentication: readonly PeerAuthentication[] },
  trustDomain: string,
): ServicePolicyCheckResult {
  const principal = spiffeId(trustDomain, q.from.namespace, q.from.serviceAccount);
  const first = entries[0];
  const endpoints: ServiceEndpointCheck[] = [];
  const seen = new Set<string>();
  for (const entry of entries) {
    const candidates = new Set(entry.candidates);
    for (const ep of entry.endpoints) {
      const key = formatHostPort(ep.ip, ep.port);
      if (seen.has(key)) continue;
      seen.add(key);
      const { pod, mesh } = resolve(ep);
      const base = { endpoint: key, ready: ep.ready, candidate: candidates.has(ep), mesh, ...(pod ? { pod: `${pod.namespace}/${pod.name}` } : {}) };
      if (!mesh) endpoints.push({ ...base, note: 'not in the mesh: reached in plain TCP, no policy is enforced there' });
      else if (!pod) endpoints.push({ ...base, note: 'a mesh workload the workload source has no pod for' });
      else endpoints.push({ ...base, result: checkPolicy(q, pod, policies, trustDomain, { ip: ep.ip, port: ep.port }) });
    }
  }
  const live = endpoints.filter((e) => e.candidate);
  const denied = live.filter((e) => e.result && !e.result.allowed);
  const allowed = live.length > 0 && denied.length === 0;
  const reason = live.length === 0
    ? 'no endpoint takes new connections (none ready): connections are refused'
    : denied.length > 0
      ? `denied by ${denied.length} of ${live.length} endpoint(s) taking new connections`
      : `admitted by all ${live.length} endpoint(s) taking new connections`;
  return {
    from: { principal, namespace: q.from.namespace, ...(q.from.ip ? { ip: q.from.ip } : {}) },
    service: { namespace: first?.service.namespace ?? q.to.namespace, name: first?.service.name ?? q.to.name, hostname: first?.service.hostname ?? '', port: q.to.port, vips: entries.map((e) => e.vip) },
    allowed,
    reason,
    endpoints,
  };
}
