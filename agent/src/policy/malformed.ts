// Policies that failed to parse and stand in force as fail-closed placeholders (an AuthorizationPolicy denying
// everything in its scope, a PeerAuthentication refusing plaintext there) until fixed or deleted: listing them for the
// agent's status and metrics, and the lines `ambient-node status` prints. Pure.
import type { AuthorizationPolicy } from './authorization.js';
import type { PeerAuthentication } from './peer-authentication.js';

/** One object that failed to parse and stands in force as a fail-closed placeholder. */
export interface MalformedPolicyRef { kind: 'AuthorizationPolicy' | 'PeerAuthentication'; policy: string; error: string }

/** Every placeholder among the current policies, sorted by kind then `ns/name`. */
export function malformedPolicies(authz: readonly AuthorizationPolicy[], peerAuthn: readonly PeerAuthentication[]): MalformedPolicyRef[] {
  const out: MalformedPolicyRef[] = [];
  for (const p of authz) if (p.malformed !== undefined) out.push({ kind: 'AuthorizationPolicy', policy: `${p.namespace}/${p.name}`, error: p.malformed });
  for (const p of peerAuthn) if (p.malformed !== undefined) out.push({ kind: 'PeerAuthentication', policy: `${p.namespace}/${p.name}`, error: p.malformed });
  return out.sort((a, b) => a.kind.localeCompare(b.kind) || a.policy.localeCompare(b.policy));
}

/** What a placeholder of this kind does in its scope. */
const EFFECT = { AuthorizationPolicy: 'denies everything in its scope', PeerAuthentication: 'refuses plaintext in its scope' } as const;

/**
 * The lines `ambient-node status` prints under its table: `malformed policies: N`, then one line per placeholder naming
 * it, its error and its effect. An agent too old to report them (field absent) prints nothing.
 */
export function renderMalformedPolicies(st: { malformedPolicies?: number; malformed?: { kind: string; policy: string; error: string }[] }): string[] {
  if (st.malformedPolicies === undefined) return [];
  const out = [`malformed policies: ${st.malformedPolicies}`];
  for (const m of st.malformed ?? []) {
    const effect = EFFECT[m.kind as keyof typeof EFFECT] ?? 'fails closed in its scope';
    out.push(`  MALFORMED ${m.kind} ${m.policy}: ${m.error} (${effect} until fixed or deleted)`);
  }
  return out;
}

/** Whether `ambient-node status` should exit 1: the agent is not ready, or a malformed policy stands in force. */
export function statusHasProblem(st: { ready: boolean; malformedPolicies?: number }): boolean {
  return !st.ready || (st.malformedPolicies ?? 0) > 0;
}

/** The log line of a new malformed policy that stands as a fail-closed placeholder (the kubernetes source's too). */
export const MALFORMED_POLICY_MSG = 'rejected malformed policy; with no previous good version it fails closed in its scope until fixed or deleted';

/** What a placeholder does, for the log: `kind ns/name` or a kind. */
export function failClosedEffect(kindOrKey: string): string {
  return kindOrKey.startsWith('PeerAuthentication') ? 'plaintext refused (as STRICT) in its scope' : 'every connection denied in its scope';
}