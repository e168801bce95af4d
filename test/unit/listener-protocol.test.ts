// The listener hand-over's pure pieces: message parsing, the checks of a received listener, and both sides' decisions.
import test from 'ava';
import {
  LISTENER_HANDOVER_VERSION, encodeListenerMessage, listenerDecision, listenerInboxPath, listenerProblem, listenerRefusal, parseListenerMessage,
} from '../../agent/src/handover/listener-protocol.js';
import { HandoverProtocolError, isInboxName, parseHandoverMessage } from '../../agent/src/handover/protocol.js';
import { AF_INET, AF_UNIX, SOCK_STREAM } from '../../agent/src/platform/libc.js';

const v = LISTENER_HANDOVER_VERSION;
const TOKEN = '0123456789abcdef';

test('listener messages round-trip and carry exactly one descriptor per listener', (t) => {
  const m = { v, type: 'listeners' as const, batch: 0, listeners: [{ pod: 'abc/eth0', kind: 'outbound' as const }, { pod: 'abc/eth0', kind: 'hbone' as const }] };
  t.deepEqual(parseListenerMessage(encodeListenerMessage(m), 2), m);
  t.throws(() => parseListenerMessage(encodeListenerMessage(m), 1), { instanceOf: HandoverProtocolError });
  t.throws(() => parseListenerMessage(encodeListenerMessage({ v, type: 'done', sent: 2 }), 1), { instanceOf: HandoverProtocolError }, 'done carries none');
  t.throws(() => parseListenerMessage(Buffer.from(JSON.stringify({ ...m, v: 2 })), 2), { message: /version/ });
  t.throws(() => parseListenerMessage(Buffer.from(JSON.stringify({ ...m, listeners: [{ pod: 'x', kind: 'admin' }] })), 1), { message: /kind/ });
  t.throws(() => parseListenerMessage(Buffer.from(JSON.stringify({ v, type: 'ack', batch: 0, accepted: [1, 1] })), 0), { message: /distinct/ });
  t.throws(() => parseListenerMessage(Buffer.from('x'.repeat(100)), 0, { perMessage: 4, maxMessageBytes: 50 }), { message: /over 50 bytes/ });
});

test('a received listener is used only when it is a listening IPv4 TCP socket on its kind\'s address, in the pod\'s netns', (t) => {
  const ok = { domain: AF_INET, type: SOCK_STREAM, listening: true, local: { address: '127.0.0.1', port: 15001 } };
  t.is(listenerProblem('outbound', ok, true), undefined);
  t.regex(listenerProblem('outbound', ok, false) ?? '', /network namespace/);
  t.regex(listenerProblem('inbound', ok, true) ?? '', /not 0\.0\.0\.0:15006/);
  t.regex(listenerProblem('outbound', { ...ok, listening: false }, true) ?? '', /not listening/);
  t.regex(listenerProblem('outbound', { ...ok, domain: AF_UNIX, local: undefined }, true) ?? '', /not an IPv4 TCP/);
  t.is(listenerProblem('hbone', { ...ok, local: { address: '0.0.0.0', port: 15008 } }, true), undefined);
});

test('begin and released carry the listener version; a predecessor refuses a successor that takes no listeners', (t) => {
  const begin = parseHandoverMessage(JSON.stringify({ type: 'begin', pid: 1, listeners: v, inbox: TOKEN }));
  t.deepEqual(begin, { type: 'begin', pid: 1, listeners: v, inbox: TOKEN });
  t.throws(() => parseHandoverMessage(JSON.stringify({ type: 'begin', pid: 1, listeners: v, inbox: '../x' })), { message: /inbox/ });
  if (begin.type !== 'begin') throw new Error('not begin');
  t.is(listenerRefusal(begin), undefined);
  t.regex(listenerRefusal({ type: 'begin', pid: 1 }) ?? '', /older version/);
  t.regex(listenerRefusal({ type: 'begin', pid: 1, listeners: v + 1, inbox: TOKEN }) ?? '', /version/);
  t.deepEqual(parseHandoverMessage('{"type":"released"}'), { type: 'released' });
  t.deepEqual(parseHandoverMessage(`{"type":"released","listeners":${v}}`), { type: 'released', listeners: v });
  t.is(listenerInboxPath('/var/lib/a/', TOKEN), `/var/lib/a/listeners.${TOKEN}.sock`);
  t.true(isInboxName(`listeners.${TOKEN}.sock`));
  t.throws(() => listenerInboxPath('/s', 'nope'));
});

test('the successor adopts with handed listeners only after a complete, clean transfer; an older predecessor means SO_REUSEPORT', (t) => {
  const clean = { received: 3, accepted: 3, refused: 0, done: { sent: 3 } };
  const released = { type: 'released' as const, listeners: v };
  t.deepEqual(listenerDecision(released, clean), { plan: 'handed' });
  t.is(listenerDecision({ type: 'released' }, { received: 0, accepted: 0, refused: 0 }).plan, 'reuseport');
  for (const [what, tally] of [
    ['no done', { received: 3, accepted: 3, refused: 0 }],
    ['count mismatch', { ...clean, done: { sent: 4 } }],
    ['a refused fd', { ...clean, accepted: 2, refused: 1 }],
    ['a problem', { ...clean, problem: 'timeout' }],
  ] as const) t.is(listenerDecision(released, tally).plan, 'fail', what);
  t.is(listenerDecision({ type: 'released', listeners: v + 1 }, clean).plan, 'fail', 'another version');
});
