// HBONE end to end on the simulated cluster: mesh traffic between nodes is mutual TLS on 15008 only (checked on the
// wire with tshark), bytes arrive intact, non-mesh destinations stay plain, and PeerAuthentication governs plaintext.
import { readdirSync, readFileSync } from 'node:fs';
import type { Testbed } from '../testbed/index.js';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { AMBIENT, agentPod, bookinfo, ask, eventually, sendRandom, startEcho, startSink } from './helpers.js';
import { captureFabric } from './capture-wire.js';

const MARKER = 'AMBIENT-NODE-SECRET-MARKER-7f3a';

netnsTest.serial('mesh traffic between nodes is TLS to 15008 only, never the app\'s bytes, and arrives intact', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  await tb.setNamespace('app', AMBIENT);
  const [sleep, productpage] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 1, namespace: 'app', name: 'productpage', serviceAccount: 'bookinfo-productpage' },
  ]);
  if (!sleep || !productpage) throw new Error('pods missing');
  await startEcho(productpage, 9080);
  const cap = await captureFabric(tb, 'hbone');
  const r = await ask(sleep, productpage.ip, 9080, MARKER);
  t.true(r.ok, r.output);
  const sink = await startSink(productpage, 9000);
  const sent = await sendRandom(sleep, productpage.ip, 9000, 512 * 1024);
  t.is(await sink.digest, sent);
  const wire = await cap.stop();

  t.deepEqual([...wire.payloadPorts], [15008], `only port 15008 carried payload, saw flows ${[...wire.flows].join(' ')}`);
  t.false(wire.raw.includes(Buffer.from(MARKER)), 'the marker never appears on the wire');
  t.true(wire.clientHellos.length >= 1, 'a TLS ClientHello was seen');
  for (const h of wire.clientHellos) {
    t.is(h.sni, '', 'no SNI');
    t.regex(h.versions, /0x0304/, 'TLS 1.3 offered');
    t.notRegex(h.versions, /0x0303/, 'nothing older than TLS 1.3 offered');
  }
  const src = await agentPod(tb, sleep);
  const dst = await agentPod(tb, productpage);
  t.true((src?.stats?.outbound.hbone ?? 0) >= 2, 'source agent tunnelled the connections');
  t.true((dst?.stats?.inbound.hbone ?? 0) >= 2, 'destination agent received them on 15008');
  const logs = await tb.agent(1).logs({ currentRun: true });
  t.true(logs.some((l) => l.peerIdentity === 'spiffe://cluster.local/ns/app/sa/sleep'), 'the peer identity is known to the destination agent');
});

netnsTest.serial('a mesh pod talking to a non-mesh pod stays plain TCP (passthrough)', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('legacy', {});
  const [sleep, web] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep' },
    { node: 1, namespace: 'legacy', name: 'web' },
  ]);
  if (!sleep || !web) throw new Error('pods missing');
  await startEcho(web, 8080);
  const cap = await captureFabric(tb, 'passthrough');
  const r = await ask(sleep, web.ip, 8080, MARKER);
  t.true(r.ok, r.output);
  const wire = await cap.stop();
  t.deepEqual([...wire.payloadPorts], [8080]);
  t.is((await agentPod(tb, sleep))?.stats?.outbound.hbone, 0);
  // Apps that reset their passthrough connections (SO_LINGER 0) while the echo is on its way: the agent's write to the
  // app fails, which must stay that connection's end, never the agent's (its pid is the same, and it carries on).
  const pid = tb.agent(0).pid;
  const resets = await sleep.exec('python3', ['-c', RESETS, web.ip, '8080', '20'], { timeout: 30_000, reject: false });
  t.is(resets.exitCode, 0, String(resets.stderr));
  t.true((await ask(sleep, web.ip, 8080, 'after-resets')).ok, 'passthrough still works after 20 resets');
  t.is(tb.agent(0).pid, pid, 'the same agent process');
});

/** Connects n times, sends a line and resets at once (SO_LINGER 0): the echo arrives at a closed socket. */
const RESETS = `
import socket, struct, sys, time
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    s = socket.create_connection((ip, port), timeout=10)
    s.sendall(b"r%d\\n" % i)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
time.sleep(0.5)
`;

