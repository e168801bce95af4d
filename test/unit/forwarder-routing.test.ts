// Unit tests for the forwarder's pure routing decision: never an open proxy, never a loop into the agent's own ports.
import test from 'ava';
import { upstreamFor } from '../../agent/src/forwarder/pod-forwarder.js';
import { KeyedMutex } from '../../agent/src/registry/keyed-mutex.js';

const ips = ['10.244.1.5'];

test('outbound goes to the original destination', (t) => {
  t.deepEqual(upstreamFor('outbound', { address: '10.244.2.7', port: 8080 }, ips), { host: '10.244.2.7', port: 8080 });
});

test('outbound straight to the listener is refused', (t) => {
  t.true('refuse' in upstreamFor('outbound', { address: '127.0.0.1', port: 15001 }, ips));
});

test('inbound only to this pod', (t) => {
  t.deepEqual(upstreamFor('inbound', { address: '10.244.1.5', port: 9080 }, ips), { host: '10.244.1.5', port: 9080 });
  t.true('refuse' in upstreamFor('inbound', { address: '10.244.1.6', port: 9080 }, ips));
});

for (const port of [15001, 15006, 15008]) {
  test(`inbound to agent port ${port} is refused`, (t) => {
    t.true('refuse' in upstreamFor('inbound', { address: '10.244.1.5', port }, ips));
  });
}

test('keyed mutex serialises one key and lets others run', async (t) => {
  const m = new KeyedMutex();
  const order: string[] = [];
  const slow = (tag: string, ms: number) => async () => {
    order.push(`${tag}+`);
    await new Promise((r) => setTimeout(r, ms));
    order.push(`${tag}-`);
  };
  await Promise.all([m.run('a', slow('a1', 30)), m.run('a', slow('a2', 1)), m.run('b', slow('b1', 1))]);
  t.true(order.indexOf('a1-') < order.indexOf('a2+'));
  t.true(order.indexOf('b1+') < order.indexOf('a1-'));
});

test('keyed mutex keeps going after a failure', async (t) => {
  const m = new KeyedMutex();
  await t.throwsAsync(m.run('a', () => Promise.reject(new Error('boom'))));
  t.is(await m.run('a', () => Promise.resolve(7)), 7);
});
