// Tests of the testbed's Services: kube-proxy rule rendering and chain names (pure), then on real namespaces the
// EndpointSlice controller, ClusterIP DNAT to endpoints on both nodes, readiness, REJECT, cluster DNS and teardown.
import test from 'ava';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseAllDocuments } from 'yaml';
import { parseEndpointSlice, parseService, type EndpointSliceInfo, type ServiceInfo } from '../../agent/src/workload/service-objects.js';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { podResolvConf, renderDnsHosts } from '../testbed/cluster-dns.js';
import { base32, endpointChainName, probability, renderedServiceChains, renderKubeProxyRules, serviceChainName } from '../testbed/kube-proxy.js';
import {
  endpointSliceFileName,
  endpointSlicesFor,
  type EndpointPod,
  resolveServicePorts,
  serviceObject,
  type ServiceSpec,
  type TestbedService,
} from '../testbed/services.js';
import { listNetns, Testbed, type TestbedPod } from '../testbed/index.js';

// ---------------------------------------------------------------------------------------------
// Pure: names, probabilities, rule shapes, EndpointSlices, DNS records

/** A TestbedService as the testbed builds it (without allocating anything). */
function svcOf(spec: ServiceSpec, clusterIP = '10.96.0.20'): TestbedService {
  const namespace = spec.namespace ?? 'default';
  const ports = resolveServicePorts(spec.name, spec.ports, clusterIP === 'None');
  return { namespace, name: spec.name, uid: 'u', clusterIP, hostname: `${spec.name}.${namespace}.svc.cluster.local`, ports, spec: { ...spec, namespace } };
}

function podOf(name: string, ip: string, extra: Partial<EndpointPod> = {}): EndpointPod {
  return { namespace: 'ns1', name, uid: `uid-${name}`, labels: { app: 'web' }, nodeName: 'n0', ip, ready: true, ports: [], ...extra };
}

/** What the agent's parser makes of the objects the testbed writes (the same path a sync takes). */
function parsed(svcs: TestbedService[], pods: EndpointPod[]): { services: ServiceInfo[]; slices: EndpointSliceInfo[] } {
  const roundTrip = <T>(o: object): T => JSON.parse(JSON.stringify(o)) as T;
  return {
    services: svcs.map((s) => parseService(roundTrip(serviceObject(s)))),
    slices: svcs.flatMap((s) => endpointSlicesFor(s, pods).map((e) => parseEndpointSlice(roundTrip(e)))),
  };
}

test('chain names match kube-proxy\'s verified values; base32 is RFC 4648', (t) => {
  t.is(serviceChainName('ns1/svc1:p80', 'tcp'), 'KUBE-SVC-XPGD46QRK7WJZT7O');
  t.is(serviceChainName('ns1/svc1:p80', 'TCP'), 'KUBE-SVC-XPGD46QRK7WJZT7O', 'protocol is lowercased');
  t.is(endpointChainName('ns1/svc1:p80', 'tcp', '10.180.0.1:80'), 'KUBE-SEP-SXIVWICOYRO3J4NJ');
  t.is(base32(Buffer.from('foobar')), 'MZXW6YTBOI'); // RFC 4648 test vector (unpadded)
});

