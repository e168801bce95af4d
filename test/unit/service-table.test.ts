// Unit tests for the Service table and outbound resolution through it: ClusterIP and port to one ready endpoint and
// its target port (named targetPorts through the slice), node preference, mesh or plain, refusal when nothing is ready.
import test from 'ava';
import { decideOutbound } from '../../agent/src/forwarder/routing.js';
import { serviceViews, type MeshWorkload } from '../../agent/src/workload/directory.js';
import { parseEndpointSlice, parseService, type EndpointSliceInfo, type ServiceInfo } from '../../agent/src/workload/service-objects.js';
import { allEntries, buildServiceTable, lookupService, pickEndpoint, vipKey, type ServiceTable } from '../../agent/src/workload/service-table.js';

const VIP = '10.96.0.20';

function svc(name: string, spec: Record<string, unknown>, annotations?: Record<string, string>): ServiceInfo {
  return parseService({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'app', ...(annotations ? { annotations } : {}) }, spec });
}

type Ep = { ip: string; ready?: boolean; node?: string; terminating?: boolean };
function slice(service: string, eps: Ep[], ports: { name?: string; port: number }[], name = `${service}-abc`, addressType = 'IPv4'): EndpointSliceInfo {
  return parseEndpointSlice({
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType,
    metadata: { name, namespace: 'app', labels: { 'kubernetes.io/service-name': service } },
    endpoints: eps.map((e) => ({
      addresses: [e.ip], conditions: { ...(e.ready === undefined ? {} : { ready: e.ready }), ...(e.terminating ? { terminating: true } : {}) },
      ...(e.node ? { nodeName: e.node } : {}), targetRef: { kind: 'Pod', namespace: 'app', name: `pod-${e.ip}` },
    })),
    ports: ports.map((p) => ({ ...(p.name ? { name: p.name } : {}), port: p.port, protocol: 'TCP' })),
  });
}

const table = (services: ServiceInfo[], slices: EndpointSliceInfo[], nodeName = 'n0'): ServiceTable => buildServiceTable(services, slices, { nodeName });
const productpage = svc('productpage', { clusterIP: VIP, ports: [{ name: 'http', port: 9080, targetPort: 9080 }], selector: { app: 'productpage' } });
const mesh = new Map<string, MeshWorkload>([
  ['10.244.1.2', { ip: '10.244.1.2', namespace: 'app', name: 'pp-1', serviceAccount: 'productpage', identity: 'spiffe://cluster.local/ns/app/sa/productpage', node: 'n1' }],
]);
const lookup = (ip: string): MeshWorkload | undefined => mesh.get(ip);

test('a ClusterIP and port maps to the Service, its host name and its endpoints', (t) => {
  const tb = table([productpage], [slice('productpage', [{ ip: '10.244.1.2', node: 'n1' }], [{ name: 'http', port: 9080 }])]);
  const e = lookupService(tb, VIP, 9080);
  t.truthy(e);
  t.deepEqual(e?.service, { namespace: 'app', name: 'productpage', hostname: 'productpage.app.svc.cluster.local' });
  t.deepEqual(e?.candidates.map((c) => `${c.ip}:${c.port}`), ['10.244.1.2:9080']);
  t.is(lookupService(tb, VIP, 9081), undefined, 'a port the Service does not define');
  t.is(tb.byEndpoint.get('10.244.1.2'), undefined, 'an endpoint on another node is not named here');
  const onN1 = table([productpage], [slice('productpage', [{ ip: '10.244.1.2', node: 'n1' }], [{ name: 'http', port: 9080 }])], 'n1');
  t.is(onN1.byEndpoint.get('10.244.1.2')?.get(9080)?.name, 'productpage', 'the agent of the endpoint\'s node names its inbound connections');
  t.is(buildServiceTable([productpage], [], { nodeName: 'n0', clusterDomain: 'corp.example' }).byVip.get(VIP)?.get(9080)?.service.hostname, 'productpage.app.svc.corp.example');
});

