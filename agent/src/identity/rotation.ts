// The certificate rotation schedule: when to renew, how long to back off after a CA failure, when to retry.
// Pure and deterministic: randomness comes in as a function returning [0, 1), times are epoch milliseconds or Dates.

/** Renewal happens at half the lifetime, moved by up to this fraction of the lifetime either way (40 % .. 60 %). */
export const RENEWAL_FRACTION = 0.5;
export const RENEWAL_JITTER = 0.1;
/** First retry after a CA failure waits about this long (ztunnel starts between 500 ms and 1 s). */
export const BACKOFF_BASE_MS = 1000;
/** Each further failure doubles the wait, up to this cap (ztunnel's 150 s). */
export const BACKOFF_CAP_MS = 150_000;
/** Every backoff is multiplied by a factor in [1 - j, 1 + j) (ztunnel's ±20 %), then capped again. */
export const BACKOFF_JITTER = 0.2;

export type Random = () => number;

/**
 * When to renew a certificate valid from `notBefore` to `notAfter`: at 50 % ± 10 % of its lifetime, so nodes sharing a CA
 * spread their renewals. Never after `notAfter`; a certificate with no lifetime left is due at `notBefore`.
 * Callers that get backdated certificates should pass the time they received it as `notBefore` (see CertManager).
 */
export function renewalTime(notBefore: Date, notAfter: Date, rand: Random): Date {
  const start = notBefore.getTime();
  const lifetime = notAfter.getTime() - start;
  if (!(lifetime > 0)) return new Date(start);
  const fraction = RENEWAL_FRACTION + RENEWAL_JITTER * (2 * clampUnit(rand()) - 1);
  return new Date(Math.min(notAfter.getTime(), start + Math.floor(lifetime * fraction)));
}

/**
 * How long to wait before retry number `attempt` (0 for the first retry after one failure): 1 s, 2 s, 4 s, ... capped at
 * 150 s, each scaled by a random factor in [0.8, 1.2) and capped again, so it never exceeds BACKOFF_CAP_MS.
 */
export function backoffDelay(attempt: number, rand: Random): number {
  const n = Math.max(0, Math.floor(attempt));
  // 2^n overflows to Infinity for large n; Math.min handles that.
  const raw = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** n);
  const factor = 1 + BACKOFF_JITTER * (2 * clampUnit(rand()) - 1);
  return Math.min(BACKOFF_CAP_MS, Math.round(raw * factor));
}

/**
 * When to retry after a failure at `now`: after the backoff, but no later than `validUntil` when a still-valid
 * certificate exists (ztunnel's `min(backoff, expiry)`), so the state flips to expired on time and a retry is attempted then.
 */
export function retryTime(now: number, attempt: number, validUntil: number | undefined, rand: Random): number {
  const at = now + backoffDelay(attempt, rand);
  return validUntil !== undefined && validUntil > now ? Math.min(at, validUntil) : at;
}

/** Random values outside [0, 1) (a broken injected source) must not push times past their bounds. */
function clampUnit(x: number): number {
  if (!Number.isFinite(x) || x < 0) return 0;
  return x >= 1 ? 1 - Number.EPSILON : x;
}