test('three endpoints: probabilities 1/3, 1/2, then unconditional; SEP chains masquerade hairpins and DNAT', (t) => {
  const svc = svcOf({ namespace: 'ns1', name: 'svc1', selector: { app: 'web' }, ports: [{ name: 'p80', port: 80, targetPort: 8080 }] });
  const pods = [podOf('c', '10.244.1.3'), podOf('a', '10.244.0.10'), podOf('b', '10.244.0.9')];
  const { services, slices } = parsed([svc], pods);
  const text = renderKubeProxyRules(services, slices, { nodeName: 'n0' });
  const chain = serviceChainName('ns1/svc1:p80', 'tcp');
  const lines = text.split('\n').filter((l) => l.startsWith(`-A ${chain} `));
  t.deepEqual(lines, [
    `-A ${chain} -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 10.96.0.20 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ`,
    `-A ${chain} -m comment --comment "ns1/svc1:p80 -> 10.244.0.9:8080" -m statistic --mode random --probability 0.3333333333 -j ${endpointChainName('ns1/svc1:p80', 'tcp', '10.244.0.9:8080')}`,
    `-A ${chain} -m comment --comment "ns1/svc1:p80 -> 10.244.0.10:8080" -m statistic --mode random --probability 0.5000000000 -j ${endpointChainName('ns1/svc1:p80', 'tcp', '10.244.0.10:8080')}`,
    `-A ${chain} -m comment --comment "ns1/svc1:p80 -> 10.244.1.3:8080" -j ${endpointChainName('ns1/svc1:p80', 'tcp', '10.244.1.3:8080')}`,
  ]);
  const sep = endpointChainName('ns1/svc1:p80', 'tcp', '10.244.1.3:8080');
  t.deepEqual(text.split('\n').filter((l) => l.startsWith(`-A ${sep} `)), [
    `-A ${sep} -m comment --comment ns1/svc1:p80 -s 10.244.1.3 -j KUBE-MARK-MASQ`,
    `-A ${sep} -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.3:8080`,
  ]);
  t.true(text.includes(`-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 10.96.0.20 --dport 80 -j ${chain}`));
  t.true(text.includes('-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000'));
  t.true(text.includes('-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN'));
  t.is(probability(0, 3), '0.3333333333');
  t.is(probability(1, 3), '0.5000000000');
  t.false(/\*filter\n:KUBE-SERVICES - \[0:0\]\n-A/.test(text), 'no REJECT when there are endpoints');
});

test('no usable endpoint: a filter REJECT and no nat rules; terminating-serving endpoints are the fallback; stale chains go', (t) => {
  const svc = svcOf({ namespace: 'ns1', name: 'svc1', selector: { app: 'web' }, ports: [{ port: 80, targetPort: 8080 }] });
  const before = parsed([svc], [podOf('a', '10.244.0.5')]);
  const first = renderKubeProxyRules(before.services, before.slices);
  const chains = renderedServiceChains(first);
  t.is(chains.length, 2, 'one SVC and one SEP chain');

  const after = parsed([svc], [podOf('a', '10.244.0.5', { ready: false })]);
  const text = renderKubeProxyRules(after.services, after.slices, { existingChains: chains });
  t.true(text.includes('-A KUBE-SERVICES -m comment --comment "ns1/svc1 has no endpoints" -m tcp -p tcp -d 10.96.0.20 --dport 80 -j REJECT'));
  t.false(/-A KUBE-S(VC|EP)-/.test(text), 'no nat rules for it');
  for (const c of chains) {
    t.true(text.includes(`:${c} - [0:0]`), `${c} declared (so flushed)`);
    t.true(text.includes(`-X ${c}`), `${c} deleted`);
  }
  t.deepEqual(renderedServiceChains(text), []);

  // A slice an operator wrote: not ready but serving and terminating (KEP-1669) still gets traffic.
  const slice: EndpointSliceInfo = {
    namespace: 'ns1', name: 'svc1-x', serviceName: 'svc1', addressType: 'IPv4', ports: [{ name: '', port: 8080, protocol: 'TCP' }],
    endpoints: [{ addresses: ['10.244.0.7'], ready: false, serving: true, terminating: true }],
  };
  t.true(renderKubeProxyRules(after.services, [slice]).includes('-j DNAT --to-destination 10.244.0.7:8080'));
});

