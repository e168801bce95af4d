// Unit tests for the rotation schedule: renewal at half-life within the jitter bounds, backoff growth, cap and retry times.
// Pure functions only: times and randomness are passed in, so every bound is checked exactly.
import test from 'ava';
import { backoffDelay as delayFor, type Random } from '../../agent/src/backoff.js';
import {
  BACKOFF_CAP_MS, CA_RETRY_BACKOFF, renewalTime, retryTime,
} from '../../agent/src/identity/rotation.js';

const H = 3_600_000;
const nb = new Date(Date.UTC(2030, 0, 1));
const na = new Date(nb.getTime() + 24 * H);
const fixed = (x: number) => () => x;
const backoffDelay = (attempt: number, rand: Random): number => delayFor(attempt, CA_RETRY_BACKOFF, rand);

test('renewal is at half-life with a centred random value', (t) => {
  t.is(renewalTime(nb, na, fixed(0.5)).getTime(), nb.getTime() + 12 * H);
});

test('renewal jitter stays within 40%..60% of the lifetime', (t) => {
  t.is(renewalTime(nb, na, fixed(0)).getTime(), nb.getTime() + Math.floor(24 * H * 0.4));
  const hi = renewalTime(nb, na, fixed(0.999999)).getTime();
  t.true(hi <= nb.getTime() + 24 * H * 0.6 && hi > nb.getTime() + 24 * H * 0.5999);
  for (let i = 0; i < 1000; i++) {
    const at = renewalTime(nb, na, Math.random).getTime();
    t.true(at >= nb.getTime() + 24 * H * 0.4 && at <= nb.getTime() + 24 * H * 0.6);
  }
});

test('renewal is never after expiry, even with a broken random source', (t) => {
  for (const r of [1, 5, Infinity, NaN, -3]) {
    const at = renewalTime(nb, na, fixed(r)).getTime();
    t.true(at <= na.getTime() && at >= nb.getTime(), `rand=${r}`);
  }
  // A one-second certificate, and one with no lifetime at all.
  const short = new Date(nb.getTime() + 1000);
  t.true(renewalTime(nb, short, fixed(0.99)).getTime() < short.getTime());
  t.is(renewalTime(nb, nb, fixed(0.5)).getTime(), nb.getTime());
  t.is(renewalTime(na, nb, fixed(0.5)).getTime(), na.getTime());
});

test('backoff doubles from about 1 s and is capped at 150 s', (t) => {
  const mid = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 100, 5000].map((a) => backoffDelay(a, fixed(0.5)));
  t.deepEqual(mid, [1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 150000, 150000, 150000, 150000, 150000]);
});

test('backoff jitter is ±20% and never exceeds the cap', (t) => {
  t.is(backoffDelay(0, fixed(0)), 800);
  t.is(backoffDelay(0, fixed(0.999999)), 1200);
  t.is(backoffDelay(3, fixed(0)), 6400);
  t.is(backoffDelay(20, fixed(0)), 120_000);
  for (let i = 0; i < 1000; i++) {
    const a = i % 12;
    const d = backoffDelay(a, Math.random);
    const raw = Math.min(BACKOFF_CAP_MS, 1000 * 2 ** a);
    t.true(d >= raw * 0.8 && d <= Math.min(BACKOFF_CAP_MS, raw * 1.2), `attempt ${a}: ${d}`);
  }
  t.is(backoffDelay(-1, fixed(0.5)), 1000);
});

test('retry waits for the backoff, but no longer than a still-valid certificate lasts', (t) => {
  const now = nb.getTime();
  t.is(retryTime(now, 0, undefined, fixed(0.5)), now + 1000);
  t.is(retryTime(now, 7, now + 60_000, fixed(0.5)), now + 60_000);
  t.is(retryTime(now, 1, now + 60_000, fixed(0.5)), now + 2000);
  // An already expired certificate does not pull the retry into the past.
  t.is(retryTime(now, 2, now - 1, fixed(0.5)), now + 4000);
});
