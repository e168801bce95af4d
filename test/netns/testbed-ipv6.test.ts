// The testbed's dual-stack and IPv6-only clusters (issue 14): the real bridge + host-local plugins hand out IPv6 (ULA)
// addresses, nodes route IPv6 to each other's pod ranges, addresses are usable at once (no DAD wait), and pods outside
// the mesh talk across nodes over IPv6. The agent records every address of an enrolled dual-stack pod, and refuses an
// IPv6-only pod at ADD while its backend captures IPv4 only (--capture-ipv6 false; the one capture-family check).
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { CniPluginError, podFileName, type Testbed, type TestbedPod } from '../testbed/index.js';
import { AMBIENT, adminHttp, agentPod, agentPods, eventually } from './helpers.js';

/** An echo server on `port` (both families) in the pod; answers `echo:<line>`. */
async function echo(pod: TestbedPod, port: number): Promise<void> {
  void pod.spawn('ncat', ['-l', '-k', String(port), '--sh-exec', 'read l; echo "echo:$l"']).catch(() => undefined);
  await pod.waitForPort(port);
}

async function connect(client: TestbedPod, addr: string, port: number): Promise<{ ok: boolean; out: string }> {
  const r = await client.exec('ncat', ['--no-shutdown', '-w', '3', addr, String(port)], { input: 'hi\n', timeout: 10_000, reject: false });
  const out = `${String(r.stdout)}${String(r.stderr)}`.trim();
  return { ok: r.exitCode === 0 && out.includes('echo:hi'), out };
}

/** The pod's global addresses as `ip -j addr` reports them, with their flags (tentative must never show). */
async function globalAddrs(pod: TestbedPod): Promise<{ local: string; family: string; tentative: boolean }[]> {
  const r = await pod.exec('ip', ['-j', 'addr', 'show', 'dev', pod.ifname, 'scope', 'global']);
  const links = JSON.parse(String(r.stdout)) as { addr_info?: { local: string; family: string; tentative?: boolean }[] }[];
  return links.flatMap((l) => (l.addr_info ?? []).filter((a) => a.local !== undefined).map((a) => ({ local: a.local, family: a.family, tentative: a.tentative === true })));
}

async function plainPods(tb: Testbed): Promise<[TestbedPod, TestbedPod]> {
  await tb.setNamespace('plain', {});
  const [a, b] = await tb.addPods([
    { node: 0, namespace: 'plain', name: 'a' },
    { node: 1, namespace: 'plain', name: 'b' },
  ]);
  if (!a || !b) throw new Error('pods missing');
  return [a, b];
}

netnsTest.serial('dual-stack testbed: pods get one IPv4 and one IPv6 address and reach another node\'s pod over both; the agent records both (--capture-ipv6 false)', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, ipFamilies: ['ipv4', 'ipv6'], agentArgs: ['--capture-ipv6', 'false'] });
  const [a, b] = await plainPods(tb);
  t.regex(a.ip, /^10\.244\.0\./, 'IPv4 is primary');
  t.regex(a.ip6 ?? '', /^fd00:10:244::[0-9a-f]+$/, 'node 0: fd00:10:244:0::/64');
  t.regex(b.ip6 ?? '', /^fd00:10:244:1::[0-9a-f]+$/);
  const addrs = await globalAddrs(a);
  t.deepEqual(addrs.map((x) => x.family).sort(), ['inet', 'inet6']);
  t.false(addrs.some((x) => x.tentative), 'no address waits for duplicate address detection');
  await echo(b, 8080);
  const ping = await a.exec('ping', ['-6', '-c', '1', '-W', '3', b.ip6 as string], { reject: false, timeout: 10_000 });
  t.is(ping.exitCode, 0, `ICMPv6 across nodes: ${String(ping.stdout)}${String(ping.stderr)}`);
  const v6 = await connect(a, b.ip6 as string, 8080);
  t.true(v6.ok, `TCP over IPv6 across nodes: ${v6.out}`);
  const v4 = await connect(a, b.ip, 8080);
  t.true(v4.ok, `TCP over IPv4 still: ${v4.out}`);
  const [pod] = (await tb.workloads.read(podFileName('plain', 'a'))) as { status?: { podIP?: string; podIPs?: { ip: string }[] } }[];
  t.is(pod?.status?.podIP, a.ip);
  t.deepEqual(pod?.status?.podIPs?.map((p) => p.ip), a.ips, 'the Pod object lists both addresses');

  // Enrolment with several addresses: the agent records both (IPv6 is not captured yet: refused in the pod, warned).
  await tb.setNamespace('app', AMBIENT);
  const c = await tb.addPod({ node: 0, namespace: 'app', name: 'c' });
  const view = await agentPod(tb, c);
  t.is(view?.state, 'enrolled');
  t.is(c.ips.length, 2);
  t.deepEqual(view?.ips, c.ips, 'both families recorded');
  // What the record means: IPv4 is captured (c reaches b through the agent), IPv6 TCP is refused in the pod (not carried).
  const viaAgent = await connect(c, b.ip, 8080);
  t.true(viaAgent.ok, `the enrolled pod's IPv4 TCP still works: ${viaAgent.out}`);
  const conns = await refusalsAndOutbound(tb);
  t.true(conns.outbound > 0, `the agent carried it (outbound connections ${conns.outbound})`);
  const v6c = await connect(c, b.ip6 as string, 8080);
  t.false(v6c.ok, `the enrolled pod's IPv6 TCP is refused, not sent around the mesh: ${v6c.out}`);
  t.log(`addresses: a ${a.ips.join(' ')}, b ${b.ips.join(' ')}, enrolled c ${c.ips.join(' ')}`);
});