test('EndpointSlices: named targetPort resolved per pod, pods without it in their own slice, readiness and publishNotReadyAddresses', (t) => {
  const svc = svcOf({ namespace: 'ns1', name: 'web', selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 'web-http' }, { name: 'raw', port: 82, targetPort: 7070 }] });
  const pods = [
    podOf('a', '10.244.0.5', { ports: [{ name: 'web-http', containerPort: 8080 }] }),
    podOf('b', '10.244.1.5', { ports: [{ name: 'web-http', containerPort: 8081 }], ready: false, nodeName: 'n1' }),
    podOf('c', '10.244.1.6'),
    podOf('other', '10.244.1.7', { labels: { app: 'db' } }),
    podOf('elsewhere', '10.244.1.8', { namespace: 'ns2' }),
  ];
  const slices = endpointSlicesFor(svc, pods);
  t.is(slices.length, 3, 'three distinct port mappings');
  const byIp = (ip: string) => slices.find((s) => s.endpoints.some((e) => e.addresses[0] === ip));
  t.deepEqual(byIp('10.244.0.5')?.ports, [{ name: 'http', protocol: 'TCP', port: 8080 }, { name: 'raw', protocol: 'TCP', port: 7070 }]);
  t.deepEqual(byIp('10.244.1.5')?.ports, [{ name: 'http', protocol: 'TCP', port: 8081 }, { name: 'raw', protocol: 'TCP', port: 7070 }]);
  t.deepEqual(byIp('10.244.1.6')?.ports, [{ name: 'raw', protocol: 'TCP', port: 7070 }], 'no web-http container port: left out of http');
  t.deepEqual(byIp('10.244.1.5')?.endpoints, [
    { addresses: ['10.244.1.5'], conditions: { ready: false, serving: false, terminating: false }, nodeName: 'n1', targetRef: { kind: 'Pod', namespace: 'ns1', name: 'b', uid: 'uid-b' } },
  ]);
  t.like(byIp('10.244.0.5')?.metadata, { namespace: 'ns1', labels: { 'kubernetes.io/service-name': 'web' } });
  t.is(byIp('10.244.1.7'), undefined);
  t.is(byIp('10.244.1.8'), undefined);

  const unnamed = svcOf({ namespace: 'ns1', name: 'u', selector: { app: 'web' }, ports: [{ port: 80 }] });
  t.deepEqual(endpointSlicesFor(unnamed, [podOf('a', '10.244.0.5')])[0]?.ports, [{ protocol: 'TCP', port: 80 }], 'no name key for an unnamed port');
  t.deepEqual(endpointSlicesFor(unnamed, [])[0]?.endpoints, [], 'no pods: one empty slice');
  const pnra = svcOf({ namespace: 'ns1', name: 'p', selector: { app: 'web' }, ports: [{ port: 80 }], publishNotReadyAddresses: true });
  t.deepEqual(endpointSlicesFor(pnra, [podOf('a', '10.244.0.5', { ready: false })])[0]?.endpoints[0]?.conditions, { ready: true, serving: false, terminating: false });
  const manual = svcOf({ namespace: 'ns1', name: 'm', ports: [{ name: 'pg', port: 5432 }], endpoints: [{ ip: '10.1.2.3' }] });
  t.deepEqual(endpointSlicesFor(manual, []).map((s) => [s.endpoints[0]?.addresses, s.ports]), [[['10.1.2.3'], [{ name: 'pg', protocol: 'TCP', port: 5432 }]]]);
  t.deepEqual(endpointSlicesFor(svcOf({ namespace: 'ns1', name: 'x', ports: [{ port: 1 }] }), []), [], 'selector-less without endpoints: none');
});

test('DNS records: ClusterIP, headless ready endpoints only, nothing for ExternalName; resolv.conf', (t) => {
  const web = svcOf({ namespace: 'ns1', name: 'web', selector: { app: 'web' }, ports: [{ port: 80 }] });
  const hl = svcOf({ namespace: 'ns1', name: 'hl', selector: { app: 'web' }, ports: [{ port: 80 }], clusterIP: 'None' }, 'None');
  const ext = svcOf({ namespace: 'ns1', name: 'ext', type: 'ExternalName', ports: [{ port: 80 }] }, '');
  const { services, slices } = parsed([web, hl, ext], [podOf('a', '10.244.0.5'), podOf('b', '10.244.0.6', { ready: false })]);
  t.is(services[2]?.type, 'ExternalName');
  t.is(renderDnsHosts(services, slices), '10.244.0.5 hl.ns1.svc.cluster.local\n10.96.0.20 web.ns1.svc.cluster.local\n');
  t.is(podResolvConf('app', '10.244.1.1'), 'nameserver 10.244.1.1\nsearch app.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n');
});