test('a named targetPort resolves through the slice port of the same name, per slice', (t) => {
  const named = svc('web', { clusterIP: VIP, ports: [{ name: 'http', port: 80, targetPort: 'web-http' }] });
  const tb = table([named], [
    slice('web', [{ ip: '10.244.1.2' }], [{ name: 'http', port: 8080 }], 'web-a'),
    slice('web', [{ ip: '10.244.1.3' }], [{ name: 'http', port: 9090 }], 'web-b'),
    slice('web', [{ ip: '10.244.1.4' }], [{ name: 'other', port: 7070 }], 'web-c'),
  ]);
  t.deepEqual(lookupService(tb, VIP, 80)?.endpoints.map((e) => `${e.ip}:${e.port}`).sort(), ['10.244.1.2:8080', '10.244.1.3:9090'], 'the slice that does not resolve the name is left out');
});

test('a numeric targetPort is used only by a slice that lists no ports; a slice without the port name is skipped', (t) => {
  const s = svc('web', { clusterIP: VIP, ports: [{ port: 80, targetPort: 8080 }] });
  t.deepEqual(table([s], [slice('web', [{ ip: '10.244.1.2' }], [])]).byVip.get(VIP)?.get(80)?.candidates.map((e) => e.port), [8080]);
  t.deepEqual(table([s], [slice('web', [{ ip: '10.244.1.2' }], [{ name: 'other', port: 9999 }])]).byVip.get(VIP)?.get(80)?.endpoints, [], 'as kube-proxy: no port of that name, no endpoint');
});

test('two ports of one Service resolve independently', (t) => {
  const s = svc('two', { clusterIP: VIP, ports: [{ name: 'http', port: 80, targetPort: 8080 }, { name: 'admin', port: 81, targetPort: 9090 }] });
  const tb = table([s], [slice('two', [{ ip: '10.244.1.2' }], [{ name: 'http', port: 8080 }, { name: 'admin', port: 9090 }])]);
  t.is(lookupService(tb, VIP, 80)?.candidates[0]?.port, 8080);
  t.is(lookupService(tb, VIP, 81)?.candidates[0]?.port, 9090);
});

test('only ready endpoints are candidates; publishNotReadyAddresses takes all', (t) => {
  const eps: Ep[] = [{ ip: '10.244.1.2', ready: true }, { ip: '10.244.1.3', ready: false }, { ip: '10.244.1.4', ready: false, terminating: true }];
  const s1 = table([productpage], [slice('productpage', eps, [{ name: 'http', port: 9080 }])]).byVip.get(VIP)?.get(9080);
  t.deepEqual(s1?.candidates.map((e) => e.ip), ['10.244.1.2']);
  t.is(s1?.endpoints.length, 3);
  const pub = svc('productpage', { clusterIP: VIP, publishNotReadyAddresses: true, ports: [{ name: 'http', port: 9080 }] });
  t.is(table([pub], [slice('productpage', eps, [{ name: 'http', port: 9080 }])]).byVip.get(VIP)?.get(9080)?.candidates.length, 3);
});

test('PreferClose prefers this node and falls back; internalTrafficPolicy Local is this node only', (t) => {
  const eps: Ep[] = [{ ip: '10.244.0.2', node: 'n0' }, { ip: '10.244.1.2', node: 'n1' }];
  const ports = [{ name: 'http', port: 9080 }];
  const close = svc('productpage', { clusterIP: VIP, trafficDistribution: 'PreferClose', ports: [{ name: 'http', port: 9080 }] });
  t.deepEqual(table([close], [slice('productpage', eps, ports)], 'n0').byVip.get(VIP)?.get(9080)?.candidates.map((e) => e.ip), ['10.244.0.2']);
  t.deepEqual(table([close], [slice('productpage', eps, ports)], 'n2').byVip.get(VIP)?.get(9080)?.candidates.map((e) => e.ip), ['10.244.0.2', '10.244.1.2'], 'no local endpoint: any');
  const annotated = svc('productpage', { clusterIP: VIP, ports: [{ name: 'http', port: 9080 }] }, { 'networking.istio.io/traffic-distribution': 'PreferClose' });
  t.is(table([annotated], [slice('productpage', eps, ports)], 'n1').byVip.get(VIP)?.get(9080)?.mode, 'prefer-node');
  const local = svc('productpage', { clusterIP: VIP, internalTrafficPolicy: 'Local', ports: [{ name: 'http', port: 9080 }] });
  t.deepEqual(table([local], [slice('productpage', eps, ports)], 'n2').byVip.get(VIP)?.get(9080)?.candidates, [], 'Local and none here: nothing');
});

