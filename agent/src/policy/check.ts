// `ambient-node policy check`: what the destination's agent would decide for a connection from a service account to a
// pod's port, and which policy decided. Pure: argument parsing and the evaluation over the current policies.
import { spiffeId } from '../identity/spiffe.js';
import type { PodInfo } from '../workload/types.js';
import { appliesTo, authorize, type AuthorizationPolicy, type DryRunResult } from './authorization.js';
import { effectiveMtlsMode, type MtlsMode, type PeerAuthentication } from './peer-authentication.js';

export interface PolicyCheckQuery {
  from: { namespace: string; serviceAccount: string; ip?: string };
  to: { namespace: string; pod: string; port: number };
}

export interface PolicyCheckResult {
  from: { principal: string; namespace: string; ip?: string };
  to: { pod: string; ip: string; port: number };
  /** The AuthorizationPolicy decision for an HBONE (mutual TLS) connection from that identity. */
  allowed: boolean;
  reason: string;
  /** `ns/name` of the policy that decided; absent when a default decided. */
  policy?: string;
  /** Every AuthorizationPolicy that applies to the destination pod, `ns/name (ACTION)`. */
  applicable: string[];
  dryRun: DryRunResult[];
  dryRunAllowed?: boolean;
  /** PeerAuthentication on that port: whether a plaintext (non-mesh) client would be let in at all. */
  mtlsMode: Exclude<MtlsMode, 'UNSET'>;
  /** L7-only fields dropped from the applicable policies, as parsing reported them. */
  warnings: string[];
}

export class PolicyCheckArgError extends Error {
  readonly code = 'AMB_ERR_BAD_REQUEST';
  constructor(msg: string) {
    super(msg);
    this.name = 'PolicyCheckArgError';
  }
}

const NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

/** Parses `--from <ns>/<sa>` and `--to <ns>/<pod>:<port>` (plus an optional source IP). */
export function parsePolicyCheckArgs(from: string, to: string, fromIp?: string): PolicyCheckQuery {
  const f = /^([^/]+)\/([^/]+)$/.exec(from);
  if (!f || !NAME.test(f[1] ?? '') || !NAME.test(f[2] ?? '')) throw new PolicyCheckArgError(`--from must be <namespace>/<serviceaccount>, got ${JSON.stringify(from)}`);
  const t = /^([^/]+)\/([^/:]+):(\d+)$/.exec(to);
  if (!t || !NAME.test(t[1] ?? '') || !NAME.test(t[2] ?? '')) throw new PolicyCheckArgError(`--to must be <namespace>/<pod>:<port>, got ${JSON.stringify(to)}`);
  const port = Number(t[3]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new PolicyCheckArgError(`--to port must be 1-65535, got ${t[3]}`);
  if (fromIp !== undefined && !/^[0-9a-fA-F.:]+$/.test(fromIp)) throw new PolicyCheckArgError(`--from-ip must be an IP address, got ${JSON.stringify(fromIp)}`);
  return {
    from: { namespace: f[1] as string, serviceAccount: f[2] as string, ...(fromIp ? { ip: fromIp } : {}) },
    to: { namespace: t[1] as string, pod: t[2] as string, port },
  };
}

/** Evaluates the query against the current policies, for the destination pod as the workload source describes it. */
export function checkPolicy(
  q: PolicyCheckQuery,
  pod: PodInfo,
  policies: { authorization: readonly AuthorizationPolicy[]; peerAuthentication: readonly PeerAuthentication[] },
  trustDomain: string,
): PolicyCheckResult {
  const principal = spiffeId(trustDomain, q.from.namespace, q.from.serviceAccount);
  const ip = pod.podIPs[0] ?? '';
  const dst = { namespace: pod.namespace, labels: pod.labels };
  const d = authorize(policies.authorization, {
    source: { ip: q.from.ip ?? '', principal },
    destination: { ...dst, ip, port: q.to.port },
  });
  const applicable = policies.authorization.filter((p) => appliesTo(p, dst));
  return {
    from: { principal, namespace: q.from.namespace, ...(q.from.ip ? { ip: q.from.ip } : {}) },
    to: { pod: `${pod.namespace}/${pod.name}`, ip, port: q.to.port },
    allowed: d.allowed,
    reason: d.reason,
    ...(d.policy ? { policy: d.policy } : {}),
    applicable: applicable.map((p) => `${p.namespace}/${p.name} (${p.action}${p.dryRun ? ', dry-run' : ''})`).sort(),
    dryRun: d.dryRun,
    ...(d.dryRunAllowed !== undefined ? { dryRunAllowed: d.dryRunAllowed } : {}),
    mtlsMode: effectiveMtlsMode(policies.peerAuthentication, dst, q.to.port),
    warnings: applicable.flatMap((p) => p.warnings),
  };
}