// ---------------------------------------------------------------------------------------------
// On the simulated cluster (root)

const HTTP_SERVER = `
import http.server, sys
name = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (name + "\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
`;

/** An HTTP server in the pod that answers every GET with its own name. */
async function startNamedHttp(pod: TestbedPod, port: number): Promise<void> {
  void pod.spawn('/usr/bin/python3', ['-c', HTTP_SERVER, String(port), pod.name]).catch(() => undefined);
  await pod.waitForPort(port);
}

/** `n` curls to `url` from `client`, one after another: the answers (or `ERR<curl exit code>`), counted. */
async function curlMany(client: TestbedPod, url: string, n: number): Promise<Record<string, number>> {
  const script = `for i in $(seq 1 ${n}); do curl -sS -m 2 "$1" 2>/dev/null || echo "ERR$?"; done`;
  const r = await client.exec('sh', ['-c', script, 'sh', url]);
  const counts: Record<string, number> = {};
  for (const line of String(r.stdout).split('\n').filter((l) => l !== '')) counts[line] = (counts[line] ?? 0) + 1;
  return counts;
}

async function natSave(tb: Testbed, node: number, table: 'nat' | 'filter' = 'nat'): Promise<string> {
  return String((await tb.nodeExec(node, 'iptables-save', ['-t', table])).stdout);
}

async function readDocs(tb: Testbed, file: string): Promise<Record<string, unknown>[]> {
  return parseAllDocuments(await readFile(join(tb.workloadsDir, file), 'utf8')).map((d) => d.toJS() as Record<string, unknown>);
}