test('headless, ExternalName, UDP ports, FQDN slices and unlabelled slices give no entries; notes say why', (t) => {
  const notes: string[] = [];
  const tb = buildServiceTable([
    svc('headless', { clusterIP: 'None', ports: [{ port: 80 }] }),
    svc('ext', { type: 'ExternalName', externalName: 'example.org', ports: [{ port: 80 }] }),
    svc('dns', { clusterIP: '10.96.0.10', ports: [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53, protocol: 'TCP' }] }),
  ], [
    slice('dns', [{ ip: '10.244.1.9' }], [{ name: 'dns-tcp', port: 53 }]),
    { ...slice('dns', [], [], 'fqdn', 'IPv4'), addressType: 'FQDN' },
    { ...slice('dns', [], [], 'orphan'), serviceName: '' },
  ], { nodeName: 'n0' }, { notes });
  t.deepEqual(allEntries(tb).map((e) => vipKey(e.vip, e.port.port)), ['10.96.0.10:53'], 'only the TCP port of the ClusterIP Service');
  t.is(notes.length, 2);
  t.regex(notes.join('\n'), /FQDN/);
  t.regex(notes.join('\n'), /no kubernetes\.io\/service-name/);
});

test('duplicate endpoints across slices are merged, ready wins; IPv6 slices do not feed an IPv4 VIP', (t) => {
  const tb = table([productpage], [
    slice('productpage', [{ ip: '10.244.1.2', ready: false }], [{ name: 'http', port: 9080 }], 'a'),
    slice('productpage', [{ ip: '10.244.1.2', ready: true }], [{ name: 'http', port: 9080 }], 'b'),
    parseEndpointSlice({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv6', metadata: { name: 'v6', namespace: 'app', labels: { 'kubernetes.io/service-name': 'productpage' } }, endpoints: [{ addresses: ['fd00::2'] }], ports: [{ name: 'http', port: 9080 }] }),
  ]);
  const e = lookupService(tb, VIP, 9080);
  t.deepEqual(e?.endpoints.map((x) => [x.ip, x.ready]), [['10.244.1.2', true]]);
});

test('pickEndpoint is uniform over the candidates', (t) => {
  const eps: Ep[] = [{ ip: '10.244.1.2' }, { ip: '10.244.1.3' }, { ip: '10.244.1.4' }];
  const e = table([productpage], [slice('productpage', eps, [{ name: 'http', port: 9080 }])]).byVip.get(VIP)?.get(9080);
  if (!e) return t.fail();
  t.is(pickEndpoint(e, () => 0)?.ip, '10.244.1.2');
  t.is(pickEndpoint(e, () => 0.5)?.ip, '10.244.1.3');
  t.is(pickEndpoint(e, () => 0.9999999)?.ip, '10.244.1.4');
  const counts = new Map<string, number>();
  for (let i = 0; i < 3000; i++) {
    const ip = pickEndpoint(e)?.ip ?? '';
    counts.set(ip, (counts.get(ip) ?? 0) + 1);
  }
  for (const [ip, n] of counts) t.true(n > 800 && n < 1200, `${ip}: ${n}`);
});

test('decideOutbound: a ClusterIP resolves to HBONE for a mesh endpoint, plain for another, refusal for none', (t) => {
  const tb = table([productpage], [slice('productpage', [{ ip: '10.244.1.2' }, { ip: '10.244.2.9' }], [{ name: 'http', port: 9080 }])]);
  const service = (ip: string, port: number) => lookupService(tb, ip, port);
  const ref = { namespace: 'app', name: 'productpage', hostname: 'productpage.app.svc.cluster.local' };
  t.deepEqual(decideOutbound({ address: VIP, port: 9080 }, { lookup, service }, () => 0), { kind: 'hbone', peer: mesh.get('10.244.1.2') as MeshWorkload, target: { address: '10.244.1.2', port: 9080 }, service: ref });
  t.deepEqual(decideOutbound({ address: VIP, port: 9080 }, { lookup, service }, () => 0.9), { kind: 'passthrough', target: { address: '10.244.2.9', port: 9080 }, service: ref });
  t.deepEqual(decideOutbound({ address: VIP, port: 1234 }, { lookup, service }), { kind: 'passthrough', target: { address: VIP, port: 1234 } }, 'a port the Service does not define: unchanged');
  const empty = table([productpage], []);
  const r = decideOutbound({ address: VIP, port: 9080 }, { lookup, service: (ip, port) => lookupService(empty, ip, port) });
  t.is(r.kind, 'refuse');
  if (r.kind === 'refuse') {
    t.is(r.responseFlags, 'UH');
    t.deepEqual(r.service, ref);
    t.regex(r.reason, /^no healthy upstream: 10\.96\.0\.20:9080 \(app\/productpage has no endpoints for port 9080\)$/);
  }
  t.deepEqual(decideOutbound({ address: '10.244.1.2', port: 9080 }, { lookup, service }), { kind: 'hbone', peer: mesh.get('10.244.1.2') as MeshWorkload, target: { address: '10.244.1.2', port: 9080 } }, 'a pod IP: no service');
});

test('decideOutbound never sends in clear what it cannot place: unknown endpoint pods, endpoints that are Service addresses, unknown ClusterIPs', (t) => {
  const tb = table([productpage], [slice('productpage', [{ ip: '10.244.2.9' }], [{ name: 'http', port: 9080 }])]);
  const service = (ip: string, port: number) => lookupService(tb, ip, port);
  const refused = (r: ReturnType<typeof decideOutbound>): string => (r.kind === 'refuse' && r.responseFlags === 'UH' ? r.reason : `not refused: ${r.kind}`);
  // The slice's targetRef is Pod/app/pod-10.244.2.9: unknown to the directory (its pod watch may lag) -> refused.
  t.regex(refused(decideOutbound({ address: VIP, port: 9080 }, { lookup, service, knownPod: () => false })), /pod the workload directory does not know yet/);
  t.is(decideOutbound({ address: VIP, port: 9080 }, { lookup, service, knownPod: (ref) => ref === 'Pod/app/pod-10.244.2.9' }).kind, 'passthrough', 'a known non-mesh pod: plain');
  t.regex(refused(decideOutbound({ address: VIP, port: 9080 }, { lookup, service, serviceAddress: (ip) => (ip === '10.244.2.9' ? 'known' : undefined) })), /itself a Service address/);
  const ranges = (ip: string) => (ip === VIP ? 'known' as const : ip.startsWith('10.96.') ? 'unknown' as const : undefined);
  t.regex(refused(decideOutbound({ address: '10.96.7.7', port: 80 }, { lookup, service, serviceAddress: ranges })), /^no healthy upstream: 10\.96\.7\.7:80 is in the Service ranges but no Service the agent knows/);
  t.deepEqual(decideOutbound({ address: VIP, port: 1234 }, { lookup, service, serviceAddress: ranges }), { kind: 'passthrough', target: { address: VIP, port: 1234 } }, 'a known ClusterIP on a port it does not define: unchanged');
  t.is(decideOutbound({ address: '10.244.9.9', port: 80 }, { lookup, service, serviceAddress: ranges }).kind, 'passthrough', 'outside the ranges: unchanged');
});

test('serviceViews shows each endpoint with mesh membership and whether it is picked', (t) => {
  const tb = table([productpage], [slice('productpage', [{ ip: '10.244.1.2', node: 'n1' }, { ip: '10.244.2.9', ready: false }], [{ name: 'http', port: 9080 }])]);
  const [v] = serviceViews(allEntries(tb), lookup);
  t.like(v, { namespace: 'app', name: 'productpage', vip: VIP, port: 9080, portName: 'http', targetPort: 9080, mode: 'standard' });
  t.like(v?.endpoints[0], { ip: '10.244.1.2', port: 9080, mesh: true, identity: 'spiffe://cluster.local/ns/app/sa/productpage', ready: true, candidate: true, node: 'n1' });
  t.like(v?.endpoints[1], { ip: '10.244.2.9', mesh: false, ready: false, candidate: false });
});

test('a rebuild reuses the entries of every Service whose objects did not change', (t) => {
  const cache = new Map();
  const ppSlice = slice('productpage', [{ ip: '10.244.1.2' }], [{ name: 'http', port: 9080 }]);
  const other = svc('other', { clusterIP: '10.96.0.21', ports: [{ port: 80 }] });
  const first = buildServiceTable([productpage, other], [ppSlice], { nodeName: 'n0' }, { notes: [] }, cache);
  const second = buildServiceTable([productpage, other], [ppSlice, slice('other', [{ ip: '10.244.1.9' }], [])], { nodeName: 'n0' }, { notes: [] }, cache);
  t.is(lookupService(second, VIP, 9080), lookupService(first, VIP, 9080), 'productpage untouched: same entry object');
  t.not(lookupService(second, '10.96.0.21', 80), lookupService(first, '10.96.0.21', 80), 'other got a slice: rebuilt');
  t.is(lookupService(second, '10.96.0.21', 80)?.candidates.length, 1);
  buildServiceTable([other], [], { nodeName: 'n0' }, { notes: [] }, cache);
  t.deepEqual([...cache.keys()], ['app/other'], 'a removed Service leaves the cache');
});

test('WorkloadDirectory: Service changes are gathered and applied at the next lookup; known pods and Service ranges', async (t) => {
  const { WorkloadDirectory } = await import('../../agent/src/workload/directory.js');
  let services: ServiceInfo[] = [];
  const pod = { namespace: 'app', name: 'pp-1', podIPs: ['10.244.1.2'], labels: {}, annotations: {}, uid: 'u', nodeName: 'n1', serviceAccount: 'sa', hostNetwork: false };
  let listener: ((c: { pods: never[]; namespaces: never[]; policies: boolean; services: boolean }) => void) | undefined;
  const source = {
    services: () => services, endpointSlices: () => [], pods: () => [pod],
    getPod: (ns: string, name: string) => (ns === pod.namespace && name === pod.name ? pod : undefined), getNamespace: () => undefined, onChange: (l: typeof listener) => void (listener = l),
  };
  const dir = new WorkloadDirectory(source as never, 'cluster.local', { nodeName: 'n0', serviceCidrs: ['10.96.0.0/16'], serviceRebuildDelayMs: 60_000 });
  t.teardown(() => dir.close());
  t.is(dir.service(VIP, 9080), undefined);
  services = [productpage];
  listener?.({ pods: [], namespaces: [], policies: false, services: true });
  t.is(dir.service(VIP, 9080)?.service.name, 'productpage', 'the first lookup after a change rebuilds (the timer is far off)');
  t.is(dir.serviceAddress(VIP), 'known');
  t.is(dir.serviceAddress('10.96.9.9'), 'unknown');
  t.is(dir.serviceAddress('10.244.1.2'), undefined);
  t.true(dir.knownPod('Pod/app/pp-1'));
  t.false(dir.knownPod('Pod/app/pp-2'));
});
