// Unit tests for IPv6 where the agent handles addresses (issue 14): pods with several addresses in both sources, IPv6
// ClusterIPs and IPv6 EndpointSlices, lookups by any textual form, the CNI event's addresses, the one capture-family
// decision of enrolment, and HBONE's bracketed :authority and forwarded header.
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { renderPolicyCheck, renderServices } from '../../agent/src/cli/render.js';
import { decideOutbound, decidePlaintextInbound } from '../../agent/src/forwarder/routing.js';
import { connectAuthority, connectHeaders, decideInbound } from '../../agent/src/hbone/connect.js';
import { checkPolicy, parsePolicyCheckArgs, PolicyCheckArgError } from '../../agent/src/policy/check.js';
import { parseCniEvent } from '../../agent/src/protocol/cni-event.js';
import { canonicalIp } from '../../agent/src/protocol/address.js';
import { createBackend } from '../../agent/src/redirect/backend.js';
import { checkCaptureFamilies } from '../../agent/src/reconcile/capture-families.js';
import { eventIps } from '../../agent/src/reconcile/cni-commands.js';
import { WorkloadDirectory } from '../../agent/src/workload/directory.js';
import { FilesWorkloadSource } from '../../agent/src/workload/files-source.js';
import { podFromApi } from '../../agent/src/workload/kube-source.js';
import { parseEndpointSlice } from '../../agent/src/workload/service-objects.js';
import { fromK8sObject } from '../../agent/src/workload/types.js';

const quiet = pino({ level: 'silent' });

test('Pod addresses: status.podIP first, then the rest of status.podIPs, canonical and without duplicates (files and kubernetes)', (t) => {
  const raw = {
    metadata: { name: 'web', namespace: 'app' },
    status: { phase: 'Running', podIP: '10.244.1.5', podIPs: [{ ip: '10.244.1.5' }, { ip: 'FD00:10:244:1:0:0:0:5' }] },
  };
  t.deepEqual(podFromApi(raw)?.podIPs, ['10.244.1.5', 'fd00:10:244:1::5'], 'kubernetes source');
  const o = fromK8sObject({ apiVersion: 'v1', kind: 'Pod', ...raw });
  t.deepEqual(o?.kind === 'Pod' ? o.pod.podIPs : undefined, ['10.244.1.5', 'fd00:10:244:1::5'], 'files source (same parser)');
  const v6only = podFromApi({ metadata: { name: 'v6' }, status: { podIP: 'fd00:10:244:1::7', podIPs: [{ ip: 'fd00:10:244:1:0::7' }] } });
  t.deepEqual(v6only?.podIPs, ['fd00:10:244:1::7'], 'one address written two ways is one address');
});

test('IPv6 EndpointSlices: canonical addresses; the family must match addressType; mapped and special addresses refused', (t) => {
  const slice = (addressType: string, address: string): unknown => parseEndpointSlice({
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType,
    metadata: { name: 'web-v6', namespace: 'app', labels: { 'kubernetes.io/service-name': 'web' } },
    endpoints: [{ addresses: [address] }], ports: [{ port: 8080 }],
  });
  t.like(slice('IPv6', 'FD00:10:244:1:0::5'), { addressType: 'IPv6', endpoints: [{ addresses: ['fd00:10:244:1::5'] }] });
  t.throws(() => slice('IPv6', '10.244.1.5'), { message: /is not an IPv6 address/ });
  t.throws(() => slice('IPv4', 'fd00::5'), { message: /is not an IPv4 address/ });
  t.throws(() => slice('IPv6', '::ffff:10.244.1.5'), { message: /is not an IPv6 address/ }, 'IPv4-mapped belongs to neither slice type');
  t.throws(() => slice('IPv4', '::ffff:10.244.1.5'), { message: /is not an IPv4 address/ });
  t.throws(() => slice('IPv6', 'fe80::1'), { message: /link-local/ });
  t.throws(() => slice('IPv6', '::1'), { message: /loopback/ });
});

