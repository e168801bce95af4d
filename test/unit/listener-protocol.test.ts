// The listener hand-over's pure pieces: message parsing, the checks of a received listener, and both sides' decisions.
import test from 'ava';
import {
  LISTENER_ADDRESSES, LISTENER_HANDOVER_VERSION, encodeListenerMessage, listenerDecision, listenerInboxPath, listenerProblem, listenerRefusal, parseListenerMessage,
  podListenerKinds,
} from '../../agent/src/handover/listener-protocol.js';
import { HandoverProtocolError, isInboxName, parseHandoverMessage } from '../../agent/src/handover/protocol.js';
import { AF_INET, AF_INET6, AF_UNIX, SOCK_STREAM } from '../../agent/src/platform/libc.js';

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

test('an IPv6 listener handed over must be an IPv6 socket on its kind\'s address (::1 outbound, :: inbound and HBONE)', (t) => {
  const out6 = { domain: AF_INET6, type: SOCK_STREAM, listening: true, local: { address: '::1', port: 15001 } };
  t.is(listenerProblem('outbound6', out6, true), undefined);
  t.is(listenerProblem('inbound6', { ...out6, local: { address: '::', port: 15006 } }, true), undefined);
  t.is(listenerProblem('hbone6', { ...out6, local: { address: '0:0::0', port: 15008 } }, true), undefined, 'any textual form of ::');
  t.regex(listenerProblem('outbound6', { ...out6, domain: AF_INET, local: { address: '127.0.0.1', port: 15001 } }, true) ?? '', /not an IPv6 TCP socket/);
  t.regex(listenerProblem('outbound', out6, true) ?? '', /not an IPv4 TCP socket/, 'an IPv6 socket never stands for an IPv4 kind');
  t.regex(listenerProblem('inbound6', { ...out6, local: { address: '::1', port: 15006 } }, true) ?? '', /bound to \[::1\]:15006, not \[::\]:15006/);
  t.regex(listenerProblem('hbone6', { ...out6, local: { address: '::', port: 15008 } }, false) ?? '', /network namespace/);
  const m = { v, type: 'listeners' as const, batch: 0, listeners: [{ pod: 'abc/eth0', kind: 'hbone6' as const }] };
  t.deepEqual(parseListenerMessage(encodeListenerMessage(m), 1), m, 'the IPv6 kinds travel in the same message (version unchanged)');
});

test('the listener plan: IPv4\'s three always; IPv6\'s three only when IPv6 is captured and the pod has an IPv6 address', (t) => {
  const v4 = ['outbound', 'inbound', 'hbone'];
  const both = [...v4, 'outbound6', 'inbound6', 'hbone6'];
  t.deepEqual(podListenerKinds(['10.244.0.5'], ['ipv4']), v4);
  t.deepEqual(podListenerKinds(['10.244.0.5', 'fd00::5'], ['ipv4']), v4, 'flag off: never an IPv6 listener, even for a dual-stack pod');
  t.deepEqual(podListenerKinds(['10.244.0.5'], ['ipv4', 'ipv6']), v4, 'IPv6 captured but the pod has no IPv6 address');
  t.deepEqual(podListenerKinds(['10.244.0.5', 'fd00::5'], ['ipv4', 'ipv6']), both);
  t.deepEqual(podListenerKinds(['fd00::5'], ['ipv4', 'ipv6']), both, 'IPv6-only: the IPv4 listeners too (as before; harmless)');
  t.deepEqual(podListenerKinds(['::ffff:10.0.0.5'], ['ipv4', 'ipv6']), v4, 'IPv4-mapped is IPv4');
  t.deepEqual(both.map((k) => LISTENER_ADDRESSES[k as keyof typeof LISTENER_ADDRESSES].address), ['127.0.0.1', '0.0.0.0', '0.0.0.0', '::1', '::', '::']);
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
