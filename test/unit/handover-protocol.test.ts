// The take-over protocol's pure parts: message parsing, the start plan from the two locks, refusals, drain counts,
// and the relay hand-over's messages (versioned, every field bounded, descriptors counted), batches and SCM_RIGHTS encoding.
import test from 'ava';
import {
  HandoverProtocolError, RELAY_LIMITS, drainTally, encodeHandoverMessage, encodeRelayMessage, parseHandoverMessage, parseRelayMessage,
  isHandoverToken, isInboxName, newHandoverToken, refusalReason, relayBatches, relayInboxPath, startPlan, type HandoverMessage, type RelayMessage, type RelayMeta,
} from '../../agent/src/handover/protocol.js';
import { decodeScmRights, encodeScmRights, scmRightsSpace } from '../../agent/src/platform/fd-passing.js';

const messages: HandoverMessage[] = [
  { type: 'begin', pid: 42 },
  { type: 'released' },
  { type: 'refused', reason: 'busy' },
  { type: 'ready', pid: 43 },
  { type: 'ready', pid: 43, relays: 1 },
  { type: 'ready', pid: 1, relays: 1, inbox: '0123456789abcdef' },
  { type: 'draining', connections: 3, deadlineSeconds: 30 },
  { type: 'draining', connections: 3, deadlineSeconds: 30, moved: 7 },
  { type: 'drained', drained: 2, cut: 1 },
];
for (const m of messages) {
  test(`message ${m.type} ${JSON.stringify(m)} round-trips`, (t) => {
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
  ['relays version not a count', '{"type":"ready","pid":3,"relays":"1"}'],
  ['inbox not a token', '{"type":"ready","pid":3,"relays":1,"inbox":"../../etc/x"}'],
  ['moved negative', '{"type":"draining","connections":1,"deadlineSeconds":3,"moved":-2}'],
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

const meta: RelayMeta = {
  pod: 'uid-1', direction: 'inbound', src: { addr: '10.0.1.5:40000', workload: 'outsider', namespace: 'plain' },
  dst: { addr: '10.0.0.7:9100', workload: 'web', namespace: 'app', principal: 'spiffe://cluster.local/ns/app/sa/web' },
  service: { namespace: 'app', name: 'web', hostname: 'web.app.svc.cluster.local' }, serviceAddr: '10.96.0.10:80',
  startedAt: 1_700_000_000_000, bytesSent: 1234, bytesRecv: 99,
  policy: { source: { ip: '10.0.1.5' }, destination: { ip: '10.0.0.7', port: 9100 } },
};

const relayMessages: [RelayMessage, number][] = [
  [{ v: 1, type: 'relays', batch: 0, relays: [meta, { ...meta, pod: 'uid-2', direction: 'outbound', policy: undefined, service: undefined, serviceAddr: undefined }] }, 4],
  [{ v: 1, type: 'ack', batch: 3, accepted: [0, 2] }, 0],
  [{ v: 1, type: 'commit', batch: 3 }, 0],
  [{ v: 1, type: 'done', moved: 5, kept: 1 }, 0],
];
for (const [m, fds] of relayMessages) {
  test(`relay message ${m.type} round-trips with ${fds} descriptors`, (t) => {
    const back = parseRelayMessage(encodeRelayMessage(m), fds);
    t.deepEqual(back, JSON.parse(JSON.stringify(m)) as RelayMessage);
  });
}

const relaysLine = (relays: unknown[], extra: Record<string, unknown> = {}): Buffer => Buffer.from(JSON.stringify({ v: 1, type: 'relays', batch: 0, relays, ...extra }));
for (const [name, data, fds] of [
  ['not JSON', Buffer.from('{'), 0],
  ['another version', Buffer.from(JSON.stringify({ v: 2, type: 'commit', batch: 0 })), 0],
  ['no version', Buffer.from(JSON.stringify({ type: 'commit', batch: 0 })), 0],
  ['unknown type', Buffer.from(JSON.stringify({ v: 1, type: 'grab', batch: 0 })), 0],
  ['descriptors on a commit', Buffer.from(JSON.stringify({ v: 1, type: 'commit', batch: 0 })), 2],
  ['one descriptor short', relaysLine([meta]), 1],
  ['one descriptor too many', relaysLine([meta]), 3],
  ['no relays', relaysLine([]), 0],
  ['too many relays', relaysLine(Array.from({ length: RELAY_LIMITS.perMessage + 1 }, () => meta)), 2 * (RELAY_LIMITS.perMessage + 1)],
  ['a bad direction', relaysLine([{ ...meta, direction: 'sideways' }]), 2],
  ['an address too long', relaysLine([{ ...meta, src: { addr: 'x'.repeat(65) } }]), 2],
  ['an empty pod key', relaysLine([{ ...meta, pod: '' }]), 2],
  ['a negative byte count', relaysLine([{ ...meta, bytesSent: -1 }]), 2],
  ['a fractional start', relaysLine([{ ...meta, startedAt: 1.5 }]), 2],
  ['a policy port out of range', relaysLine([{ ...meta, policy: { source: { ip: '1.2.3.4' }, destination: { ip: '1.2.3.4', port: 70000 } } }]), 2],
  ['a service without a name', relaysLine([{ ...meta, service: { namespace: 'a', hostname: 'h' } }]), 2],
  ['an endpoint that is a string', relaysLine([{ ...meta, dst: '10.0.0.7:9100' }]), 2],
  ['ack with duplicates', Buffer.from(JSON.stringify({ v: 1, type: 'ack', batch: 0, accepted: [1, 1] })), 0],
  ['ack with an index out of range', Buffer.from(JSON.stringify({ v: 1, type: 'ack', batch: 0, accepted: [RELAY_LIMITS.perMessage] })), 0],
  ['ack with a fraction', Buffer.from(JSON.stringify({ v: 1, type: 'ack', batch: 0, accepted: [0.5] })), 0],
  ['over the size bound', Buffer.alloc(RELAY_LIMITS.maxMessageBytes + 1, 0x20), 0],
] as const) {
  test(`a malformed relay message is refused: ${name}`, (t) => {
    t.throws(() => parseRelayMessage(data, fds), { instanceOf: HandoverProtocolError });
  });
}

test('relay batches: perMessage each, at most total, the rest left over', (t) => {
  const items = Array.from({ length: 37 }, (_, i) => i);
  const { batches, over } = relayBatches(items, { perMessage: 16, total: 35 });
  t.deepEqual(batches.map((b) => b.length), [16, 16, 3]);
  t.deepEqual(batches.flat(), items.slice(0, 35));
  t.deepEqual(over, [35, 36]);
  t.deepEqual(relayBatches([], { perMessage: 16, total: 35 }), { batches: [], over: [] });
});

test('relay inbox path: in the state dir, named by a random token (never a pid: agents in pods are often all PID 1)', (t) => {
  const a = newHandoverToken();
  const b = newHandoverToken();
  t.not(a, b);
  t.true(isHandoverToken(a));
  t.is(relayInboxPath('/var/lib/ambient-node/', a), `/var/lib/ambient-node/relays.${a}.sock`);
  t.true(isInboxName(`relays.${a}.sock`));
  t.true(isInboxName('relays.42.sock'), 'an older agent\'s inbox is recognised (and removed as stale)');
  t.false(isInboxName('pods.json'));
  for (const bad of ['42', '../x', '', 'ZZZZZZZZZZZZZZZZ']) t.throws(() => relayInboxPath('/s', bad), { instanceOf: HandoverProtocolError }, bad);
});

test('SCM_RIGHTS: encoded as the kernel lays it out, decoded back; foreign or truncated control data is flagged', (t) => {
  const c = encodeScmRights([5, 6, 7]);
  t.is(c.length, scmRightsSpace(3));
  t.is(Number(c.readBigUInt64LE(0)), 16 + 12);
  t.deepEqual(decodeScmRights(c, c.length), { fds: [5, 6, 7], malformed: false });
  t.deepEqual(decodeScmRights(c, 0), { fds: [], malformed: false });
  const foreign = Buffer.from(c);
  foreign.writeInt32LE(2, 12); // SCM_CREDENTIALS
  t.true(decodeScmRights(foreign, foreign.length).malformed);
  const bad = Buffer.from(c);
  bad.writeBigUInt64LE(4096n, 0);
  t.true(decodeScmRights(bad, bad.length).malformed);
  t.true(decodeScmRights(c, 10).malformed);
});
