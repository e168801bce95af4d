// Re-adoption's bound: pods are adopted in parallel but never more than the limit at once, each exactly once.
// Counted with deferred work items, not timed.
import test from 'ava';
import { ADOPT_CONCURRENCY, forEachBounded } from '../../agent/src/reconcile/adoption.js';

/** Runs forEachBounded over `n` items whose work waits a few turns; returns the most in flight and the items done. */
async function run(n: number, limit: number): Promise<{ maxInFlight: number; done: number[] }> {
  let inFlight = 0;
  let maxInFlight = 0;
  const done: number[] = [];
  const items = Array.from({ length: n }, (_, i) => i);
  await forEachBounded(items, limit, async (i) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    for (let turn = 0; turn < (i % 5) + 1; turn++) await new Promise<void>((resolve) => setImmediate(resolve));
    inFlight--;
    done.push(i);
  });
  return { maxInFlight, done };
}

test('250 pods: at most ADOPT_CONCURRENCY at once, all of them in parallel up to it, each once', async (t) => {
  const r = await run(250, ADOPT_CONCURRENCY);
  t.is(r.maxInFlight, ADOPT_CONCURRENCY);
  t.deepEqual([...r.done].sort((a, b) => a - b), Array.from({ length: 250 }, (_, i) => i));
});

test('fewer pods than the bound: all at once', async (t) => {
  const r = await run(5, 16);
  t.is(r.maxInFlight, 5);
  t.is(r.done.length, 5);
});

test('no pods, and a bound below one (taken as one)', async (t) => {
  t.deepEqual((await run(0, 16)).done, []);
  const r = await run(7, 0);
  t.is(r.maxInFlight, 1);
  t.is(r.done.length, 7);
});

test('a failing item rejects the whole run after the others already started', async (t) => {
  const seen: number[] = [];
  await t.throwsAsync(forEachBounded([1, 2, 3], 2, async (i) => {
    seen.push(i);
    if (i === 1) throw new Error('boom');
  }), { message: 'boom' });
  t.true(seen.includes(2));
});