const DUAL_STACK_FOLDER = `
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, uid: u1, labels: {app: web}}
spec: {nodeName: n1, serviceAccountName: web}
status: {podIP: 10.244.1.5, podIPs: [{ip: 10.244.1.5}, {ip: "fd00:10:244:1::5"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: v6, namespace: app, uid: u2, labels: {app: v6}}
spec: {nodeName: n1, serviceAccountName: v6}
status: {podIP: "fd00:10:244:1:0:0:0:7", podIPs: [{ip: "fd00:10:244:1::7"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, "fd00:10:96::20"]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: http, port: 80, targetPort: 8080}]
  selector: {app: web}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: app, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.5], nodeName: n1, targetRef: {kind: Pod, namespace: app, name: web}}]
ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: app, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
endpoints: [{addresses: ["fd00:10:244:1:0::5"], nodeName: n1, targetRef: {kind: Pod, namespace: app, name: web}}]
ports: [{name: http, port: 8080}]
`;

test('the workload directory over a dual-stack folder: every address of a pod, IPv6 ClusterIPs to IPv6 endpoints, any textual form', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'amb-ds-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'all.yaml'), DUAL_STACK_FOLDER);
  const src = new FilesWorkloadSource(dir, quiet, 60_000);
  await src.start();
  t.teardown(() => src.stop());
  const wd = new WorkloadDirectory(src, 'cluster.local', { nodeName: 'n1', serviceCidrs: ['10.96.0.0/16', 'fd00:10:96::/112'] });
  t.teardown(() => wd.close());
  t.deepEqual(wd.all().map((w) => w.ip).sort(), ['10.244.1.5', 'fd00:10:244:1::5', 'fd00:10:244:1::7']);
  // The agent's directory lists only the families its backend captures: no peer sends HBONE to an IPv6 address (its
  // TCP is refused in the pod), and the IPv6-only pod (refused at enrolment) is no mesh destination at all.
  const v4dir = new WorkloadDirectory(src, 'cluster.local', { nodeName: 'n1', meshFamilies: ['ipv4'] });
  t.teardown(() => v4dir.close());
  t.deepEqual(v4dir.all().map((w) => w.ip), ['10.244.1.5']);
  t.is(v4dir.lookup('fd00:10:244:1::7'), undefined);
  for (const form of ['fd00:10:244:1::5', 'fd00:10:244:1:0:0:0:5', 'FD00:10:244:1::5']) {
    t.is(wd.lookup(canonicalIp(form) ?? form)?.name, 'web', form);
  }
  t.is(wd.lookup(canonicalIp('::ffff:10.244.1.5') ?? '')?.name, 'web', 'an IPv4-mapped address is its IPv4 address');
  t.is(wd.lookup('FD00:10:244:1::5'), undefined, 'lookups take the canonical text (callers canonicalise once, at their edge)');
  t.is(wd.lookup('fd00:10:244:1::7')?.identity, 'spiffe://cluster.local/ns/app/sa/v6', 'an IPv6-only pod is a mesh workload');
  t.is(wd.lookup('fd00:10:244:1::6'), undefined);
  // A Service of both families: each ClusterIP resolves to the endpoints of its own family.
  const v6 = wd.service('fd00:10:96::20', 80);
  t.deepEqual(v6?.candidates.map((c) => `${c.ip} ${c.port}`), ['fd00:10:244:1::5 8080']);
  t.deepEqual(wd.service('10.96.0.20', 80)?.candidates.map((c) => `${c.ip} ${c.port}`), ['10.244.1.5 8080']);
  t.is(wd.serviceAddress('fd00:10:96::20'), 'known');
  t.is(wd.serviceAddress('fd00:10:96::99'), 'unknown', 'inside the IPv6 Service range');
  t.is(wd.serviceOfEndpoint('fd00:10:244:1::5', 8080)?.name, 'web');
  const route = decideOutbound({ address: 'fd00:10:96::20', port: 80 }, { lookup: (ip) => wd.lookup(ip), service: (ip, port) => wd.service(ip, port) }, () => 0);
  t.like(route, { kind: 'hbone', target: { address: 'fd00:10:244:1::5', port: 8080 }, peer: { name: 'web' } });
  const refused = decideOutbound({ address: 'fd00:10:96::99', port: 80 }, { lookup: (ip) => wd.lookup(ip), serviceAddress: (ip) => wd.serviceAddress(ip) });
  t.like(refused, { kind: 'refuse' });
  t.regex(refused.kind === 'refuse' ? refused.reason : '', /\[fd00:10:96::99\]:80 is in the Service ranges/, 'messages bracket IPv6');
  t.deepEqual(wd.serviceViews().map((v) => v.vip).sort(), ['10.96.0.20', 'fd00:10:96::20']);
  // `ambient-node services` brackets IPv6 where it prints address:port.
  const text = renderServices(wd.serviceViews());
  t.regex(text, /app\/web\s+\[fd00:10:96::20\]:80\s+http\s+8080\s+\[fd00:10:244:1::5\]:8080\s+HBONE/);
  t.regex(text, /app\/web\s+10\.96\.0\.20:80\s+http\s+8080\s+10\.244\.1\.5:8080\s+HBONE/);
  // `policy check`: an IPv6 --from-ip (canonical), the destination pod's IPv6 address bracketed.
  const q = parsePolicyCheckArgs('app/sleep', 'app/web:8080', 'FD00:10:244:2:0::9');
  t.is(q.from.ip, 'fd00:10:244:2::9');
  t.throws(() => parsePolicyCheckArgs('app/sleep', 'app/web:8080', 'fd00::1%eth0'), { instanceOf: PolicyCheckArgError });
  t.throws(() => parsePolicyCheckArgs('app/sleep', 'app/web:8080', 'fd00:::1'), { instanceOf: PolicyCheckArgError });
  const v6pod = src.getPod('app', 'v6');
  if (!v6pod) throw new Error('pod app/v6 missing');
  const r = checkPolicy(q, v6pod, { authorization: [], peerAuthentication: [] }, 'cluster.local');
  t.regex(renderPolicyCheck(r), /-> app\/v6 \[fd00:10:244:1::7\]:8080/);
});

