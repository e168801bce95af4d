// Unit tests for parsing v1 Services and discovery.k8s.io/v1 EndpointSlices (parseService, parseEndpointSlice, fromK8sObject):
// the API's defaults, VIPs, target ports, traffic distribution, and malformed fields named with their object.
import test from 'ava';
import { parseEndpointSlice, parseService, SERVICE_NAME_LABEL, TRAFFIC_DISTRIBUTION_ANNOTATION } from '../../agent/src/workload/service-objects.js';
import { fromK8sObject, WorkloadParseError } from '../../agent/src/workload/types.js';

type Raw = Record<string, unknown>;

const service = (spec: Raw | undefined, metadata: Raw = {}): Raw => ({
  apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'app', ...metadata }, ...(spec === undefined ? {} : { spec }),
});

const slice = (rest: Raw, metadata: Raw = {}): Raw => ({
  apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv4',
  metadata: { name: 'web-abc', namespace: 'app', labels: { [SERVICE_NAME_LABEL]: 'web' }, ...metadata }, ...rest,
});

/** Asserts that parsing throws a WorkloadParseError whose message names the object and matches `field`. */
function rejects(t: import('ava').ExecutionContext, fn: () => unknown, object: string, field: RegExp): void {
  const err = t.throws(fn, { instanceOf: WorkloadParseError });
  t.true(err?.message.startsWith(`${object}:`), `names ${object}: ${err?.message}`);
  t.regex(err?.message ?? '', field);
  t.is((err as WorkloadParseError | undefined)?.code, 'AMB_ERR_BAD_WORKLOAD');
}

test('Service defaults: type ClusterIP, protocol TCP, targetPort = port, internalTrafficPolicy Cluster, not publishNotReadyAddresses', (t) => {
  t.deepEqual(parseService(service({ clusterIP: '10.96.0.10', ports: [{ port: 80 }] }, { uid: 'u-web', labels: { app: 'web' } })), {
    namespace: 'app', name: 'web', uid: 'u-web', labels: { app: 'web' }, annotations: {},
    type: 'ClusterIP',
    clusterIPs: ['10.96.0.10'],
    headless: false,
    ports: [{ name: '', port: 80, targetPort: 80, protocol: 'TCP' }],
    selector: {},
    internalTrafficPolicy: 'Cluster',
    publishNotReadyAddresses: false,
  });
  // No spec at all, no namespace: an empty ClusterIP Service in `default`.
  t.like(parseService({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'bare' } }), {
    namespace: 'default', name: 'bare', uid: '', type: 'ClusterIP', clusterIPs: [], headless: false, ports: [], internalTrafficPolicy: 'Cluster',
  });
  t.false('trafficDistribution' in parseService(service({})));
});

