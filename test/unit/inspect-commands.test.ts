// Unit tests for the pure parts of the inspection commands: the access log line, policy check argument parsing and
// evaluation, and the human renderings of `rules`, `conns` and `policy check`.
import test from 'ava';
import { accessLogLine, type ConnectionInfo, type ConnectionSnapshot } from '../../agent/src/forwarder/connections.js';
import { checkPolicy, parsePolicyCheckArgs, PolicyCheckArgError } from '../../agent/src/policy/check.js';
import { parseAuthorizationPolicy } from '../../agent/src/policy/authorization.js';
import { parsePeerAuthentication } from '../../agent/src/policy/peer-authentication.js';
import { renderConns, renderPolicyCheck, renderRules, rulesDrifted } from '../../agent/src/cli/render.js';
import type { RulesReply } from '../../agent/src/server/event-server.js';
import type { PodInfo } from '../../agent/src/workload/types.js';

const SLEEP = 'spiffe://cluster.local/ns/app/sa/sleep';
const PP = 'spiffe://cluster.local/ns/app/sa/productpage';
const hbone: ConnectionInfo = {
  id: 7, direction: 'inbound', pod: 'app/productpage', mtls: true, startedAt: 1_000, hboneAddr: '10.1.1.2:15008',
  src: { addr: '10.1.0.5:40000', workload: 'sleep', namespace: 'app', principal: SLEEP },
  dst: { addr: '10.1.1.2:9080', workload: 'productpage', namespace: 'app', principal: PP },
};

test('accessLogLine: ztunnel field names, identities only under mTLS, info for a clean close', (t) => {
  const l = accessLogLine(hbone, { bytesSent: 10, bytesRecv: 20, durationMs: 12.4, responseFlags: '-' });
  t.is(l.level, 'info');
  t.is(l.msg, 'connection complete');
  t.deepEqual(l.fields, {
    'src.addr': '10.1.0.5:40000', 'src.workload': 'sleep', 'src.namespace': 'app', 'src.identity': SLEEP,
    'dst.addr': '10.1.1.2:9080', 'dst.hbone_addr': '10.1.1.2:15008', 'dst.workload': 'productpage', 'dst.namespace': 'app', 'dst.identity': PP,
    direction: 'inbound', pod: 'app/productpage', connection_security_policy: 'mutual_tls',
    bytes_sent: 10, bytes_recv: 20, duration: '12ms', response_flags: '-',
  });
  const { hboneAddr: _tunnel, ...direct } = hbone;
  const plain = accessLogLine({ ...direct, mtls: false }, { bytesSent: 0, bytesRecv: 0, durationMs: 0, responseFlags: '-' });
  t.false('src.identity' in plain.fields || 'dst.identity' in plain.fields, 'no identity without mTLS');
  t.is(plain.fields.connection_security_policy, 'none');
  t.false('dst.hbone_addr' in plain.fields);
});

test('accessLogLine: refusals are "connection failed", errors on a relayed connection are "connection complete" at error', (t) => {
  const refused = accessLogLine(hbone, { bytesSent: 0, bytesRecv: 0, durationMs: 1, responseFlags: 'DENY', error: 'denied by DENY policy app/x' }, true);
  t.like(refused, { level: 'error', msg: 'connection failed', fields: { response_flags: 'DENY', error: 'denied by DENY policy app/x' } });
  const broken = accessLogLine(hbone, { bytesSent: 5, bytesRecv: 0, durationMs: 3, responseFlags: 'CONNECT', error: 'upstream connect failed' });
  t.like(broken, { level: 'error', msg: 'connection complete', fields: { response_flags: 'CONNECT' } });
});

test('parsePolicyCheckArgs accepts ns/sa and ns/pod:port and names the bad argument', (t) => {
  t.deepEqual(parsePolicyCheckArgs('app/sleep', 'app/productpage:9080'), { from: { namespace: 'app', serviceAccount: 'sleep' }, to: { namespace: 'app', pod: 'productpage', port: 9080 } });
  t.deepEqual(parsePolicyCheckArgs('app/sleep', 'app/pp:1', '10.0.0.1').from, { namespace: 'app', serviceAccount: 'sleep', ip: '10.0.0.1' });
  for (const [from, to, ip, re] of [
    ['sleep', 'app/pp:80', undefined, /--from must be/],
    ['app/sleep/x', 'app/pp:80', undefined, /--from must be/],
    ['App/sleep', 'app/pp:80', undefined, /--from must be/],
    ['app/sleep', 'app/pp', undefined, /--to must be/],
    ['app/sleep', 'pp:80', undefined, /--to must be/],
    ['app/sleep', 'app/pp:0', undefined, /port must be 1-65535/],
    ['app/sleep', 'app/pp:70000', undefined, /port must be 1-65535/],
    ['app/sleep', 'app/pp:80', 'not-an-ip', /--from-ip/],
  ] as const) {
    const err = t.throws(() => parsePolicyCheckArgs(from, to, ip), { instanceOf: PolicyCheckArgError }, `${from} ${to}`);
    t.regex(err?.message ?? '', re);
  }
});