netnsTest('ClusterIP: endpoints on both nodes reached through kube-proxy\'s DNAT; named targetPort; readiness; REJECT; direct YAML', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, withAmbientCni: false, agent: false });
  const httpPort = [{ name: 'web-http', containerPort: 8080 }];
  const [client, webA, webB] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'client' },
    { node: 0, namespace: 'app', name: 'web-a', labels: { app: 'web' }, ports: httpPort },
    { node: 1, namespace: 'app', name: 'web-b', labels: { app: 'web' }, ports: httpPort },
  ]);
  if (!client || !webA || !webB) return t.fail('pods missing');
  await startNamedHttp(webA, 8080);
  await startNamedHttp(webB, 8080);

  // Base chains exist from node creation, and bridged traffic goes through iptables in the node netns.
  for (const n of [0, 1]) {
    const nat = await natSave(tb, n);
    t.regex(nat, /-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES/);
    t.regex(nat, /-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING/);
    t.regex(await natSave(tb, n, 'filter'), /-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES/);
    t.is(String((await tb.nodeExec(n, 'sysctl', ['-n', 'net.bridge.bridge-nf-call-iptables'])).stdout).trim(), '1');
  }

  const svc = await tb.addService({ namespace: 'app', name: 'web', selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 'web-http' }] });
  t.regex(svc.clusterIP, /^10\.96\.0\.2\d$/);
  t.is(svc.hostname, 'web.app.svc.cluster.local');
  const [svcYaml] = await readDocs(tb, 'svc-app-web.yaml');
  t.like(svcYaml, { apiVersion: 'v1', kind: 'Service', spec: { clusterIP: svc.clusterIP, clusterIPs: [svc.clusterIP], selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 'web-http', protocol: 'TCP' }] } });
  const slices = await readDocs(tb, endpointSliceFileName('app', 'web'));
  t.is(slices.length, 1);
  t.like(slices[0], { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv4', metadata: { labels: { 'kubernetes.io/service-name': 'web' } }, ports: [{ name: 'http', protocol: 'TCP', port: 8080 }] });
  t.like((slices[0]?.endpoints as unknown[] | undefined)?.[1], { addresses: [webB.ip], conditions: { ready: true, serving: true, terminating: false }, nodeName: webB.node.name, targetRef: { kind: 'Pod', namespace: 'app', name: 'web-b', uid: webB.uid } });

  // The rules are kube-proxy's: the SVC chain with a 50 % split, SEP chains DNATing to podIP:8080 (the named port).
  const nat0 = await natSave(tb, 0);
  const chain = serviceChainName('app/web:http', 'tcp');
  t.true(nat0.includes(`-A KUBE-SERVICES -d ${svc.clusterIP}/32 -p tcp -m comment --comment "app/web:http cluster IP" -m tcp --dport 80 -j ${chain}`), nat0);
  t.regex(nat0, new RegExp(`-A ${chain} .*--probability 0\\.5000000000\\d* -j KUBE-SEP-`));
  for (const ep of [webA, webB]) {
    t.true(nat0.includes(`-A ${endpointChainName('app/web:http', 'tcp', `${ep.ip}:8080`)} -p tcp -m comment --comment "app/web:http" -m tcp -j DNAT --to-destination ${ep.ip}:8080`), nat0);
  }

  // Both endpoints answer through the ClusterIP: web-a on the client's node (bridged reply un-DNATed), web-b across.
  const both = await curlMany(client, `http://${svc.clusterIP}/`, 30);
  t.deepEqual(Object.keys(both).sort(), ['web-a', 'web-b'], JSON.stringify(both));
  // From the node itself too (OUTPUT), e.g. a kubelet.
  t.is(String((await tb.nodeExec(1, 'curl', ['-sS', '-m', '2', `http://${svc.clusterIP}/`])).stdout).trim().startsWith('web-'), true);

  // A pod without the named port gets its own slice without the http port and is never DNATed to.
  const webC = await tb.addPod({ node: 1, namespace: 'app', name: 'web-c', labels: { app: 'web' } });
  const withC = await readDocs(tb, endpointSliceFileName('app', 'web'));
  t.is(withC.length, 2);
  t.true(withC.some((s) => (s.ports as unknown[]).length === 0 && JSON.stringify(s.endpoints).includes(webC.ip)));
  t.false((await natSave(tb, 0)).includes(webC.ip));

  // Not ready: out of the rules (the slice says ready: false), all traffic goes to the other one.
  await tb.setPodReady(webB, false);
  t.regex(await readFile(join(tb.workloadsDir, 'pod-app-web-b.yaml'), 'utf8'), /type: Ready\n\s+status: "False"/);
  t.false((await natSave(tb, 0)).includes(`${webB.ip}:8080`));
  t.deepEqual(await curlMany(client, `http://${svc.clusterIP}/`, 10), { 'web-a': 10 });

  // None ready: REJECT in the filter table, the client's connect is refused at once (curl exit 7).
  await tb.setPodReady(webA, false);
  t.true((await natSave(tb, 1, 'filter')).includes(`-A KUBE-SERVICES -d ${svc.clusterIP}/32 -p tcp -m comment --comment "app/web:http has no endpoints" -m tcp --dport 80 -j REJECT`));
  const started = Date.now();
  const refused = await client.exec('curl', ['-sS', '-m', '5', `http://${svc.clusterIP}/`], { reject: false });
  t.is(refused.exitCode, 7, String(refused.stderr));
  const byNcat = await client.exec('ncat', ['-w', '3', svc.clusterIP, '80'], { reject: false, input: '' });
  t.regex(String(byNcat.stderr), /Connection refused/, 'ECONNREFUSED: the REJECT\'s port-unreachable');
  t.true(Date.now() - started < 2000, 'refused, not timed out');
  t.deepEqual(renderedChainsOf(await natSave(tb, 0)), [], 'no KUBE-SVC/SEP chain left behind');

  await tb.setPodReady(webA, true);
  t.deepEqual(await curlMany(client, `http://${svc.clusterIP}/`, 3), { 'web-a': 3 });

  // A selector-less Service and its EndpointSlice written straight into the folder: the watcher syncs them.
  await tb.writeWorkload('manual.yaml', [
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'manual', namespace: 'app' }, spec: { clusterIP: '10.96.7.7', ports: [{ port: 81, targetPort: 8080 }] } },
    {
      apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'manual-1', namespace: 'app', labels: { 'kubernetes.io/service-name': 'manual' } },
      addressType: 'IPv4', endpoints: [{ addresses: [webB.ip] }], ports: [{ port: 8080, protocol: 'TCP' }],
    },
  ]);
  const deadline = Date.now() + 3000;
  let seen: Record<string, number> = {};
  while (Date.now() < deadline) {
    seen = await curlMany(client, 'http://10.96.7.7:81/', 1);
    if (seen['web-b'] === 1) break;
    await sleep(100);
  }
  t.deepEqual(seen, { 'web-b': 1 }, 'written YAML is picked up by the watcher');

  // Removing the Service removes its slices and rules.
  await tb.removeService('app', 'web');
  t.false(existsSync(join(tb.workloadsDir, endpointSliceFileName('app', 'web'))));
  t.false((await natSave(tb, 0)).includes(svc.clusterIP));
});

