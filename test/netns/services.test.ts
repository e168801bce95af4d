// Kubernetes Services through the mesh on the simulated cluster, with kube-proxy's DNAT rules and cluster DNS in place:
// ClusterIP to an endpoint in HBONE (every redirect backend), load spread, readiness, plain endpoints, ports, edits, CLI.
import { netnsTest, withTestbed } from '../testbed/ava.js';
import type { RedirectMode, Testbed, TestbedPod } from '../testbed/index.js';
import type { ServicePolicyCheckResult } from '../../agent/src/policy/check.js';
import type { ServiceView } from '../../agent/src/workload/directory.js';
import type { ConnectionSnapshot } from '../../agent/src/forwarder/connections.js';
import { captureFabric } from './capture-wire.js';
import { AMBIENT, adminHttp, agentPod, ask, bookinfo, cli, eventually, metricSample, startEcho } from './helpers.js';

const MODES: RedirectMode[] = ['iptables', 'nftables', 'ebpf'];
const MARKER = 'AMBIENT-SERVICE-SECRET-7c1e';
const SLEEP = 'spiffe://cluster.local/ns/app/sa/sleep';
const PP_HOST = 'productpage.app.svc.cluster.local';

const allowSleep = {
  apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name: 'productpage-viewer', namespace: 'app' },
  spec: { selector: { matchLabels: { app: 'productpage' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/app/sa/sleep'] } }] }] },
};
const strict = { apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'app' }, spec: { mtls: { mode: 'STRICT' } } };

/** An echo server that answers every connection with its own name, so the client learns which endpoint it reached. */
async function startNamedEcho(pod: TestbedPod, port: number, name = pod.name): Promise<void> {
  void pod.spawn('ncat', ['-l', '-k', String(port), '--sh-exec', `read l; echo "${name}:$l"`]).catch(() => undefined);
  await pod.waitForPort(port);
}

/** `n` connections from `client` to host:port, one after another, in one process; counts the answers per endpoint name. */
async function spread(client: TestbedPod, host: string, port: number, n: number): Promise<Record<string, number>> {
  const script = `
import socket, sys, json, collections
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = collections.Counter()
for i in range(n):
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"x\\n")
        data = b""
        while not data.endswith(b"\\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        s.close()
        seen[data.decode().strip().split(":")[0] or "closed"] += 1
    except OSError as e:
        seen["error:" + type(e).__name__] += 1
print(json.dumps(seen))
`;
  const r = await client.exec('/usr/bin/python3', ['-c', script, host, String(port), String(n)], { timeout: 120_000 });
  return JSON.parse(String(r.stdout)) as Record<string, number>;
}

async function accessLines(tb: Testbed, node: number): Promise<Record<string, unknown>[]> {
  return (await tb.agent(node).logs({ currentRun: true })).filter((l) => l.scope === 'access');
}

for (const mode of MODES) {
  netnsTest.serial(`[${mode}] sleep calls productpage by its Service name: TLS to 15008 only, identity seen, ALLOW and STRICT hold`, async (t) => {
    const tb = await withTestbed(t, { nodes: 2, redirectMode: mode });
    const { productpage, sleep, notsleep } = await bookinfo(tb);
    const svc = await tb.addService({ namespace: 'app', name: 'productpage', selector: { app: 'productpage' }, ports: [{ name: 'http', port: 9080, targetPort: 9080 }] });
    await tb.setNamespace('plain', {});
    const [outsider] = await tb.addPods([{ node: 0, namespace: 'plain', name: 'outsider' }]);
    if (!outsider) throw new Error('pod missing');
    // kube-proxy's rules are really there: a pod outside the mesh reaches productpage through the ClusterIP.
    const nat = await tb.nodeExec(0, 'iptables-save', ['-t', 'nat']);
    t.regex(String(nat.stdout), /-A KUBE-SERVICES .*-d 10\.96\.\d+\.\d+\/32 .*--dport 9080 -j KUBE-SVC-/);
    t.true((await ask(outsider, svc.clusterIP, 9080, 'plain-client')).ok, 'an uncaptured client goes through kube-proxy');

    const cap = await captureFabric(tb, `svc-${mode}`);
    const r = await ask(sleep, 'productpage', 9080, MARKER); // the short name, through the pod's DNS search path
    t.true(r.ok, r.output);
    const wire = await cap.stop();
    t.deepEqual([...wire.payloadPorts], [15008], `only 15008 carried payload, flows ${[...wire.flows].join(' ')}`);
    t.false(wire.raw.includes(Buffer.from(MARKER)), 'the payload never crossed the link in clear');
    t.true(((await agentPod(tb, sleep))?.stats?.outbound.hbone ?? 0) >= 1, 'the source agent tunnelled it');

    const out = (await eventually(() => accessLines(tb, 0), (ls) => ls.some((l) => l['dst.service'] === PP_HOST), 6000)).find((l) => l['dst.service'] === PP_HOST);
    t.like(out, { direction: 'outbound', 'dst.addr': `${productpage.ip}:15008`, 'dst.hbone_addr': `${productpage.ip}:9080`, 'dst.workload': 'productpage', 'src.identity': SLEEP });
    const inb = (await eventually(() => accessLines(tb, 1), (ls) => ls.some((l) => l['src.identity'] === SLEEP), 6000)).find((l) => l['src.identity'] === SLEEP);
    t.like(inb, { direction: 'inbound', 'dst.service': PP_HOST, connection_security_policy: 'mutual_tls', response_flags: '-' });

    await tb.writeWorkload('authz.yaml', allowSleep);
    const refused = await eventually(() => ask(notsleep, 'productpage', 9080, 'n'), (a) => !a.ok, 6000);
    t.false(refused.ok, 'notsleep is refused through the Service');
    t.true((await ask(sleep, 'productpage', 9080, 's')).ok, 'sleep is admitted through the Service');
    if (mode === 'iptables') {
      // `policy check` on the Service answers for the endpoint behind it, at its target port.
      const node1 = cli(tb, 1);
      const allow = await node1('policy', 'check', '--from', 'app/sleep', '--to', 'app/productpage:9080', '-o', 'json');
      t.is(allow.exitCode, 0, allow.stderr);
      const allowJson = JSON.parse(allow.stdout) as ServicePolicyCheckResult;
      t.like(allowJson, { allowed: true, service: { namespace: 'app', name: 'productpage', hostname: PP_HOST, port: 9080, vips: [svc.clusterIP] } });
      t.like(allowJson.endpoints[0], { endpoint: `${productpage.ip}:9080`, pod: 'app/productpage', mesh: true, ready: true, candidate: true, result: { allowed: true, policy: 'app/productpage-viewer' } });
      const deny = await node1('policy', 'check', '--from', 'app/notsleep', '--to', 'app/productpage:9080');
      t.is(deny.exitCode, 1);
      t.regex(deny.stdout, /^DENY {2}spiffe:\/\/cluster\.local\/ns\/app\/sa\/notsleep -> Service app\/productpage:9080/);
      const asPod = await node1('policy', 'check', '--from', 'app/notsleep', '--to', 'app/pod/productpage:9080', '-o', 'json');
      t.is((JSON.parse(asPod.stdout) as { to?: { pod: string } }).to?.pod, 'app/productpage', 'pod/ names the pod of the same name');
    }

    await tb.writeWorkload('strict.yaml', strict);
    const plainRefused = await eventually(() => ask(outsider, svc.clusterIP, 9080, 'p'), (a) => !a.ok, 6000);
    t.false(plainRefused.ok, 'STRICT refuses the plaintext client that kube-proxy sends');
    t.true((await ask(sleep, `${PP_HOST}`, 9080, 's2')).ok, 'STRICT still admits sleep through the Service (FQDN)');
  });
}

netnsTest.serial('three endpoints, 300 connections through the ClusterIP: each gets 20-45 %', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  await tb.setNamespace('app', AMBIENT);
  const pods = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 0, namespace: 'app', name: 'web-a', labels: { app: 'web' } },
    { node: 1, namespace: 'app', name: 'web-b', labels: { app: 'web' } },
    { node: 1, namespace: 'app', name: 'web-c', labels: { app: 'web' } },
  ]);
  const [sleep, ...webs] = pods;
  if (!sleep) throw new Error('pods missing');
  for (const w of webs) await startNamedEcho(w, 8080);
  const svc = await tb.addService({ namespace: 'app', name: 'web', selector: { app: 'web' }, ports: [{ port: 80, targetPort: 8080 }] });
  const counts = await spread(sleep, svc.clusterIP, 80, 300);
  t.log(counts);
  for (const w of webs) {
    const share = (counts[w.name] ?? 0) / 300;
    t.true(share >= 0.2 && share <= 0.45, `${w.name}: ${(share * 100).toFixed(1)} % of ${JSON.stringify(counts)}`);
  }
  t.deepEqual(Object.keys(counts).sort(), ['web-a', 'web-b', 'web-c'], 'no connection failed');
  t.is(((await agentPod(tb, sleep))?.stats?.outbound.hbone ?? 0), 300, 'every connection went to an endpoint in HBONE');
});