const pod: PodInfo = {
  namespace: 'app', name: 'productpage', uid: 'u1', labels: { app: 'productpage' }, annotations: {}, nodeName: 'n1',
  serviceAccount: 'productpage', hostNetwork: false, podIPs: ['10.1.1.2'],
};
const policy = (name: string, spec: Record<string, unknown>, annotations: Record<string, string> = {}) => parseAuthorizationPolicy({
  apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name, namespace: 'app', annotations }, spec,
});
const allowSleep = policy('allow-sleep', { selector: { matchLabels: { app: 'productpage' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/app/sa/sleep'] } }] }] });
const strict = parsePeerAuthentication({ apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'app' }, spec: { mtls: { mode: 'STRICT' } } });

test('checkPolicy: the decision and deciding policy for the identity of ns/sa, the applicable set and the mTLS mode', (t) => {
  const policies = { authorization: [allowSleep], peerAuthentication: [strict] };
  const ok = checkPolicy(parsePolicyCheckArgs('app/sleep', 'app/productpage:9080'), pod, policies, 'cluster.local');
  t.like(ok, { allowed: true, policy: 'app/allow-sleep', from: { principal: SLEEP }, to: { pod: 'app/productpage', ip: '10.1.1.2', port: 9080 }, mtlsMode: 'STRICT' });
  t.deepEqual(ok.applicable, ['app/allow-sleep (ALLOW)']);
  const no = checkPolicy(parsePolicyCheckArgs('app/notsleep', 'app/productpage:9080'), pod, policies, 'cluster.local');
  t.false(no.allowed);
  t.is(no.policy, undefined);
  t.regex(no.reason, /no rule of the applicable ALLOW policies matched/);
  const other = checkPolicy(parsePolicyCheckArgs('app/notsleep', 'app/productpage:9080'), { ...pod, labels: { app: 'reviews' } }, { authorization: [allowSleep], peerAuthentication: [] }, 'cluster.local');
  t.like(other, { allowed: true, applicable: [], mtlsMode: 'PERMISSIVE' });
  const dry = policy('dry-deny', { action: 'DENY', rules: [{}] }, { 'istio.io/dry-run': 'true' });
  const withDry = checkPolicy(parsePolicyCheckArgs('app/sleep', 'app/productpage:9080'), pod, { authorization: [allowSleep, dry], peerAuthentication: [] }, 'cluster.local');
  t.like(withDry, { allowed: true, dryRunAllowed: false });
  t.deepEqual(withDry.applicable, ['app/allow-sleep (ALLOW)', 'app/dry-deny (DENY, dry-run)']);
  t.regex(renderPolicyCheck(withDry), /dry-run: {4}app\/dry-deny \(DENY\) matches\n {2}with dry-run policies enforced: DENY/);
  t.regex(renderPolicyCheck(no), /^DENY {2}spiffe:\/\/cluster.local\/ns\/app\/sa\/notsleep -> app\/productpage 10.1.1.2:9080\n {2}reason: .*\n {2}decided by: \(default\)/);
  t.regex(renderPolicyCheck(no), /PeerAuthentication STRICT on port 9080: non-mesh clients refused/);
});

const attachment = {
  pod: 'app/sleep', containerId: 'c0ffee0123456789', ifname: 'eth0', netns: '/run/netns/x', state: 'enrolled' as const, backend: 'iptables',
  expected: ['-A A -j B', '-A B -j C'], actual: ['-A A -j B', '-A B -j C'], missing: [], unexpected: [], listening: true, ok: true,
};

test('renderRules marks expected rules ok or MISSING, lists EXTRA ones, and says in sync or DRIFT', (t) => {
  const synced: RulesReply = { pod: 'app/sleep', attachments: [attachment], node: { ok: true, missing: [], unexpected: [], actual: [] } };
  t.false(rulesDrifted(synced));
  t.is(renderRules(synced), [
    'pod app/sleep (container c0ffee012345, eth0, netns /run/netns/x)',
    '  state enrolled, backend iptables, agent listeners open',
    '  expected (2):',
    '    ok      -A A -j B',
    '    ok      -A B -j C',
    '  in sync',
    'node probe rules: in sync',
  ].join('\n'));
  const drift: RulesReply = {
    pod: 'app/sleep',
    attachments: [{ ...attachment, actual: ['-A A -j B', '-A X'], missing: ['-A B -j C'], unexpected: ['-A X'], listening: false, ok: false }],
    node: { ok: false, missing: ['ipset p'], unexpected: [], actual: [] },
  };
  t.true(rulesDrifted(drift));
  const text = renderRules(drift);
  t.regex(text, /agent listeners NOT OPEN/);
  t.regex(text, / {4}MISSING -A B -j C/);
  t.regex(text, / {2}unexpected \(1\):\n {4}EXTRA {3}-A X/);
  t.regex(text, / {2}DRIFT: 1 missing, 1 unexpected, listeners not open/);
  t.regex(text, /node probe rules: DRIFT \(missing: ipset p; unexpected: -\)/);
  t.true(rulesDrifted({ ...synced, node: { error: 'boom' } }));
});

test('renderConns: one row per connection, identities only under mTLS, sizes and ages readable', (t) => {
  const snap: ConnectionSnapshot = { ...hbone, bytesSent: 2048, bytesRecv: 5, durationMs: 61_000 };
  const plain: ConnectionSnapshot = { ...hbone, id: 8, pod: 'app/a', direction: 'outbound', mtls: false, bytesSent: 0, bytesRecv: 0, durationMs: 5 };
  const lines = renderConns([snap, plain]).split('\n');
  t.regex(lines[0] ?? '', /^POD\s+DIRECTION\s+SRC\s+SRC-IDENTITY\s+DST\s+DST-IDENTITY\s+SECURITY\s+SENT\s+RECEIVED\s+AGE$/);
  t.regex(lines[1] ?? '', /^app\/a\s+outbound\s+10\.1\.0\.5:40000\s+-\s+10\.1\.1\.2:9080\s+-\s+plain\s+0 B\s+0 B\s+5ms$/);
  t.regex(lines[2] ?? '', /^app\/productpage\s+inbound\s+\S+\s+cluster\.local\/ns\/app\/sa\/sleep\s+\S+\s+cluster\.local\/ns\/app\/sa\/productpage\s+mTLS\s+2\.0 KiB\s+5 B\s+1m1s$/);
});