test('CNI event: every prevResult address (both families) is recorded, prefix dropped, canonical', (t) => {
  const ev = parseCniEvent({
    command: 'ADD', cniVersion: '1.0.0', containerId: 'c1', netns: '/var/run/netns/x', ifname: 'eth0',
    ips: [{ address: '10.244.1.5/24' }, { address: 'fd00:10:244:1:0:0:0:5/64' }, { address: 'fd00:10:244:1::5/64' }],
  });
  t.deepEqual(eventIps(ev), ['10.244.1.5', 'fd00:10:244:1::5']);
  t.deepEqual(eventIps(parseCniEvent({ command: 'ADD', cniVersion: '1.0.0', containerId: 'c1', netns: '/var/run/netns/x', ifname: 'eth0', ips: [{ address: 'fd00::7/64' }] })), ['fd00::7']);
});

test('capture families: one decision, from what the backend declares (IPv4; IPv6 too with --capture-ipv6, every backend)', async (t) => {
  for (const mode of ['iptables', 'nftables', 'ebpf'] as const) {
    t.deepEqual((await createBackend(mode, { preserveSource: true })).captureFamilies, ['ipv4'], mode);
    t.deepEqual((await createBackend(mode, { preserveSource: true, captureIpv6: false })).captureFamilies, ['ipv4'], `${mode}, flag off`);
    t.deepEqual((await createBackend(mode, { preserveSource: true, captureIpv6: true })).captureFamilies, ['ipv4', 'ipv6'], `${mode}, flag on`);
  }
  const v4only = { name: 'iptables', captureFamilies: ['ipv4'] as const };
  const both = { name: 'iptables', captureFamilies: ['ipv4', 'ipv6'] as const };
  t.deepEqual(checkCaptureFamilies(['10.244.1.5'], v4only), { ok: true, uncaptured: [] });
  t.deepEqual(checkCaptureFamilies(['10.244.1.5', 'fd00::5'], v4only), { ok: true, uncaptured: ['fd00::5'] }, 'dual-stack: IPv6 refused in the pod, warned');
  t.deepEqual(checkCaptureFamilies([], v4only), { ok: true, uncaptured: [] }, 'no address: nothing to decide by');
  const v6only = checkCaptureFamilies(['fd00::5'], v4only);
  t.false(v6only.ok, 'an IPv6-only pod is refused while the backend captures IPv4 only');
  t.regex(v6only.ok ? '' : v6only.reason, /\(fd00::5\) are IPv6 only and the iptables backend captures IPv4 only/);
  t.deepEqual(checkCaptureFamilies(['fd00::5'], both), { ok: true, uncaptured: [] }, 'a backend declaring ipv6 lifts the refusal');
  t.deepEqual(checkCaptureFamilies(['10.244.1.5', 'fd00::5'], both), { ok: true, uncaptured: [] });
  t.deepEqual(checkCaptureFamilies(['10.244.1.5'], { name: 'x', captureFamilies: ['ipv6'] as const }).ok, false);
});

