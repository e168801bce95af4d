// The one exponential backoff: the delay before retry number `attempt`, from a policy each caller owns (CA retries,
// Kubernetes list/watch and pod annotations, late enrolment). Pure: randomness comes in as a function returning [0, 1).

/** A random source returning values in [0, 1); values outside are clamped, so a broken source cannot break the bounds. */
export type Random = () => number;

export interface BackoffPolicy {
  /** The delay before retry 0 (the first retry after one failure), before jitter. */
  initialMs: number;
  /** No delay exceeds this, before or after jitter. */
  maxMs: number;
  /** The delay stops doubling after this many retries (default: it doubles until maxMs caps it). */
  maxDoublings?: number;
  /** The doubled delay is scaled by minFactor + (maxFactor - minFactor) * random(); absent: no jitter (random unused). */
  jitter?: { minFactor: number; maxFactor: number };
}

/**
 * The delay before retry number `attempt` (0-based; negative or fractional counts as its floor, at least 0):
 * min(maxMs, initialMs * 2^min(attempt, maxDoublings)), scaled by the jitter factor, rounded, and capped at maxMs again.
 */
export function backoffDelay(attempt: number, policy: BackoffPolicy, random: Random): number {
  const n = Math.min(Math.max(0, Math.floor(attempt)), policy.maxDoublings ?? Infinity);
  // 2^n overflows to Infinity for large n; Math.min handles that.
  const raw = Math.min(policy.maxMs, policy.initialMs * 2 ** n);
  const j = policy.jitter;
  if (!j) return raw;
  const factor = j.minFactor + (j.maxFactor - j.minFactor) * clampUnit(random());
  return Math.min(policy.maxMs, Math.round(raw * factor));
}

/** Random values outside [0, 1) (a broken injected source) must not push delays past their bounds. */
export function clampUnit(x: number): number {
  if (!Number.isFinite(x) || x < 0) return 0;
  return x >= 1 ? 1 - Number.EPSILON : x;
}
