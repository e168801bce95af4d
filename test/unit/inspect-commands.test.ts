// Unit tests for the pure parts of the inspection commands: the access log line, policy check argument parsing and
// evaluation (pods and Services), and the human renderings of `rules`, `conns`, `services` and `policy check`.
import test from 'ava';
import { accessLogLine, type ConnectionInfo, type ConnectionSnapshot } from '../../agent/src/forwarder/connections.js';
import { checkPolicy, checkServicePolicy, parsePolicyCheckArgs, PolicyCheckArgError } from '../../agent/src/policy/check.js';
import { allEntries, buildServiceTable } from '../../agent/src/workload/service-table.js';
import { parseEndpointSlice, parseService } from '../../agent/src/workload/service-objects.js';
import { serviceViews } from '../../agent/src/workload/directory.js';
import { malformedAuthorizationPolicy, parseAuthorizationPolicy } from '../../agent/src/policy/authorization.js';
import { malformedPeerAuthentication, parsePeerAuthentication } from '../../agent/src/policy/peer-authentication.js';
import { renderMalformedPolicies, statusHasProblem } from '../../agent/src/policy/malformed.js';
import { renderConns, renderPolicyCheck, renderRules, renderServicePolicyCheck, renderServices, rulesDrifted } from '../../agent/src/cli/render.js';
import type { RulesReply } from '../../agent/src/server/event-server.js';
import type { PodInfo } from '../../agent/src/workload/types.js';

const SLEEP = 'spiffe://cluster.local/ns/app/sa/sleep';
const PP = 'spiffe://cluster.local/ns/app/sa/productpage';
const hbone: ConnectionInfo = {
  id: 7, direction: 'inbound', pod: 'app/productpage', mtls: true, startedAt: 1_000, tunnelAddr: '10.1.1.2:15008',
  src: { addr: '10.1.0.5:40000', workload: 'sleep', namespace: 'app', principal: SLEEP },
  dst: { addr: '10.1.1.2:9080', workload: 'productpage', namespace: 'app', principal: PP },
};

test('accessLogLine: ztunnel field names (dst.addr the tunnel, dst.hbone_addr inside it), identities only under mTLS', (t) => {
  const l = accessLogLine(hbone, { bytesSent: 10, bytesRecv: 20, durationMs: 12.4, responseFlags: '-' });
  t.is(l.level, 'info');
  t.is(l.msg, 'connection complete');
  t.deepEqual(l.fields, {
    'src.addr': '10.1.0.5:40000', 'src.workload': 'sleep', 'src.namespace': 'app', 'src.identity': SLEEP,
    'dst.addr': '10.1.1.2:15008', 'dst.hbone_addr': '10.1.1.2:9080', 'dst.workload': 'productpage', 'dst.namespace': 'app', 'dst.identity': PP,
    direction: 'inbound', pod: 'app/productpage', connection_security_policy: 'mutual_tls',
    bytes_sent: 10, bytes_recv: 20, duration: '12ms', response_flags: '-',
  });
  const { tunnelAddr: _tunnel, ...direct } = hbone;
  const plain = accessLogLine({ ...direct, mtls: false }, { bytesSent: 0, bytesRecv: 0, durationMs: 0, responseFlags: '-' });
  t.false('src.identity' in plain.fields || 'dst.identity' in plain.fields, 'no identity without mTLS');
  t.is(plain.fields.connection_security_policy, 'none');
  t.false('dst.hbone_addr' in plain.fields);
  t.is(plain.fields['dst.addr'], '10.1.1.2:9080');
  t.false('dst.service' in plain.fields);
  const viaService = accessLogLine({ ...hbone, service: { namespace: 'app', name: 'productpage', hostname: 'productpage.app.svc.cluster.local' } }, { bytesSent: 1, bytesRecv: 1, durationMs: 1, responseFlags: '-' });
  t.is(viaService.fields['dst.service'], 'productpage.app.svc.cluster.local');
});