test('HBONE over IPv6: bracketed :authority both ways, forwarded for="[ip]:port", the pod matched in any textual form', (t) => {
  t.is(connectAuthority('fd00:10:244:1::5', 8080), '[fd00:10:244:1::5]:8080');
  t.is(connectAuthority('10.244.1.5', 8080), '10.244.1.5:8080');
  t.is(connectHeaders({ ip: 'fd00::9', port: 41000 }, '').forwarded, 'for="[fd00::9]:41000"');
  t.is(connectHeaders({ ip: '10.0.0.9', port: 41000 }, '', 'web.app.svc.cluster.local').forwarded, 'for="10.0.0.9:41000";host=web.app.svc.cluster.local');
  const ips = ['10.244.1.5', 'fd00:10:244:1::5'];
  t.deepEqual(decideInbound('CONNECT', '[fd00:10:244:1::5]:8080', ips), { upstream: { host: 'fd00:10:244:1::5', port: 8080 } });
  t.deepEqual(decideInbound('CONNECT', '[FD00:10:244:1:0:0:0:5]:8080', ips), { upstream: { host: 'fd00:10:244:1::5', port: 8080 } });
  t.deepEqual(decideInbound('CONNECT', '10.244.1.5:8080', ips), { upstream: { host: '10.244.1.5', port: 8080 } });
  t.like(decideInbound('CONNECT', '[fd00:10:244:1::6]:8080', ips), { status: 400 }, 'not this pod');
  t.like(decideInbound('CONNECT', '[fd00:10:244:1::5]:15008', ips), { status: 503 });
  for (const bad of ['fd00:10:244:1::5:8080', '[fd00:10:244:1::5]', '[fd00:10:244:1::5%eth0]:8080', '[10.244.1.5]:8080', '[fd00:10:244:1::5]:0']) {
    t.like(decideInbound('CONNECT', bad, ips), { status: 400 }, bad);
  }
  // The socket's original destination is canonicalised at the edge (originalDst); the decision compares canonical text.
  t.deepEqual(decidePlaintextInbound({ address: canonicalIp('fd00:10:244:1:0::5') ?? '', port: 9080 }, ips, 'PERMISSIVE'), { ok: true });
  t.like(decideOutbound({ address: '::1', port: 15001 }, { lookup: () => undefined }), { kind: 'refuse' }, 'straight to the listener over IPv6 loopback');
});
