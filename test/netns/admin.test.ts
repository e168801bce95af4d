// The agent's loopback admin endpoints on a live testbed: Istio TCP metrics for allowed and denied mesh connections,
// readiness, /config_dump (pods, certificates, never a private key) and /logging.
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { adminHttp as http, ask, bookinfo, eventually, metricSample as sample } from './helpers.js';

const SLEEP = 'spiffe://cluster.local/ns/app/sa/sleep';
const NOTSLEEP = 'spiffe://cluster.local/ns/app/sa/notsleep';

netnsTest.serial('admin endpoints: TCP metrics for allowed and denied connections, readiness, config_dump, logging', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  const { productpage, sleep, notsleep } = await bookinfo(tb);
  t.true((await ask(sleep, productpage.ip, 9080, 'hello')).ok);

  await tb.writeWorkload('authz-deny.yaml', {
    apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy',
    metadata: { name: 'deny-notsleep', namespace: 'app' },
    spec: { selector: { matchLabels: { app: 'productpage' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/app/sa/notsleep'] } }] }] },
  });
  t.false((await eventually(() => ask(notsleep, productpage.ip, 9080, 'n'), (a) => !a.ok, 6000)).ok, 'notsleep is denied');

  // Counted at close: wait until the destination agent has closed sleep's connection.
  const dst = { reporter: 'destination', source_principal: SLEEP, destination_workload: 'productpage', connection_security_policy: 'mutual_tls', response_flags: '-' };
  const metrics = await eventually(() => http(tb, 1, 'GET', 'http://127.0.0.1:15020/metrics'),
    (r) => (sample(r.body, 'istio_tcp_connections_closed_total', dst) ?? 0) >= 1, 6000);
  t.is(metrics.status, 200);
  t.true((sample(metrics.body, 'istio_tcp_connections_opened_total', { ...dst, source_workload: 'sleep', source_workload_namespace: 'app', destination_workload_namespace: 'app', destination_principal: 'spiffe://cluster.local/ns/app/sa/productpage' }) ?? 0) >= 1, metrics.body);
  // Only sleep's "hello\n" so far: received is client-to-server (6 bytes), sent the echo's longer answer.
  t.is(sample(metrics.body, 'istio_tcp_received_bytes_total', dst), 6, 'request bytes counted as received');
  t.true((sample(metrics.body, 'istio_tcp_sent_bytes_total', dst) ?? 0) > 'pong:hello from '.length, 'response bytes counted as sent');
  t.true((sample(metrics.body, 'istio_tcp_connections_opened_total', { reporter: 'destination', source_principal: NOTSLEEP, response_flags: 'DENY' }) ?? 0) >= 1, 'the denial is counted with response_flags DENY');
  t.true((sample(metrics.body, 'istio_tcp_connections_closed_total', { reporter: 'destination', source_principal: NOTSLEEP, response_flags: 'DENY' }) ?? 0) >= 1);
  t.regex(metrics.body, /ambient_node_pods_enrolled 1\b/);
  t.regex(metrics.body, /ambient_node_enrolment_duration_seconds_count\{backend="iptables"\} 1\b/, 'the enrolment latency histogram saw productpage');
  t.regex(metrics.body, /ambient_node_certificate_expiry_seconds\{identity="spiffe:\/\/cluster.local\/ns\/app\/sa\/productpage"\} \d+/);
  t.regex(metrics.body, /ambient_node_plugin_requests_total\{command="ADD",result="[a-z]+"\} 1/);
  const src = await eventually(() => http(tb, 0, 'GET', 'http://127.0.0.1:15020/stats/prometheus'),
    (r) => (sample(r.body, 'istio_tcp_connections_closed_total', { reporter: 'source', source_principal: SLEEP }) ?? 0) >= 1, 6000);
  t.true((sample(src.body, 'istio_tcp_sent_bytes_total', { reporter: 'source', source_workload: 'sleep', destination_workload: 'productpage', connection_security_policy: 'mutual_tls' }) ?? 0) > 0, src.body);

  t.is((await http(tb, 1, 'GET', 'http://127.0.0.1:15021/healthz/ready')).status, 200);

  const dump = await http(tb, 1, 'GET', 'http://127.0.0.1:15000/config_dump');
  t.is(dump.status, 200);
  t.false(dump.body.includes('PRIVATE KEY'), 'no private key in config_dump');
  const d = JSON.parse(dump.body) as { pods: { name: string }[]; certificates: { identities: { identity: string }[] }; workloads: unknown[]; policies: { authorizationPolicies: unknown[] }; config: { metricsPort: number } };
  t.true(d.pods.some((p) => p.name === 'productpage'));
  t.true(d.certificates.identities.some((c) => c.identity === 'spiffe://cluster.local/ns/app/sa/productpage'));
  t.true(d.workloads.length >= 3);
  t.is(d.policies.authorizationPolicies.length, 1);
  t.is(d.config.metricsPort, 15020);

  const initial = (JSON.parse((await http(tb, 1, 'GET', 'http://127.0.0.1:15000/logging')).body) as { level: string }).level;
  t.is(initial, 'debug', 'the testbed runs agents at debug');
  t.is((await http(tb, 1, 'POST', 'http://127.0.0.1:15000/logging?level=loud')).status, 400);
  t.is((await http(tb, 1, 'POST', 'http://127.0.0.1:15000/logging')).status, 400);
  t.is((await http(tb, 1, 'POST', 'http://127.0.0.1:15000/logging?level=warn')).status, 200);
  t.deepEqual(JSON.parse((await http(tb, 1, 'GET', 'http://127.0.0.1:15000/logging')).body), { level: 'warn' });
  // Existing child loggers follow the root: the access log's info line per connection stops at warn, then comes back.
  const closedLines = async (): Promise<number> => (await tb.agent(1).logs({ currentRun: true })).filter((l) => l.msg === 'connection complete').length;
  const before = await closedLines();
  t.true((await ask(sleep, productpage.ip, 9080, 'quiet')).ok);
  await new Promise((r) => setTimeout(r, 500));
  t.is(await closedLines(), before, 'no info line at warn');
  t.is((await http(tb, 1, 'POST', 'http://127.0.0.1:15000/logging?level=debug')).status, 200);
  t.true((await ask(sleep, productpage.ip, 9080, 'loud')).ok);
  t.true((await eventually(closedLines, (n) => n > before, 6000)) > before, 'info lines again at debug');
});