netnsTest.serial('PeerAuthentication: PERMISSIVE admits a non-mesh client, STRICT refuses it, mesh clients pass either way', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('legacy', {});
  const [productpage, sleep, outsider] = await tb.addPods([
    { node: 1, namespace: 'app', name: 'productpage', labels: { app: 'productpage' } },
    { node: 0, namespace: 'app', name: 'sleep' },
    { node: 0, namespace: 'legacy', name: 'outsider' },
  ]);
  if (!productpage || !sleep || !outsider) throw new Error('pods missing');
  await startEcho(productpage, 9080);
  t.true((await ask(outsider, productpage.ip, 9080, 'permissive')).ok, 'PERMISSIVE by default');

  await tb.writeWorkload('pa-strict.yaml', {
    apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication',
    metadata: { name: 'strict', namespace: 'app' },
    spec: { mtls: { mode: 'STRICT' } },
  });
  const refused = await eventually(() => ask(outsider, productpage.ip, 9080, 'strict'), (a) => !a.ok, 6000);
  t.false(refused.ok, 'STRICT refuses plaintext');
  t.true((await ask(sleep, productpage.ip, 9080, 'mesh')).ok, 'mesh client still passes under STRICT');

  await tb.writeWorkload('pa-port.yaml', {
    apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication',
    metadata: { name: 'port-permissive', namespace: 'app' },
    spec: { selector: { matchLabels: { app: 'productpage' } }, mtls: { mode: 'STRICT' }, portLevelMtls: { 9080: { mode: 'PERMISSIVE' } } },
  });
  const back = await eventually(() => ask(outsider, productpage.ip, 9080, 'port-level'), (a) => a.ok, 6000);
  t.true(back.ok, 'port-level PERMISSIVE on a workload overrides the namespace STRICT');
});

netnsTest.serial('the destination agent restarting: refused while down, pooled connection dropped, HBONE works again at once', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  const { sleep, productpage } = await bookinfo(tb);
  t.true((await ask(sleep, productpage.ip, 9080, 'before')).ok);
  await tb.agent(1).kill('SIGKILL');
  t.false((await ask(sleep, productpage.ip, 9080, 'down')).ok, 'refused, never around the mesh');
  await tb.agent(1).start();
  const r = await ask(sleep, productpage.ip, 9080, 'after');
  t.true(r.ok, `the first connection after the restart works (the stale pooled connection was dropped): ${r.output}`);
});

/** Open file descriptors of an agent's Node process (the testbed starts it through nsenter). */
function agentFds(tb: Testbed, node: number): number {
  const pid = tb.agent(node).pid;
  if (pid === undefined) throw new Error('agent not running');
  let target = pid;
  if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'nsenter') {
    target = Number(readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)[0]);
  }
  return readdirSync(`/proc/${target}/fd`).length;
}

// Many connections, completed, refused (no app listening: 503) and reset by the client mid-stream, on one pooled
// HBONE connection: afterwards neither agent holds more descriptors than before (every socket, TLS and HTTP/2 object of
// a stream is released on every path: the native data path frees them in C, where nothing else would notice a leak).
const CHURN = `
import socket, sys
ip, port, closed_port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ok = 0
for i in range(n):
    s = socket.create_connection((ip, port), timeout=10)
    s.sendall(b"c%d\\n" % i)
    data = b""
    while not data.endswith(b"\\n"):
        chunk = s.recv(200)
        if not chunk:
            break
        data += chunk
    ok += data.startswith(b"pong:c%d" % i)
    s.close()
for i in range(n // 4):
    try:
        s = socket.create_connection((ip, closed_port), timeout=10)
        s.recv(10)
    except OSError:
        pass
    s.close()
for i in range(n // 4):
    s = socket.create_connection((ip, port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00")
    s.sendall(b"half")
    s.close()
print(ok)
`;

netnsTest.serial('stream churn: hundreds of completed, refused and reset streams leave no descriptor behind in either agent', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  const { sleep, productpage } = await bookinfo(tb);
  const warm = await ask(sleep, productpage.ip, 9080, 'warm');
  t.true(warm.ok, warm.output);
  await eventually(() => agentPod(tb, sleep), (p) => p?.stats?.outbound.opened === p?.stats?.outbound.closed);
  const before = [agentFds(tb, 0), agentFds(tb, 1)];
  const n = 200;
  const r = await sleep.exec('/usr/bin/python3', ['-c', CHURN, productpage.ip, '9080', '9999', String(n)], { timeout: 120_000 });
  t.is(Number(String(r.stdout).trim()), n, 'every completed connection got its answer');
  const src = await eventually(() => agentPod(tb, sleep), (p) => (p?.stats?.outbound.closed ?? 0) >= n + n / 2 + 1 && p?.stats?.outbound.opened === p?.stats?.outbound.closed, 30_000);
  t.is(src?.stats?.outbound.opened, src?.stats?.outbound.closed, 'every relay finished');
  const settled = await eventually(async () => [agentFds(tb, 0), agentFds(tb, 1)], (fds) => fds.every((f, i) => f <= (before[i] ?? 0)), 30_000);
  t.log(`agent descriptors before ${before.join('/')}, after ${settled.join('/')}`);
  t.deepEqual(settled.map((f, i) => f <= (before[i] ?? 0)), [true, true], `descriptors before ${before.join('/')} after ${settled.join('/')}`);
  t.true((await ask(sleep, productpage.ip, 9080, 'after')).ok, 'the mesh still works');
});