netnsTest.serial('readiness: a not-ready endpoint gets no new connections; none ready is refused, counted and logged; CLI shows it', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  await tb.setNamespace('app', AMBIENT);
  const [sleep, a, b] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 1, namespace: 'app', name: 'web-a', labels: { app: 'web' } },
    { node: 1, namespace: 'app', name: 'web-b', labels: { app: 'web' } },
  ]);
  if (!sleep || !a || !b) throw new Error('pods missing');
  for (const w of [a, b]) await startNamedEcho(w, 8080);
  const svc = await tb.addService({ namespace: 'app', name: 'web', selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] });

  await tb.setPodReady(b, false);
  const onlyA = await eventually(() => spread(sleep, svc.clusterIP, 80, 20), (c) => c['web-a'] === 20, 3000);
  t.deepEqual(onlyA, { 'web-a': 20 }, 'the not-ready endpoint got nothing new');

  const node0 = cli(tb, 0);
  const views = JSON.parse((await node0('services', '-o', 'json')).stdout) as { services: ServiceView[] };
  const web = views.services.find((s) => s.name === 'web');
  t.like(web, { namespace: 'app', vip: svc.clusterIP, port: 80, portName: 'http', targetPort: 8080, hostname: 'web.app.svc.cluster.local' });
  t.like(web?.endpoints.find((e) => e.ip === b.ip), { ready: false, candidate: false, mesh: true, port: 8080, node: b.node.name });
  t.like(web?.endpoints.find((e) => e.ip === a.ip), { ready: true, candidate: true, mesh: true, identity: 'spiffe://cluster.local/ns/app/sa/default' });
  const text = await node0('services');
  t.is(text.exitCode, 0);
  t.regex(text.stdout, new RegExp(`app/web\\s+${svc.clusterIP.replaceAll('.', '\\.')}:80\\s+http\\s+8080\\s+${b.ip.replaceAll('.', '\\.')}:8080\\s+HBONE\\s+no\\s+no\\s+${b.node.name}`));

  await tb.setPodReady(a, false);
  const none = await eventually(() => spread(sleep, svc.clusterIP, 80, 1), (c) => c['web-a'] === undefined, 3000);
  t.deepEqual(Object.keys(none), ['error:ConnectionResetError'], `no ready endpoint: reset, ${JSON.stringify(none)}`);
  t.true(((await agentPod(tb, sleep))?.stats?.outbound.refused ?? 0) >= 1, 'counted in the pod stats');
  const failed = (await eventually(() => accessLines(tb, 0), (ls) => ls.some((l) => l.response_flags === 'UH'), 5000)).find((l) => l.response_flags === 'UH');
  t.like(failed, { msg: 'connection failed', 'dst.service': 'web.app.svc.cluster.local', 'dst.addr': `${svc.clusterIP}:80` });
  t.regex(String(failed?.error), /^no healthy upstream: 10\.96\.\d+\.\d+:80 \(app\/web has 2 endpoint\(s\) for port 80, none ready\)$/);
  const metrics = await adminHttp(tb, 0, 'GET', 'http://127.0.0.1:15020/metrics');
  t.true((metricSample(metrics.body, 'istio_tcp_connections_opened_total', { response_flags: 'UH', destination_service: 'web.app.svc.cluster.local', destination_service_name: 'web', destination_service_namespace: 'app' }) ?? 0) >= 1, 'counted in the metrics');
  t.true((metricSample(metrics.body, 'istio_tcp_connections_opened_total', { reporter: 'source', response_flags: '-', destination_service: 'web.app.svc.cluster.local' }) ?? 0) >= 20);
  const check = await node0('policy', 'check', '--from', 'app/sleep', '--to', 'app/web:80', '-o', 'json');
  t.is(check.exitCode, 1, 'no endpoint takes connections: not allowed');
  t.regex((JSON.parse(check.stdout) as ServicePolicyCheckResult).reason, /no endpoint takes new connections/);

  await tb.setPodReady(a, true);
  const back = await eventually(() => spread(sleep, svc.clusterIP, 80, 1), (c) => c['web-a'] === 1, 3000);
  t.deepEqual(back, { 'web-a': 1 }, 'ready again: served');
});

