// The re-adoption benchmark's reading of the agent's start-up steps (the `agent ready` line's startMs) and their medians.
// Pure parts of scripts/bench/readopt.ts; the benchmark itself runs against the testbed.
import test from 'ava';
import { startSteps, stepMedians, type ReadoptSample } from '../../scripts/bench/readopt.js';

test('start-up steps: numbers kept in their order, anything else dropped, nothing from an agent that logs none', (t) => {
  t.deepEqual(Object.entries(startSteps({ starting: 4, 'adopting pods': 1200.5, bad: 'x', nested: { a: 1 } })), [['starting', 4], ['adopting pods', 1200.5]]);
  t.deepEqual(startSteps(undefined), {});
  t.deepEqual(startSteps([3]), {});
});

test('step medians follow the first sample\'s order; a step one sample lacks is the median of the others', (t) => {
  const sample = (steps: Record<string, number>): ReadoptSample => ({
    pods: 1, readyMs: 1, firstLogMs: 1, adoptedMs: 1, adoptMs: 1, enrolled: 1, failed: 0, agentCpuS: 0, toolsCpuS: 0, machineBusyS: 0, steps,
  });
  t.is(stepMedians([sample({ b: 10, a: 1 }), sample({ a: 3, b: 20 }), sample({ b: 30 })]), 'b 20 ms, a 2 ms');
  t.is(stepMedians([]), '');
});