function renderedChainsOf(save: string): string[] {
  return save.split('\n').filter((l) => /^:KUBE-(SVC|SEP)-/.test(l));
}

/** Packets counted by the marker rules in the node's mangle OUTPUT and POSTROUTING (DNS queries sent or routed out). */
async function dnsPacketsOut(tb: Testbed, node: number): Promise<number> {
  const out = String((await tb.nodeExec(node, 'iptables', ['-w', '-t', 'mangle', '-L', '-v', '-x', '-n'])).stdout);
  return out
    .split('\n')
    .filter((l) => l.includes('atb-dns-leak'))
    .reduce((sum, l) => sum + Number(l.trim().split(/\s+/)[0] ?? 0), 0);
}

netnsTest('cluster DNS: short name, FQDN and curl resolve to the ClusterIP; headless to ready pods; nothing leaves; teardown', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, withAmbientCni: false, agent: false });
  const [client, remoteClient, pp, db0, db1] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'client' },
    { node: 1, namespace: 'other', name: 'remote' },
    { node: 1, namespace: 'app', name: 'productpage', labels: { app: 'productpage' } },
    { node: 0, namespace: 'app', name: 'db-0', labels: { app: 'db' } },
    { node: 1, namespace: 'app', name: 'db-1', labels: { app: 'db' } },
  ]);
  if (!client || !remoteClient || !pp || !db0 || !db1) return t.fail('pods missing');
  await startNamedHttp(pp, 9080);
  const svc = await tb.addService({ namespace: 'app', name: 'productpage', selector: { app: 'productpage' }, ports: [{ name: 'http', port: 9080 }] });
  await tb.addService({ namespace: 'app', name: 'db', clusterIP: 'None', selector: { app: 'db' }, ports: [{ name: 'pg', port: 5432 }] });

  t.is(String((await client.exec('cat', ['/etc/resolv.conf'])).stdout), podResolvConf('app', tb.node(0).podGateway).trimEnd());
  t.is(String((await remoteClient.exec('cat', ['/etc/resolv.conf'])).stdout), podResolvConf('other', tb.node(1).podGateway).trimEnd());
  // Counters for DNS queries the node itself sends (a forwarding dnsmasq) or routes out of its uplink.
  for (const n of [0, 1]) {
    for (const [chain, iface] of [['OUTPUT', []], ['POSTROUTING', ['-o', 'eth0']]] as const) {
      for (const proto of ['udp', 'tcp']) {
        await tb.nodeExec(n, 'iptables', ['-w', '-t', 'mangle', '-A', chain, ...iface, '-p', proto, '--dport', '53', '-m', 'comment', '--comment', 'atb-dns-leak']);
      }
    }
  }

  const hosts = async (pod: TestbedPod, name: string): Promise<{ code: number; ips: string[] }> => {
    const r = await pod.exec('getent', ['ahostsv4', name], { reject: false });
    return { code: r.exitCode ?? -1, ips: [...new Set(String(r.stdout).split('\n').map((l) => l.split(/\s+/)[0] ?? '').filter((ip) => ip !== ''))].sort() };
  };
  t.deepEqual(await hosts(client, 'productpage'), { code: 0, ips: [svc.clusterIP] }, 'short name through the search path');
  t.deepEqual(await hosts(client, 'productpage.app.svc.cluster.local'), { code: 0, ips: [svc.clusterIP] }, 'FQDN');
  t.regex(String((await client.exec('getent', ['hosts', 'productpage'])).stdout), new RegExp(`^${svc.clusterIP.replaceAll('.', '\\.')}\\s+productpage\\.app\\.svc\\.cluster\\.local`));
  t.deepEqual(await hosts(remoteClient, 'productpage.app'), { code: 0, ips: [svc.clusterIP] }, 'from another namespace and node: <svc>.<ns>');
  t.deepEqual(await hosts(remoteClient, 'productpage'), { code: 2, ips: [] }, 'the short name is namespace-relative');
  t.is(String((await client.exec('curl', ['-sS', '-m', '3', 'http://productpage:9080/'])).stdout), 'productpage');
  t.is(String((await remoteClient.exec('curl', ['-sS', '-m', '3', 'http://productpage.app.svc.cluster.local:9080/'])).stdout), 'productpage');

  // Headless: one A record per ready endpoint; none ready: NXDOMAIN.
  t.deepEqual(await hosts(client, 'db'), { code: 0, ips: [db0.ip, db1.ip].sort() });
  await tb.setPodReady(db1, false);
  t.deepEqual(await hosts(client, 'db'), { code: 0, ips: [db0.ip] });
  await tb.setPodReady(db0, false);
  t.deepEqual(await hosts(client, 'db'), { code: 2, ips: [] });

  // Outside cluster.local: nothing to ask, nothing sent anywhere.
  t.is((await hosts(client, 'example.com')).code, 2);
  t.is((await hosts(remoteClient, 'www.debian.org')).code, 2);
  t.is(await dnsPacketsOut(tb, 0), 0);
  t.is(await dnsPacketsOut(tb, 1), 0);

  // A removed Service's name is gone; a deleted pod's resolv.conf folder is gone.
  await tb.removeService('app', 'productpage');
  t.deepEqual(await hosts(client, 'productpage'), { code: 2, ips: [] });
  await tb.deletePod(db1);
  t.false(existsSync(`/etc/netns/${db1.netnsName}`));
  t.true(existsSync(`/etc/netns/${client.netnsName}/resolv.conf`));

  // Teardown: no /etc/netns entry, no dnsmasq, no netns of this run.
  const dnsmasqPids = ownDnsmasq(tb);
  t.is(dnsmasqPids.length, 2, 'one dnsmasq per node');
  for (const pid of dnsmasqPids) {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    t.true(argv.includes('--no-resolv') && !argv.some((a) => a.startsWith('--server')), 'no upstream server at all');
  }
  await tb.destroy();
  t.deepEqual(etcNetnsOf(tb.id), []);
  t.deepEqual(ownDnsmasq(tb), []);
  t.deepEqual((await listNetns()).filter((n) => n.startsWith(`atb-${tb.id}-`)), []);
});