netnsTest.serial('a non-mesh endpoint behind a Service is reached in plain TCP at endpointIP:targetPort', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('legacy', {});
  const [sleep, db] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 1, namespace: 'legacy', name: 'db', labels: { app: 'db' } },
  ]);
  if (!sleep || !db) throw new Error('pods missing');
  await startEcho(db, 5432);
  const svc = await tb.addService({ namespace: 'legacy', name: 'db', selector: { app: 'db' }, ports: [{ port: 15432, targetPort: 5432 }] });
  const cap = await captureFabric(tb, 'svc-plain');
  const r = await ask(sleep, 'db.legacy', 15432, MARKER);
  const wire = await cap.stop();
  t.true(r.ok, r.output);
  t.true(r.output.includes(`from ${sleep.ip}`), `the endpoint saw the client pod's address: ${r.output}`);
  t.deepEqual([...wire.payloadPorts], [5432], 'plain TCP straight to the target port, never to the ClusterIP port');
  t.false([...wire.flows].some((f) => f.includes('15432')), 'nothing was sent to the ClusterIP port');
  t.is((await agentPod(tb, sleep))?.stats?.outbound.hbone, 0);
  const line = (await eventually(() => accessLines(tb, 0), (ls) => ls.some((l) => l['dst.service'] === 'db.legacy.svc.cluster.local'), 5000)).find((l) => l['dst.service'] === 'db.legacy.svc.cluster.local');
  t.like(line, { 'dst.addr': `${db.ip}:5432`, connection_security_policy: 'none', response_flags: '-' });
  t.false('dst.hbone_addr' in (line ?? {}));
  t.truthy(svc.clusterIP);
});