test('Service fields as written: ports, selector, type, policies', (t) => {
  const s = parseService(service({
    type: 'NodePort', clusterIP: '10.96.0.10', selector: { app: 'web' }, internalTrafficPolicy: 'Local', publishNotReadyAddresses: true,
    ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' }, { name: 'dns', port: 53, protocol: 'UDP' }, { name: 'sctp', port: 9, protocol: 'SCTP' }],
  }));
  t.like(s, { type: 'NodePort', selector: { app: 'web' }, internalTrafficPolicy: 'Local', publishNotReadyAddresses: true });
  t.deepEqual(s.ports, [
    { name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' },
    { name: 'dns', port: 53, targetPort: 53, protocol: 'UDP' },
    { name: 'sctp', port: 9, targetPort: 9, protocol: 'SCTP' },
  ]);
  t.is(parseService(service({ type: 'LoadBalancer', clusterIP: '10.96.0.11' })).type, 'LoadBalancer');
});

test('Service VIPs: clusterIPs preferred over clusterIP, dual stack kept in order, empty strings dropped', (t) => {
  t.deepEqual(parseService(service({ clusterIP: '10.96.0.1', clusterIPs: ['10.96.0.2', 'fd00::2'] })).clusterIPs, ['10.96.0.2', 'fd00::2']);
  t.deepEqual(parseService(service({ clusterIP: '10.96.0.1' })).clusterIPs, ['10.96.0.1']);
  t.deepEqual(parseService(service({ clusterIP: 'fd00::10' })).clusterIPs, ['fd00::10']);
  t.deepEqual(parseService(service({ clusterIP: '' })).clusterIPs, []);
  t.deepEqual(parseService(service({ clusterIPs: null, clusterIP: '10.96.0.3' })).clusterIPs, ['10.96.0.3']);
});

test("Service clusterIP 'None' is headless with no VIPs; ExternalName has no VIPs", (t) => {
  for (const spec of [{ clusterIP: 'None' }, { clusterIP: 'None', clusterIPs: ['None'] }, { clusterIPs: ['None'] }]) {
    t.like(parseService(service({ ...spec, selector: { app: 'web' }, ports: [{ port: 80 }] })), { type: 'ClusterIP', headless: true, clusterIPs: [] }, JSON.stringify(spec));
  }
  const ext = parseService(service({ type: 'ExternalName', externalName: 'db.example.com', ports: [{ port: 5432 }] }));
  t.like(ext, { type: 'ExternalName', headless: false, clusterIPs: [] });
  // An ExternalName Service keeps no VIP even if a (stale) clusterIP is still written, and it is not checked.
  t.deepEqual(parseService(service({ type: 'ExternalName', externalName: 'db.example.com', clusterIP: '10.96.0.9' })).clusterIPs, []);
  t.deepEqual(parseService(service({ type: 'ExternalName', externalName: 'db.example.com', clusterIP: 'garbage' })).clusterIPs, []);
});

test('Service targetPort: a name is kept as a string, "8080" is read as the number 8080', (t) => {
  const s = parseService(service({ ports: [{ name: 'http', port: 80, targetPort: 'http-web' }, { name: 'metrics', port: 9090, targetPort: '8080' }, { name: 'x', port: 81, targetPort: 'h2' }] }));
  t.deepEqual(s.ports.map((p) => p.targetPort), ['http-web', 8080, 'h2']);
  t.is(typeof s.ports[1]?.targetPort, 'number');
});

test('Service trafficDistribution: from spec, else from the networking.istio.io/traffic-distribution annotation', (t) => {
  t.is(parseService(service({ trafficDistribution: 'PreferClose' })).trafficDistribution, 'PreferClose');
  t.is(parseService(service({}, { annotations: { [TRAFFIC_DISTRIBUTION_ANNOTATION]: 'PreferClose' } })).trafficDistribution, 'PreferClose');
  t.is(parseService(service({ trafficDistribution: 'PreferSameZone' }, { annotations: { [TRAFFIC_DISTRIBUTION_ANNOTATION]: 'PreferClose' } })).trafficDistribution, 'PreferSameZone', 'the spec wins');
  t.is(TRAFFIC_DISTRIBUTION_ANNOTATION, 'networking.istio.io/traffic-distribution');
});

test('malformed Services throw WorkloadParseError naming the Service and the field', (t) => {
  const at = 'Service app/web';
  rejects(t, () => parseService(service({ ports: [{ port: 0 }] })), at, /spec\.ports\[0\]\.port must be a port number 1-65535, got 0/);
  rejects(t, () => parseService(service({ ports: [{ port: 80 }, { port: 70000 }] })), at, /spec\.ports\[1\]\.port .*got 70000/);
  rejects(t, () => parseService(service({ ports: [{ port: '80' }] })), at, /spec\.ports\[0\]\.port .*got "80"/);
  rejects(t, () => parseService(service({ ports: [{ port: 80.5 }] })), at, /spec\.ports\[0\]\.port/);
  rejects(t, () => parseService(service({ ports: [{ name: 'x' }] })), at, /spec\.ports\[0\]\.port .*got undefined/);
  rejects(t, () => parseService(service({ ports: [{ port: 80, protocol: 'ICMP' }] })), at, /spec\.ports\[0\]\.protocol must be one of TCP, UDP, SCTP, got "ICMP"/);
  rejects(t, () => parseService(service({ ports: [{ port: 80, protocol: 'tcp' }] })), at, /spec\.ports\[0\]\.protocol/);
  rejects(t, () => parseService(service({ ports: [{ port: 80, targetPort: 0 }] })), at, /spec\.ports\[0\]\.targetPort must be a port number 1-65535/);
  rejects(t, () => parseService(service({ ports: [{ port: 80, targetPort: '0' }] })), at, /spec\.ports\[0\]\.targetPort/);
  rejects(t, () => parseService(service({ ports: [{ port: 80, targetPort: 'Not_A_Name' }] })), at, /spec\.ports\[0\]\.targetPort must be a port number or a port name, got "Not_A_Name"/);
  rejects(t, () => parseService(service({ ports: [{ port: 80, targetPort: 'a-name-longer-than-15' }] })), at, /spec\.ports\[0\]\.targetPort/);
  rejects(t, () => parseService(service({ ports: [{ port: 80, targetPort: true }] })), at, /spec\.ports\[0\]\.targetPort/);
  rejects(t, () => parseService(service({ ports: [{ port: 80, name: 7 }] })), at, /spec\.ports\[0\]\.name must be a string/);
  rejects(t, () => parseService(service({ ports: ['80'] })), at, /spec\.ports\[0\] must be a mapping/);
  rejects(t, () => parseService(service({ ports: { port: 80 } })), at, /spec\.ports must be a list/);
  rejects(t, () => parseService(service({ clusterIP: 'not-an-ip' })), at, /spec\.clusterIPs?(\[0\])? must be an IP address, got "not-an-ip"/);
  rejects(t, () => parseService(service({ clusterIPs: ['10.96.0.1', '10.96.0.300'] })), at, /spec\.clusterIPs\[1\] must be an IP address, got "10\.96\.0\.300"/);
  rejects(t, () => parseService(service({ clusterIPs: '10.96.0.1' })), at, /spec\.clusterIPs must be a list/);
  rejects(t, () => parseService(service({ type: 'Headless' })), at, /spec\.type must be one of ClusterIP, NodePort, LoadBalancer, ExternalName, got "Headless"/);
  rejects(t, () => parseService(service({ type: 7 })), at, /spec\.type/);
  rejects(t, () => parseService(service({ internalTrafficPolicy: 'Node' })), at, /spec\.internalTrafficPolicy must be Cluster or Local, got "Node"/);
  rejects(t, () => parseService(service({ trafficDistribution: 1 })), at, /spec\.trafficDistribution must be a string/);
  rejects(t, () => parseService(service({ publishNotReadyAddresses: 'yes' })), at, /spec\.publishNotReadyAddresses must be true or false/);
  rejects(t, () => parseService(service({ selector: { app: 1 } })), at, /spec\.selector\.app must be a string/);
  rejects(t, () => parseService(service({}, { labels: ['x'] })), at, /metadata\.labels must be a mapping/);
  rejects(t, () => parseService(service('spec' as unknown as Raw)), at, /spec must be a mapping/);
  t.throws(() => parseService({ apiVersion: 'v1', kind: 'Service', metadata: {} }), { instanceOf: WorkloadParseError, message: /Service\.metadata\.name must be a non-empty string/ });
  t.throws(() => parseService({ apiVersion: 'v1', kind: 'Service' }), { instanceOf: WorkloadParseError, message: /Service: metadata must be a mapping/ });
});

test('a bad clusterIP written as spec.clusterIP is reported as spec.clusterIP (the field the object has)', (t) => {
  // Objects from the API always carry clusterIPs too; hand-written files (the files source) often have only clusterIP.
  const err = t.throws(() => parseService(service({ clusterIP: 'not-an-ip' })), { instanceOf: WorkloadParseError });
  t.regex(err?.message ?? '', /^Service app\/web: spec\.clusterIP must be an IP address, got "not-an-ip"$/);
  const second = t.throws(() => parseService(service({ clusterIPs: ['None', 'bad'] })), { instanceOf: WorkloadParseError });
  t.regex(second?.message ?? '', /spec\.clusterIPs\[1\] must be an IP address/, 'the index is the one in the file');
});

test('EndpointSlice defaults: ready absent = true, serving absent = ready, terminating absent = false, protocol TCP', (t) => {
  const s = parseEndpointSlice(slice({
    endpoints: [
      { addresses: ['10.1.0.5'] },
      { addresses: ['10.1.0.6'], conditions: { ready: false } },
      { addresses: ['10.1.0.7'], conditions: { ready: false, serving: true, terminating: true } },
      { addresses: ['10.1.0.8'], conditions: {} },
    ],
    ports: [{ name: 'http', port: 8080 }],
  }));
  t.deepEqual(s, {
    namespace: 'app', name: 'web-abc', serviceName: 'web', addressType: 'IPv4',
    endpoints: [
      { addresses: ['10.1.0.5'], ready: true, serving: true, terminating: false },
      { addresses: ['10.1.0.6'], ready: false, serving: false, terminating: false },
      { addresses: ['10.1.0.7'], ready: false, serving: true, terminating: true },
      { addresses: ['10.1.0.8'], ready: true, serving: true, terminating: false },
    ],
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
  });
  // No endpoints, no ports, no service-name label: an empty slice belonging to no Service.
  t.deepEqual(parseEndpointSlice({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv6', metadata: { name: 'orphan', namespace: 'app' } }), {
    namespace: 'app', name: 'orphan', serviceName: '', addressType: 'IPv6', endpoints: [], ports: [],
  });
});

test('EndpointSlice: targetRef as Pod/ns/name, nodeName, IPv6 and FQDN slices, unnamed and UDP ports', (t) => {
  const s = parseEndpointSlice(slice({
    endpoints: [
      { addresses: ['10.1.0.5'], nodeName: 'node-a', targetRef: { kind: 'Pod', namespace: 'app', name: 'web-1', uid: 'u1' } },
      { addresses: ['10.1.0.6'], targetRef: { kind: 'Pod', name: 'web-2' } }, // namespace defaults to the slice's
      { addresses: ['10.1.0.7'], targetRef: { kind: 'Pod' } }, // no name: no reference
    ],
    ports: [{ port: 80 }, { name: 'dns', port: 53, protocol: 'UDP' }],
  }));
  t.like(s.endpoints[0], { nodeName: 'node-a', targetRef: 'Pod/app/web-1' });
  t.is(s.endpoints[1]?.targetRef, 'Pod/app/web-2');
  t.false('targetRef' in (s.endpoints[2] ?? {}));
  t.false('nodeName' in (s.endpoints[1] ?? {}));
  t.deepEqual(s.ports, [{ name: '', port: 80, protocol: 'TCP' }, { name: 'dns', port: 53, protocol: 'UDP' }]);
  t.deepEqual(parseEndpointSlice(slice({ addressType: 'IPv6', endpoints: [{ addresses: ['fd00::5'] }] })).endpoints[0]?.addresses, ['fd00::5']);
  t.deepEqual(parseEndpointSlice(slice({ addressType: 'FQDN', endpoints: [{ addresses: ['db.example.com'] }] })).endpoints[0]?.addresses, ['db.example.com']);
});

test('EndpointSlice ports without a number ("all ports") are skipped', (t) => {
  const s = parseEndpointSlice(slice({ endpoints: [{ addresses: ['10.1.0.5'] }], ports: [{ name: 'all' }, { name: 'http', port: 8080 }, { name: 'x', port: null }] }));
  t.deepEqual(s.ports, [{ name: 'http', port: 8080, protocol: 'TCP' }]);
});

test('malformed EndpointSlices throw WorkloadParseError naming the EndpointSlice and the field', (t) => {
  const at = 'EndpointSlice app/web-abc';
  rejects(t, () => parseEndpointSlice(slice({ endpoints: [{ addresses: ['10.1.0.5'] }, { addresses: ['fd00::5'] }] })), at, /endpoints\[1\]\.addresses\[0\] fd00::5 is not an IPv4 address/);
  rejects(t, () => parseEndpointSlice(slice({ addressType: 'IPv6', endpoints: [{ addresses: ['10.1.0.5'] }] })), at, /endpoints\[0\]\.addresses\[0\] 10\.1\.0\.5 is not an IPv6 address/);
  rejects(t, () => parseEndpointSlice(slice({ endpoints: [{ addresses: [] }] })), at, /endpoints\[0\]\.addresses must be a non-empty list/);
  rejects(t, () => parseEndpointSlice(slice({ endpoints: [{}] })), at, /endpoints\[0\]\.addresses must be a non-empty list/);
  rejects(t, () => parseEndpointSlice(slice({ endpoints: [{ addresses: ['10.1.0.300'] }] })), at, /endpoints\[0\]\.addresses\[0\] must be an IP address, got "10\.1\.0\.300"/);
  rejects(t, () => parseEndpointSlice(slice({ addressType: 'FQDN', endpoints: [{ addresses: [''] }] })), at, /endpoints\[0\]\.addresses\[0\] must be a host name/);
  rejects(t, () => parseEndpointSlice(slice({ addressType: 'IPX' })), at, /addressType must be IPv4, IPv6 or FQDN, got "IPX"/);
  rejects(t, () => parseEndpointSlice(slice({ addressType: undefined })), at, /addressType must be IPv4, IPv6 or FQDN, got undefined/);
  rejects(t, () => parseEndpointSlice(slice({ endpoints: [{ addresses: ['10.1.0.5'], conditions: { ready: 'true' } }] })), at, /endpoints\[0\]\.conditions\.ready must be true or false/);
  rejects(t, () => parseEndpointSlice(slice({ endpoints: [{ addresses: ['10.1.0.5'], conditions: { serving: 1 } }] })), at, /endpoints\[0\]\.conditions\.serving/);
  rejects(t, () => parseEndpointSlice(slice({ endpoints: [{ addresses: ['10.1.0.5'], conditions: { terminating: 'no' } }] })), at, /endpoints\[0\]\.conditions\.terminating/);
  rejects(t, () => parseEndpointSlice(slice({ endpoints: [{ addresses: ['10.1.0.5'], conditions: [] }] })), at, /endpoints\[0\]\.conditions must be a mapping/);
  rejects(t, () => parseEndpointSlice(slice({ endpoints: [{ addresses: ['10.1.0.5'], targetRef: 'Pod/app/x' }] })), at, /endpoints\[0\]\.targetRef must be a mapping/);
  rejects(t, () => parseEndpointSlice(slice({ endpoints: [{ addresses: ['10.1.0.5'], nodeName: 3 }] })), at, /endpoints\[0\]\.nodeName must be a string/);
  rejects(t, () => parseEndpointSlice(slice({ endpoints: {} })), at, /endpoints must be a list/);
  rejects(t, () => parseEndpointSlice(slice({ ports: [{ name: 'http', port: 0 }] })), at, /ports\[0\]\.port must be a port number 1-65535, got 0/);
  rejects(t, () => parseEndpointSlice(slice({ ports: [{ name: 'http', port: 80, protocol: 'HTTP' }] })), at, /ports\[0\]\.protocol must be one of TCP, UDP, SCTP, got "HTTP"/);
  rejects(t, () => parseEndpointSlice(slice({ ports: 'http' })), at, /ports must be a list/);
  rejects(t, () => parseEndpointSlice(slice({}, { labels: { [SERVICE_NAME_LABEL]: 5 } })), at, /metadata\.labels\.kubernetes\.io\/service-name must be a string/);
});

test('fromK8sObject: v1 Services and discovery.k8s.io/v1 EndpointSlices only', (t) => {
  t.like(fromK8sObject(service({ clusterIP: '10.96.0.10' })), { kind: 'Service', service: { name: 'web', clusterIPs: ['10.96.0.10'] } });
  t.like(fromK8sObject(slice({ endpoints: [{ addresses: ['10.1.0.5'] }] })), { kind: 'EndpointSlice', endpointSlice: { name: 'web-abc', serviceName: 'web' } });
  // The v1beta1 shape (topology, no nodeName) is not read as v1.
  t.is(fromK8sObject({ ...slice({ endpoints: [{ addresses: ['10.1.0.5'], topology: { 'kubernetes.io/hostname': 'n1' } }] }), apiVersion: 'discovery.k8s.io/v1beta1' }), undefined);
  for (const apiVersion of ['v2', 'core/v1', 'networking.k8s.io/v1', undefined]) t.is(fromK8sObject({ ...service({ clusterIP: '10.96.0.10' }), apiVersion }), undefined, String(apiVersion));
  t.is(fromK8sObject({ apiVersion: 'v1', kind: 'Endpoints', metadata: { name: 'web', namespace: 'app' } }), undefined);
  // Errors from fromK8sObject are the parsers' own.
  t.throws(() => fromK8sObject(service({ ports: [{ port: 0 }] })), { instanceOf: WorkloadParseError, message: /^Service app\/web: spec\.ports\[0\]\.port/ });
  t.throws(() => fromK8sObject(slice({ addressType: 'IPX' })), { instanceOf: WorkloadParseError, message: /^EndpointSlice app\/web-abc: addressType/ });
});