netnsTest('a failed pod ADD leaves no /etc/netns folder; teardown stops dnsmasq even without pods', async (t) => {
  const tb = await withTestbed(t, {
    nodes: 1,
    withAmbientCni: false,
    agent: false,
    conflist: (_node, list) => ({ ...list, plugins: [...list.plugins, { type: 'does-not-exist' }] }),
  });
  await t.throwsAsync(tb.addPod({ node: 0, name: 'doomed' }));
  t.deepEqual(etcNetnsOf(tb.id), []);
  t.is(ownDnsmasq(tb).length, 1);
  await tb.destroy();
  t.deepEqual(ownDnsmasq(tb), []);
  t.deepEqual((await listNetns()).filter((n) => n.startsWith(`atb-${tb.id}-`)), []);
});

function etcNetnsOf(id: string): string[] {
  return existsSync('/etc/netns') ? readdirSync('/etc/netns').filter((n) => n.startsWith(`atb-${id}-`)) : [];
}

/** PIDs of dnsmasq processes serving this testbed's run dir (found by their command line, never signalled here). */
function ownDnsmasq(tb: Testbed): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (cmd[0]?.endsWith('dnsmasq') && cmd.some((a) => a.startsWith(`--hostsdir=${tb.runDir}/`))) pids.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}
