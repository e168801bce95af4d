// Unit tests for the forwarder's pure routing decisions (HBONE or passthrough, PeerAuthentication, CONNECT validation):
// never an open proxy, never a loop into the agent's own ports.
import test from 'ava';
import { decideOutbound, decidePlaintextInbound } from '../../agent/src/forwarder/routing.js';
import { decideInbound } from '../../agent/src/hbone/connect.js';
import { KeyedMutex } from '../../agent/src/registry/keyed-mutex.js';
import type { MeshWorkload } from '../../agent/src/workload/directory.js';

const ips = ['10.244.1.5'];
const peer: MeshWorkload = { ip: '10.244.2.7', namespace: 'app', name: 'web', serviceAccount: 'web', identity: 'spiffe://cluster.local/ns/app/sa/web', node: 'n2' };
const lookup = (ip: string): MeshWorkload | undefined => (ip === peer.ip ? peer : undefined);

test('outbound to a mesh workload goes through HBONE with its identity', (t) => {
  t.deepEqual(decideOutbound({ address: '10.244.2.7', port: 8080 }, { lookup }), { kind: 'hbone', peer, target: { address: '10.244.2.7', port: 8080 } });
});

test('outbound to anything else passes through', (t) => {
  t.deepEqual(decideOutbound({ address: '10.244.9.9', port: 8080 }, { lookup }), { kind: 'passthrough', target: { address: '10.244.9.9', port: 8080 } });
});

test('outbound straight to the listener is refused', (t) => {
  t.is(decideOutbound({ address: '127.0.0.1', port: 15001 }, { lookup }).kind, 'refuse');
});

test('plaintext inbound only to this pod, never to agent ports, and not under STRICT', (t) => {
  t.deepEqual(decidePlaintextInbound({ address: '10.244.1.5', port: 9080 }, ips, 'PERMISSIVE'), { ok: true });
  t.deepEqual(decidePlaintextInbound({ address: '10.244.1.5', port: 9080 }, ips, 'DISABLE'), { ok: true });
  t.false(decidePlaintextInbound({ address: '10.244.1.5', port: 9080 }, ips, 'STRICT').ok);
  t.false(decidePlaintextInbound({ address: '10.244.1.6', port: 9080 }, ips, 'PERMISSIVE').ok);
  for (const port of [15001, 15006, 15008]) t.false(decidePlaintextInbound({ address: '10.244.1.5', port }, ips, 'PERMISSIVE').ok, String(port));
});

const hboneCases: [string, string | undefined, string | undefined, number | 'ok'][] = [
  ['CONNECT to this pod', 'CONNECT', '10.244.1.5:9080', 'ok'],
  ['not CONNECT', 'GET', '10.244.1.5:9080', 400],
  ['another address', 'CONNECT', '10.244.1.6:9080', 400],
  ['a hostname', 'CONNECT', 'productpage:9080', 400],
  ['no port', 'CONNECT', '10.244.1.5', 400],
  ['port 0', 'CONNECT', '10.244.1.5:0', 400],
  ['no authority', 'CONNECT', undefined, 400],
  ['agent port 15001', 'CONNECT', '10.244.1.5:15001', 503],
  ['agent port 15006', 'CONNECT', '10.244.1.5:15006', 503],
  ['agent port 15008', 'CONNECT', '10.244.1.5:15008', 503],
];
for (const [name, method, authority, want] of hboneCases) {
  test(`HBONE inbound: ${name} => ${want}`, (t) => {
    const d = decideInbound(method, authority, ips);
    if (want === 'ok') t.deepEqual(d, { upstream: { host: '10.244.1.5', port: 9080 } });
    else t.is('status' in d ? d.status : 0, want);
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
