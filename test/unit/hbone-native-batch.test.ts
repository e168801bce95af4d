// closedIn (agent/src/hbone/native.ts): which streams of one batch of the native library's events end in that batch, so
// their requests are answered without dialing the app (rapid reset split across reads).
import test from 'ava';
import { closedIn } from '../../agent/src/hbone/native.js';
import type { NativeEvent } from '../../agent/src/hbone/native-lib.js';

const request = (stream: number): NativeEvent => ({ ev: 'request', session: 1, stream, method: 'CONNECT', authority: '10.0.0.1:80', peer: 'spiffe://td/ns/a/sa/b' });
const closed = (stream: number): NativeEvent => ({ ev: 'closed', stream, bytesIn: 0, bytesOut: 0, h2Error: 8, errored: 1 });

test('streams closed in the batch are found whatever the order', (t) => {
  t.deepEqual([...closedIn([request(3), request(5), closed(3), closed(7)])].sort(), [3, 7]);
});

test('a batch without closed events closes nothing', (t) => {
  t.is(closedIn([request(3), { ev: 'status', stream: 3, status: 200 }]).size, 0);
  t.is(closedIn([]).size, 0);
});
