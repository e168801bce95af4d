// The one exponential backoff (agent/src/backoff.ts) with each caller's policy: the CA retries, the Kubernetes
// retries and late enrolment keep the delays they had before they shared it. Pure: fixed random values, exact delays.
import test from 'ava';
import { backoffDelay, type BackoffPolicy } from '../../agent/src/backoff.js';
import { CA_RETRY_BACKOFF } from '../../agent/src/identity/rotation.js';
import { DEFAULT_BACKOFF, kubeBackoff } from '../../agent/src/workload/kube/reflector.js';

const fixed = (x: number) => (): number => x;
const never = (): number => {
  throw new Error('a policy without jitter must not draw a random value');
};

test('without jitter: doubling from initialMs, capped at maxMs, random never drawn', (t) => {
  const p: BackoffPolicy = { initialMs: 1000, maxMs: 30_000 };
  t.deepEqual([0, 1, 2, 3, 4, 5, 6, 100, 5000].map((a) => backoffDelay(a, p, never)), [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
});

test('attempts below 0 or fractional count as their floor, at least 0', (t) => {
  const p: BackoffPolicy = { initialMs: 100, maxMs: 10_000 };
  t.is(backoffDelay(-5, p, never), 100);
  t.is(backoffDelay(2.9, p, never), 400);
});

test('maxDoublings stops the doubling below maxMs', (t) => {
  const p: BackoffPolicy = { initialMs: 1, maxMs: 1e12, maxDoublings: 20 };
  t.is(backoffDelay(19, p, never), 2 ** 19);
  t.is(backoffDelay(20, p, never), 2 ** 20);
  t.is(backoffDelay(500, p, never), 2 ** 20);
});

test('jitter scales by a factor from minFactor to maxFactor, rounded, and never past maxMs', (t) => {
  const p: BackoffPolicy = { initialMs: 1000, maxMs: 5000, jitter: { minFactor: 0.5, maxFactor: 2 } };
  t.is(backoffDelay(0, p, fixed(0)), 500);
  t.is(backoffDelay(0, p, fixed(0.5)), 1250);
  t.is(backoffDelay(2, p, fixed(0.9)), 5000, 'capped again after jitter');
  for (const broken of [1, 7, Infinity, NaN, -2]) {
    const d = backoffDelay(1, p, fixed(broken));
    t.true(d >= 1000 && d <= 4000, `random ${broken}: ${d}`);
  }
});

test('CA retries (identity/rotation): 1 s doubling to 150 s, ±20 %, capped again', (t) => {
  t.deepEqual([0, 1, 2, 7, 8, 5000].map((a) => backoffDelay(a, CA_RETRY_BACKOFF, fixed(0.5))), [1000, 2000, 4000, 128_000, 150_000, 150_000]);
  t.is(backoffDelay(0, CA_RETRY_BACKOFF, fixed(0)), 800);
  t.is(backoffDelay(0, CA_RETRY_BACKOFF, fixed(0.999999)), 1200);
  t.is(backoffDelay(8, CA_RETRY_BACKOFF, fixed(0.999999)), 150_000);
});

test('Kubernetes retries (reflector, pod annotator): 500 ms doubling to 30 s, up to 20 % shorter', (t) => {
  const p = kubeBackoff(DEFAULT_BACKOFF);
  t.deepEqual([0, 1, 2, 5, 6, 40].map((a) => backoffDelay(a, p, fixed(0.999999))), [500, 1000, 2000, 16_000, 30_000, 30_000]);
  t.deepEqual([0, 1, 6].map((a) => backoffDelay(a, p, fixed(0))), [400, 800, 24_000]);
  t.is(backoffDelay(0, p, fixed(0.5)), 450);
  t.deepEqual(kubeBackoff({ initialMs: 1, maxMs: 2, jitter: { minFactor: 1, maxFactor: 1 } }).jitter, { minFactor: 1, maxFactor: 1 }, 'a policy keeps its own jitter');
});

test('late enrolment (running-pods): 1 s doubling to 30 s by default, no jitter', (t) => {
  const p: BackoffPolicy = { initialMs: 1000, maxMs: 30_000, maxDoublings: 20 };
  t.deepEqual([0, 1, 4, 5, 30].map((a) => backoffDelay(a, p, never)), [1000, 2000, 16_000, 30_000, 30_000]);
});
