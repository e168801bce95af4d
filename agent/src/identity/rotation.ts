// The certificate rotation schedule: when to renew, how long to back off after a CA failure, when to retry.
// Pure and deterministic: randomness comes in as a function returning [0, 1), times are epoch milliseconds or Dates.
import { backoffDelay, clampUnit, type BackoffPolicy, type Random } from '../backoff.js';

export type { Random };

/** Renewal happens at half the lifetime, moved by up to this fraction of the lifetime either way (40 % .. 60 %). */
export const RENEWAL_FRACTION = 0.5;
export const RENEWAL_JITTER = 0.1;
/** First retry after a CA failure waits about this long (ztunnel starts between 500 ms and 1 s). */
export const BACKOFF_BASE_MS = 1000;
/** Each further failure doubles the wait, up to this cap (ztunnel's 150 s). */
export const BACKOFF_CAP_MS = 150_000;
/** Every backoff is multiplied by a factor in [1 - j, 1 + j) (ztunnel's ±20 %), then capped again. */
export const BACKOFF_JITTER = 0.2;

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
 * How the CA is retried after a failure: 1 s, 2 s, 4 s, ... capped at 150 s, each scaled by a random factor in
 * [0.8, 1.2) and capped again, so no wait exceeds BACKOFF_CAP_MS.
 */
export const CA_RETRY_BACKOFF: BackoffPolicy = {
  initialMs: BACKOFF_BASE_MS,
  maxMs: BACKOFF_CAP_MS,
  jitter: { minFactor: 1 - BACKOFF_JITTER, maxFactor: 1 + BACKOFF_JITTER },
};

/**
 * When to retry after a failure at `now`: after the backoff, but no later than `validUntil` when a still-valid
 * certificate exists (ztunnel's `min(backoff, expiry)`), so the state flips to expired on time and a retry is attempted then.
 */
export function retryTime(now: number, attempt: number, validUntil: number | undefined, rand: Random): number {
  const at = now + backoffDelay(attempt, CA_RETRY_BACKOFF, rand);
  return validUntil !== undefined && validUntil > now ? Math.min(at, validUntil) : at;
}
