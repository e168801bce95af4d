// The take-over protocol's pure parts: message parsing, the start plan from the two locks, refusals, drain counts.
import test from 'ava';
import {
  HandoverProtocolError, drainTally, encodeHandoverMessage, parseHandoverMessage, refusalReason, startPlan, type HandoverMessage,
} from '../../agent/src/handover/protocol.js';

const messages: HandoverMessage[] = [
  { type: 'begin', pid: 42 },
  { type: 'released' },
  { type: 'refused', reason: 'busy' },
  { type: 'ready', pid: 43 },
  { type: 'draining', connections: 3, deadlineSeconds: 30 },
  { type: 'drained', drained: 2, cut: 1 },
];
for (const m of messages) {
  test(`message ${m.type} round-trips`, (t) => {
    const line = encodeHandoverMessage(m);
    t.true(line.endsWith('\n'));
    t.deepEqual(parseHandoverMessage(line.trimEnd()), m);
  });
}

for (const [name, line] of [
  ['not JSON', '{'],
  ['an array', '[]'],
  ['unknown type', '{"type":"explode"}'],
  ['negative pid', '{"type":"begin","pid":-1}'],
  ['fractional count', '{"type":"drained","drained":1.5,"cut":0}'],
  ['reason not a string', '{"type":"refused","reason":3}'],
] as const) {
  test(`a malformed message is refused: ${name}`, (t) => {
    t.throws(() => parseHandoverMessage(line), { instanceOf: HandoverProtocolError });
  });
}

test('start plan: both locks is a fresh start, handover only is a take-over, no handover lock is a third agent', (t) => {
  t.is(startPlan({ handover: true, agent: true }), 'fresh');
  t.is(startPlan({ handover: true, agent: false }), 'take-over');
  t.is(startPlan({ handover: false, agent: false }), 'refuse');
  t.is(startPlan({ handover: false, agent: true }), 'refuse');
});

test('a predecessor hands over only when ready, not stopping and not already handing over', (t) => {
  t.is(refusalReason({ ready: true, handingOver: false, stopping: false }), undefined);
  t.regex(refusalReason({ ready: false, handingOver: false, stopping: false }) ?? '', /not ready/);
  t.regex(refusalReason({ ready: false, handingOver: true, stopping: false }) ?? '', /already handing over/);
  t.regex(refusalReason({ ready: true, handingOver: false, stopping: true }) ?? '', /stopping/);
});

test('drain: finished when nothing is left or at the deadline; what is left then is cut', (t) => {
  t.deepEqual(drainTally(3, 0, 2, false), { finished: false, tally: { atStart: 3, drained: 1, cut: 0 } });
  t.deepEqual(drainTally(3, 1, 0, false), { finished: true, tally: { atStart: 3, drained: 4, cut: 0 } });
  t.deepEqual(drainTally(3, 0, 2, true), { finished: true, tally: { atStart: 3, drained: 1, cut: 2 } });
  t.deepEqual(drainTally(0, 0, 0, false), { finished: true, tally: { atStart: 0, drained: 0, cut: 0 } });
});