test('accessLogLine: refusals are "connection failed", errors on a relayed connection are "connection complete" at error', (t) => {
  const refused = accessLogLine(hbone, { bytesSent: 0, bytesRecv: 0, durationMs: 1, responseFlags: 'DENY', error: 'denied by DENY policy app/x' }, true);
  t.like(refused, { level: 'error', msg: 'connection failed', fields: { response_flags: 'DENY', error: 'denied by DENY policy app/x' } });
  const broken = accessLogLine(hbone, { bytesSent: 5, bytesRecv: 0, durationMs: 3, responseFlags: 'CONNECT', error: 'upstream connect failed' });
  t.like(broken, { level: 'error', msg: 'connection complete', fields: { response_flags: 'CONNECT' } });
});

test('parsePolicyCheckArgs accepts ns/sa and ns/name:port (or ns/pod/name:port, ns/service/name:port) and names the bad argument', (t) => {
  t.deepEqual(parsePolicyCheckArgs('app/sleep', 'app/productpage:9080'), { from: { namespace: 'app', serviceAccount: 'sleep' }, to: { namespace: 'app', name: 'productpage', port: 9080 } });
  t.deepEqual(parsePolicyCheckArgs('app/sleep', 'app/pod/productpage:9080').to, { namespace: 'app', name: 'productpage', port: 9080, kind: 'pod' });
  t.deepEqual(parsePolicyCheckArgs('app/sleep', 'app/svc/productpage:9080').to, { namespace: 'app', name: 'productpage', port: 9080, kind: 'service' });
  t.deepEqual(parsePolicyCheckArgs('app/sleep', 'app/service/productpage:9080').to.kind, 'service');
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
    ['app/sleep', 'app/deployment/pp:80', undefined, /--to must be/],
    ['app/sleep', 'app/a/b/pp:80', undefined, /--to must be/],
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

test('checkPolicy and its rendering: a malformed policy is applicable as MALFORMED and denies; a malformed PeerAuthentication makes plaintext refused', (t) => {
  const broken = malformedAuthorizationPolicy({ metadata: { name: 'viewer', namespace: 'app' }, spec: { selector: { matchLabels: { app: 'productpage' } } } },
    'AuthorizationPolicy app/viewer: spec.rules[0].from[0].source.principal is not a known field (expected one of principals, ...)');
  const badPa = malformedPeerAuthentication({ metadata: { name: 'pa', namespace: 'app' } }, 'PeerAuthentication app/pa: spec.mtls must be a mapping');
  const r = checkPolicy(parsePolicyCheckArgs('app/sleep', 'app/productpage:9080'), pod, { authorization: [allowSleep, broken], peerAuthentication: [badPa] }, 'cluster.local');
  t.like(r, { allowed: false, policy: 'app/viewer', mtlsMode: 'STRICT' });
  t.deepEqual(r.applicable, ['app/allow-sleep (ALLOW)', 'app/viewer (MALFORMED: spec.rules[0].from[0].source.principal is not a known field (expected one of principals, ...))']);
  t.deepEqual(r.mtlsMalformed, ['app/pa (MALFORMED: spec.mtls must be a mapping)']);
  const text = renderPolicyCheck(r);
  t.regex(text, /^DENY {2}spiffe:\/\/cluster.local\/ns\/app\/sa\/sleep -> app\/productpage/);
  t.regex(text, /reason: {5}denied: policy app\/viewer is malformed \(spec\.rules\[0\]\.from\[0\]\.source\.principal is not a known field .*\); fix it/);
  t.regex(text, /applicable: app\/allow-sleep \(ALLOW\), app\/viewer \(MALFORMED: spec\.rules/);
  t.regex(text, /malformed: {2}PeerAuthentication app\/pa \(MALFORMED: spec\.mtls must be a mapping\): plaintext refused/);
  t.is(checkPolicy(parsePolicyCheckArgs('app/sleep', 'app/productpage:9080'), pod, { authorization: [allowSleep], peerAuthentication: [] }, 'cluster.local').mtlsMalformed, undefined);
});

test('status rendering: malformed policies counted and named, exit 1 while any; older agents (no field) print nothing', (t) => {
  const st = { ready: true, node: 'n', backend: 'iptables', enrolled: 1, malformedPolicies: 2, malformed: [
    { kind: 'AuthorizationPolicy', policy: 'app/viewer', error: 'spec.rules[0].from[0].source.principal is not a known field' },
    { kind: 'PeerAuthentication', policy: 'app/pa', error: 'spec.mtls must be a mapping' },
  ] };
  t.deepEqual(renderMalformedPolicies(st), [
    'malformed policies: 2',
    '  MALFORMED AuthorizationPolicy app/viewer: spec.rules[0].from[0].source.principal is not a known field (denies everything in its scope until fixed or deleted)',
    '  MALFORMED PeerAuthentication app/pa: spec.mtls must be a mapping (refuses plaintext in its scope until fixed or deleted)',
  ]);
  t.true(statusHasProblem(st));
  t.deepEqual(renderMalformedPolicies({ malformedPolicies: 0, malformed: [] }), ['malformed policies: 0']);
  t.false(statusHasProblem({ ready: true, malformedPolicies: 0 }));
  t.false(statusHasProblem({ ready: true }));
  t.deepEqual(renderMalformedPolicies({}), []);
  t.true(statusHasProblem({ ready: false }));
});

const attachment = {
  pod: 'app/sleep', containerId: 'c0ffee0123456789', ifname: 'eth0', netns: '/run/netns/x', state: 'enrolled' as const, backend: 'iptables',
  expected: ['-A A -j B', '-A B -j C'], actual: ['-A A -j B', '-A B -j C'], missing: [], unexpected: [], ip6tables: [], listening: true, ok: true,
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
    '  ip6tables (IPv6): none of our rules',
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
  // IPv6: the pod's ip6tables is always reported: the iptables backend's own IPv6 rules, or another backend's leftovers.
  const v6 = ['ip6tables: -A AMBIENT_OUTPUT -p tcp -j REDIRECT --to-ports 15001'];
  t.regex(renderRules({ ...synced, attachments: [{ ...attachment, ip6tables: v6 }] }), /ip6tables \(IPv6\): 1 of our rules \(listed above; they send IPv6 TCP to the agent: carried with --capture-ipv6, else refused\)/);
  t.regex(renderRules({ ...synced, attachments: [{ ...attachment, backend: 'nftables', ip6tables: v6 }] }), /ip6tables \(IPv6\): 1 of our rules, not this backend's .*\n {4}FOUND {3}ip6tables: -A AMBIENT_OUTPUT/);
});

test('renderConns: one row per connection, identities only under mTLS, sizes and ages readable', (t) => {
  const snap: ConnectionSnapshot = { ...hbone, bytesSent: 2048, bytesRecv: 5, durationMs: 61_000 };
  const plain: ConnectionSnapshot = { ...hbone, id: 8, pod: 'app/a', direction: 'outbound', mtls: false, bytesSent: 0, bytesRecv: 0, durationMs: 5 };
  const lines = renderConns([snap, plain]).split('\n');
  t.regex(lines[0] ?? '', /^POD\s+DIRECTION\s+SRC\s+SRC-IDENTITY\s+DST\s+DST-IDENTITY\s+SERVICE\s+SECURITY\s+SENT\s+RECEIVED\s+AGE$/);
  t.regex(lines[1] ?? '', /^app\/a\s+outbound\s+10\.1\.0\.5:40000\s+-\s+10\.1\.1\.2:9080\s+-\s+-\s+plain\s+0 B\s+0 B\s+5ms$/);
  t.regex(lines[2] ?? '', /^app\/productpage\s+inbound\s+\S+\s+cluster\.local\/ns\/app\/sa\/sleep\s+\S+\s+cluster\.local\/ns\/app\/sa\/productpage\s+-\s+mTLS\s+2\.0 KiB\s+5 B\s+1m1s$/);
  const svc = renderConns([{ ...plain, service: { namespace: 'app', name: 'productpage', hostname: 'productpage.app.svc.cluster.local' } }]).split('\n');
  t.regex(svc[1] ?? '', /\s+app\/productpage\s+plain\s+/);
});

const VIP = '10.96.0.20';
const ppService = parseService({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'productpage', namespace: 'app' }, spec: { clusterIP: VIP, ports: [{ name: 'http', port: 9080, targetPort: 'http-web' }] } });
const ppSlice = parseEndpointSlice({
  apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv4',
  metadata: { name: 'productpage-x', namespace: 'app', labels: { 'kubernetes.io/service-name': 'productpage' } },
  endpoints: [
    { addresses: ['10.1.1.2'], nodeName: 'n1', targetRef: { kind: 'Pod', namespace: 'app', name: 'productpage' } },
    { addresses: ['10.1.2.9'], conditions: { ready: false }, nodeName: 'n2' },
    { addresses: ['10.1.3.3'], nodeName: 'n3' },
  ],
  ports: [{ name: 'http', port: 9081 }],
});

test('checkServicePolicy: each endpoint behind the Service port is judged at its target port; plain endpoints enforce nothing', (t) => {
  const table = buildServiceTable([ppService], [ppSlice], { nodeName: 'n0' });
  const entries = allEntries(table);
  const resolve = (ep: { ip: string }) => (ep.ip === '10.1.1.2' ? { pod, mesh: true } : { mesh: ep.ip === '10.1.2.9' });
  const policies = { authorization: [allowSleep], peerAuthentication: [] };
  const ok = checkServicePolicy(parsePolicyCheckArgs('app/sleep', 'app/productpage:9080'), entries, resolve, policies, 'cluster.local');
  t.like(ok, { allowed: true, service: { namespace: 'app', name: 'productpage', hostname: 'productpage.app.svc.cluster.local', port: 9080, vips: [VIP] } });
  t.deepEqual(ok.endpoints.map((e) => [e.endpoint, e.mesh, e.candidate, e.result?.allowed ?? e.note?.slice(0, 10)]), [
    ['10.1.1.2:9081', true, true, true], ['10.1.2.9:9081', true, false, 'a mesh wor'], ['10.1.3.3:9081', false, true, 'not in the'],
  ]);
  t.is(ok.endpoints[0]?.result?.to.port, 9081, 'the target port, not the Service port');
  const no = checkServicePolicy(parsePolicyCheckArgs('app/notsleep', 'app/productpage:9080'), entries, resolve, policies, 'cluster.local');
  t.false(no.allowed);
  t.regex(no.reason, /denied by 1 of 2 endpoint/);
  const text = renderServicePolicyCheck(no);
  t.regex(text, /^DENY {2}spiffe:\/\/cluster.local\/ns\/app\/sa\/notsleep -> Service app\/productpage:9080 \(10\.96\.0\.20\)/);
  t.regex(text, /endpoint 10\.1\.1\.2:9081 \(app\/productpage\), ready: DENY/);
  t.regex(text, /endpoint 10\.1\.3\.3:9081, ready: not in the mesh/);
  const none = checkServicePolicy(parsePolicyCheckArgs('app/sleep', 'app/productpage:9080'), allEntries(buildServiceTable([ppService], [], { nodeName: 'n0' })), resolve, policies, 'cluster.local');
  t.false(none.allowed, 'no endpoint: the connection is refused');
});

test('renderServices: one row per endpoint, mesh or plain, readiness, picked, node; a port with none says so', (t) => {
  const views = serviceViews(allEntries(buildServiceTable([ppService], [ppSlice], { nodeName: 'n0' })), (ip) => (ip === '10.1.1.2' ? { ip, namespace: 'app', name: 'productpage', serviceAccount: 'productpage', identity: PP, node: 'n1' } : undefined));
  const lines = renderServices(views).split('\n');
  t.regex(lines[0] ?? '', /^SERVICE\s+VIP:PORT\s+PORT-NAME\s+TARGET\s+ENDPOINT\s+MESH\s+READY\s+PICKED\s+NODE$/);
  t.regex(lines[1] ?? '', /^app\/productpage\s+10\.96\.0\.20:9080\s+http\s+http-web\s+10\.1\.1\.2:9081\s+HBONE\s+yes\s+yes\s+n1$/);
  t.regex(lines[2] ?? '', /10\.1\.2\.9:9081\s+plain\s+no\s+no\s+n2$/);
  const empty = renderServices(serviceViews(allEntries(buildServiceTable([ppService], [], { nodeName: 'n0' })), () => undefined)).split('\n');
  t.regex(empty[1] ?? '', /<none>/);
});