netnsTest.serial('named targetPort, a Service with two ports, and a Service edited while a connection is open', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  await tb.setNamespace('app', AMBIENT);
  const ports = [{ name: 'web-http', containerPort: 8080 }, { name: 'web-admin', containerPort: 9090 }];
  const [sleep, web] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 1, namespace: 'app', name: 'web', labels: { app: 'web' }, ports },
  ]);
  if (!sleep || !web) throw new Error('pods missing');
  await startNamedEcho(web, 8080, 'http');
  await startNamedEcho(web, 9090, 'admin');
  void web.spawn('ncat', ['-l', '-k', '7070', '--sh-exec', 'cat']).catch(() => undefined);
  await web.waitForPort(7070);
  const svc = await tb.addService({
    namespace: 'app', name: 'web', selector: { app: 'web' },
    ports: [{ name: 'http', port: 80, targetPort: 'web-http' }, { name: 'admin', port: 81, targetPort: 'web-admin' }, { name: 'raw', port: 82, targetPort: 7070 }],
  });
  t.deepEqual(await spread(sleep, svc.clusterIP, 80, 3), { http: 3 }, 'port 80 -> the named port web-http (8080)');
  t.deepEqual(await spread(sleep, svc.clusterIP, 81, 3), { admin: 3 }, 'port 81 -> the named port web-admin (9090)');

  // A connection held open through port 82 while the Service changes under it.
  const held = sleep.spawn('sh', ['-c', `(echo first; sleep 5; echo second; sleep 1) | ncat ${svc.clusterIP} 82`], { reject: false, timeout: 20_000 });
  const open = await eventually(async () => (JSON.parse((await cli(tb, 0)('conns', '-o', 'json')).stdout) as { connections: ConnectionSnapshot[] }).connections,
    (cs) => cs.some((c) => c.dst.addr === `${web.ip}:7070`), 5000);
  t.like(open.find((c) => c.dst.addr === `${web.ip}:7070`), { direction: 'outbound', mtls: true, service: { namespace: 'app', name: 'web', hostname: 'web.app.svc.cluster.local' }, serviceAddr: `${svc.clusterIP}:82` });
  await tb.updateService('app', 'web', { ports: [{ name: 'http', port: 80, targetPort: 'web-admin' }, { name: 'raw', port: 82, targetPort: 7070 }] });
  const swapped = await eventually(() => spread(sleep, svc.clusterIP, 80, 1), (c) => c.admin === 1, 1000);
  t.deepEqual(swapped, { admin: 1 }, 'within 1 s new connections follow the edit');
  const gone = await spread(sleep, svc.clusterIP, 81, 1);
  t.is(gone.admin, undefined, `the removed Service port no longer reaches the endpoint: ${JSON.stringify(gone)}`);
  // An address in the Service range (--service-cidrs, set by the testbed) that is no Service: refused, never sent.
  const cap = await captureFabric(tb, 'svc-unknown');
  const unknown = await spread(sleep, '10.96.255.254', 80, 1);
  const wire = await cap.stop();
  t.deepEqual(unknown, { 'error:ConnectionResetError': 1 }, 'reset by the agent');
  t.false([...wire.flows].some((f) => f.endsWith('>80')), `nothing sent toward the unknown address: ${[...wire.flows].join(' ')}`);
  const refusal = (await eventually(() => accessLines(tb, 0), (ls) => ls.some((l) => String(l.error).includes('10.96.255.254')), 5000)).find((l) => String(l.error).includes('10.96.255.254'));
  t.like(refusal, { msg: 'connection failed', response_flags: 'UH' });
  const out = await held;
  t.is(String(out.stdout).trim(), 'first\nsecond', 'the open connection carried on across the edit');
});
