// The pure parts of the native data plane's binding: its event lines, their framing, and the CONNECT header encoding.
import test from 'ava';
import { encodeHeaders, parseEvent, MAX_EVENT_LINE } from '../../agent/src/hbone/native-lib.js';
import { LineSplitter } from '../../agent/src/protocol/line-splitter.js';

test('event lines are parsed; unknown or malformed ones are rejected', (t) => {
  t.deepEqual(parseEvent('{"ev":"status","stream":7,"status":200}'), { ev: 'status', stream: 7, status: 200 });
  t.deepEqual(parseEvent('{"ev":"request","session":3,"stream":6,"method":"CONNECT","authority":"10.0.0.1:80","peer":"spiffe://td/ns/a/sa/b"}'), {
    ev: 'request', session: 3, stream: 6, method: 'CONNECT', authority: '10.0.0.1:80', peer: 'spiffe://td/ns/a/sa/b',
  });
  t.deepEqual(parseEvent('{"ev":"accepted","fd":23,"listener":4,"src":"10.0.0.5","srcPort":40000,"dst":"fd00::1","dstPort":80}'), {
    ev: 'accepted', fd: 23, listener: 4, src: '10.0.0.5', srcPort: 40000, dst: 'fd00::1', dstPort: 80,
  });
  t.like(parseEvent('{"ev":"listenerError","listener":4,"error":"accept: Too many open files; accepting again in 1000 ms"}'), { ev: 'listenerError', listener: 4 });
  t.is(parseEvent('{"ev":"bogus"}'), undefined);
  t.is(parseEvent('not json'), undefined);
  t.is(parseEvent('[1]'), undefined);
  t.is(parseEvent('null'), undefined);
});

test('lines split across chunks are reassembled; empty lines dropped', (t) => {
  const s = new LineSplitter(MAX_EVENT_LINE);
  t.deepEqual(s.push('{"a":1}\n{"b"'), ['{"a":1}']);
  t.deepEqual(s.push(':2}\n\n{"c":3}'), ['{"b":2}']);
  t.deepEqual(s.push('\n'), ['{"c":3}']);
  t.deepEqual(s.push(''), []);
});

test('CONNECT headers are encoded as lower-case name/value lines; newlines and NULs are refused', (t) => {
  t.is(encodeHeaders({ Forwarded: 'for="10.0.0.1:3"', baggage: 'k8s.namespace.name=app' }), 'forwarded\nfor="10.0.0.1:3"\nbaggage\nk8s.namespace.name=app\n');
  t.is(encodeHeaders({}), '');
  t.throws(() => encodeHeaders({ x: 'a\nb' }), { message: /newline or NUL/ });
  t.throws(() => encodeHeaders({ 'x\0': 'a' }), { message: /newline or NUL/ });
});
