// Unit tests for the connection label builder and the agent's metrics registry.
import test from 'ava';
import { AgentMetrics, RESPONSE_FLAGS, TCP_LABELS, connectionLabels } from '../../agent/src/admin/metrics.js';

test('connectionLabels fills every Istio label, "unknown" for what is not known', (t) => {
  const l = connectionLabels({
    reporter: 'destination',
    source: { workload: 'sleep', namespace: 'app', principal: 'spiffe://cluster.local/ns/app/sa/sleep' },
    destination: { workload: 'productpage', namespace: 'app', principal: 'spiffe://cluster.local/ns/app/sa/productpage' },
    mtls: true,
  });
  t.deepEqual(Object.keys(l).sort(), [...TCP_LABELS].sort());
  t.like(l, { reporter: 'destination', source_workload: 'sleep', source_principal: 'spiffe://cluster.local/ns/app/sa/sleep', connection_security_policy: 'mutual_tls', response_flags: '-' });
  const p = connectionLabels({ reporter: 'source', source: { workload: 'a' }, destination: {}, mtls: false, responseFlags: RESPONSE_FLAGS.denied });
  t.like(p, { destination_workload: 'unknown', destination_principal: 'unknown', source_workload_namespace: 'unknown', connection_security_policy: 'none', response_flags: 'DENY' });
});

test('AgentMetrics exposes connection counters and collects the agent series at scrape time', async (t) => {
  const now = Date.parse('2026-01-01T00:00:00Z');
  let malformed = 2;
  const m = new AgentMetrics({
    enrolledCount: () => 3,
    enrollerCounters: () => ({ enrolments: 4, enrolmentFailures: 1, unenrolments: 0, ruleRepairs: 2, captureRefusals: 1 }),
    certSnapshot: () => [{ identity: 'spiffe://cluster.local/ns/app/sa/sleep', state: 'valid', failures: 0, notAfter: new Date(now + 3600_000) }],
    certCounters: () => ({ caRequests: 5, caFailures: 2, renewals: 0, identities: 1 }),
    malformedPolicies: () => malformed,
    now: () => now,
  });
  const l = connectionLabels({ reporter: 'destination', source: { workload: 's' }, destination: { workload: 'd' }, mtls: true });
  m.opened(l);
  m.closed(l, 10, 20);
  m.pluginRequest('ADD', 'enrolled');
  m.enrolled('iptables', 0.02);
  m.enrolled('iptables', 0.2);
  const text = await m.text();
  t.regex(text, /istio_tcp_connections_opened_total\{reporter="destination",source_workload="s",[^}]*\} 1/);
  t.regex(text, /istio_tcp_sent_bytes_total\{[^}]*\} 10/);
  t.regex(text, /istio_tcp_received_bytes_total\{[^}]*\} 20/);
  t.regex(text, /ambient_node_pods_enrolled 3/);
  t.regex(text, /ambient_node_enrolment_failures_total 1/);
  t.regex(text, /ambient_node_rule_repairs_total 2/);
  t.regex(text, /ambient_node_ca_request_failures_total 2/);
  t.regex(text, /ambient_node_certificate_expiry_seconds\{identity="spiffe:\/\/cluster.local\/ns\/app\/sa\/sleep"\} 3600/);
  t.regex(text, /ambient_node_plugin_requests_total\{command="ADD",result="enrolled"\} 1/);
  t.regex(text, /ambient_node_enrolment_duration_seconds_bucket\{le="0.025",backend="iptables"\} 1\n/);
  t.regex(text, /ambient_node_enrolment_duration_seconds_bucket\{le="0.25",backend="iptables"\} 2\n/);
  t.regex(text, /ambient_node_enrolment_duration_seconds_count\{backend="iptables"\} 2\n/);
  t.regex(text, /# TYPE ambient_node_malformed_policies gauge\nambient_node_malformed_policies 2\n/);
  // A second scrape does not double the collected counters.
  malformed = 0;
  const again = await m.text();
  t.regex(again, /ambient_node_rule_repairs_total 2\n/);
  t.regex(again, /ambient_node_malformed_policies 0\n/, 'the gauge follows the source: fixed policies count no more');
});