netnsTest.serial('IPv6-only testbed: pods have only IPv6 and reach another node\'s pod; with --capture-ipv6 false an IPv6-only pod is refused at ADD', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, ipFamilies: ['ipv6'], agentArgs: ['--capture-ipv6', 'false'] });
  const [a, b] = await plainPods(tb);
  t.true(a.ip === a.ip6, 'the primary address is IPv6');
  t.is(a.ip4, undefined);
  t.deepEqual((await globalAddrs(a)).map((x) => `${x.family} ${x.tentative}`), ['inet6 false']);
  await echo(b, 8080);
  const ping = await a.exec('ping', ['-6', '-c', '1', '-W', '3', b.ip], { reject: false, timeout: 10_000 });
  t.is(ping.exitCode, 0, `ICMPv6 across nodes: ${String(ping.stdout)}${String(ping.stderr)}`);
  const v6 = await connect(a, b.ip, 8080);
  t.true(v6.ok, `TCP over IPv6 across nodes: ${v6.out}`);

  await tb.setNamespace('app', AMBIENT);
  const err = await t.throwsAsync(tb.addPod({ node: 0, namespace: 'app', name: 'v6' }), { instanceOf: CniPluginError });
  const text = `${err?.cniError?.msg ?? ''} ${err?.cniError?.details ?? ''}`;
  t.regex(text, /IPv6 only and the iptables backend captures IPv4 only/, 'refused by the capture-family check, naming why');
  const pods = await agentPods(tb, 0);
  t.false(pods.some((p) => p.namespace === 'app' && p.name === 'v6'), 'the agent kept no record of it');
  t.is((await refusalsAndOutbound(tb)).refusals, 1, 'counted once in ambient_node_capture_family_refusals_total');

  // Late enrolment: an IPv6-only pod labelled after it started is refused the same way, never recorded as enrolled,
  // not annotated pending, and it keeps its (plain) IPv6 as before it was labelled; counted once, not retried.
  const late = await tb.addPod({ node: 0, namespace: 'plain', name: 'late' });
  t.is((await agentPod(tb, late))?.state, 'skipped');
  await tb.setPodLabels(late, AMBIENT);
  const refused = await eventually(() => refusalsAndOutbound(tb), (r) => r.refusals >= 2, 20_000);
  t.is(refused.refusals, 2, 'the late enrolment was refused by the capture-family check');
  const rec = await agentPod(tb, late);
  t.is(rec?.state, 'skipped', 'never enrolled');
  t.regex(rec?.reason ?? '', /refused: .*IPv6 only and the iptables backend captures IPv4 only/);
  const stillPlain = await connect(late, b.ip, 8080);
  t.true(stillPlain.ok, `the refused pod keeps working outside the mesh: ${stillPlain.out}`);
});

/** The agent's (node 0) capture-family refusals and connections it opened for pod `c`, from its metrics. */
async function refusalsAndOutbound(tb: Testbed): Promise<{ refusals: number; outbound: number }> {
  const text = (await adminHttp(tb, 0, 'GET', 'http://127.0.0.1:15020/metrics')).body;
  const refusals = Number(/^ambient_node_capture_family_refusals_total (\d+)$/m.exec(text)?.[1] ?? NaN);
  let outbound = 0;
  for (const m of text.matchAll(/^istio_tcp_connections_opened_total\{[^}]*source_workload="c"[^}]*\} (\d+)$/gm)) outbound += Number(m[1]);
  return { refusals, outbound };
}
