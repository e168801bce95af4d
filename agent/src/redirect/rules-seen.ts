// Where a pod's netfilter rules were last known to be exactly what the backend writes (the namespace's nf_tables
// generation then, and a digest of those rules), and the pure decisions on it that let re-adoption skip the tools.
import { createHash } from 'node:crypto';
import type { NfGeneration } from '../platform/nf-generation.js';

/**
 * A pod's rules as last proved exact: the namespace (cookie) and its nf_tables generation at that moment, and the digest
 * of the rules it then held (rulesDigest of what the backend compared or wrote). Kept in the pod's record, so that a
 * restarted agent finding the namespace still at that generation knows its tables hold those rules without a save.
 */
export interface RulesSeen extends NfGeneration {
  digest: string;
}

/** The digest of a backend's rules (its name first: another backend's rules never match). Pure. */
export function rulesDigest(backend: string, parts: readonly (readonly string[])[]): string {
  return createHash('sha256').update(JSON.stringify([backend, parts])).digest('base64url');
}

/** Whether `v` has RulesSeen's shape (a record read back from the state file may hold anything). Pure. */
export function isRulesSeen(v: unknown): v is RulesSeen {
  if (typeof v !== 'object' || v === null) return false;
  const r = v as Record<string, unknown>;
  return typeof r.gen === 'number' && Number.isInteger(r.gen) && typeof r.netnsCookie === 'string' && typeof r.digest === 'string';
}

/**
 * Whether the rules recorded as `seen` are still in place: the same namespace at the same generation (nothing committed
 * there since) and a digest among `wanted` (the rules this agent would write now, with every variant its install could
 * keep). Pure; a malformed record, or no reading of the generation, never stands.
 */
export function stillExact(seen: unknown, now: NfGeneration | undefined, wanted: readonly string[]): seen is RulesSeen {
  return isRulesSeen(seen) && now !== undefined && seen.gen === now.gen && seen.netnsCookie === now.netnsCookie && wanted.includes(seen.digest);
}

/** The generation of a namespace nothing was ever committed in (the kernel starts each namespace's count there). */
export const FIRST_GENERATION = 1;

/** The generation after `g` (nf_tables counts in 32 bits and skips 0). Pure. */
export function nextGeneration(g: number): number {
  return g >= 0xffffffff ? 1 : g + 1;
}

/**
 * What a read-back or an install proves: the rules `digest` stands for, at `after`, when exactly `commits` transactions
 * (ours) were committed in the namespace between the two readings (0 for a read-back: none). Anything else (another
 * writer, a reading missing, another namespace) proves nothing. Pure.
 */
export function provenSeen(before: NfGeneration | undefined, after: NfGeneration | undefined, commits: number, digest: string): RulesSeen | undefined {
  if (before === undefined || after === undefined || before.netnsCookie !== after.netnsCookie) return undefined;
  let g = before.gen;
  for (let i = 0; i < commits; i++) g = nextGeneration(g);
  return g === after.gen ? { ...after, digest } : undefined;
}

/** Whether two records say the same. Pure. */
export function sameSeen(a: RulesSeen | undefined, b: RulesSeen | undefined): boolean {
  return a === b || (a !== undefined && b !== undefined && a.gen === b.gen && a.netnsCookie === b.netnsCookie && a.digest === b.digest);
}
