// IPv6 capture (--capture-ipv6; iptables, nftables, ebpf), dual-stack and IPv6-only: mesh IPv6 is HBONE to [server]:15008 on
// the wire, plaintext IPv6 obeys PeerAuthentication, IPv4 still works, a killed agent means IPv6 refused (never bypassed),
// an IPv6-only pod is enrolled, and a take-over hands the IPv6 listeners on while IPv6 connections keep working.
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { waitForListener, type RedirectMode, type Testbed, type TestbedPod } from '../testbed/index.js';
import { captureFabric, captureNodeLink, type CaptureResult } from './capture-wire.js';
import { AMBIENT, agentPod, ask, ebpfCounters, eventually, hostVeth, ip6, listeningAddresses, startEcho } from './helpers.js';
import { ECHO_PORT, ECHO_SERVER, PY, findLog, startConnectLoop, successorOf } from '../testbed/takeover.js';

const MODES: RedirectMode[] = ['iptables', 'nftables', 'ebpf'];
const MARKER = 'AMBIENT-V6-SECRET-MARKER-51c2';
/** Where the node listens for the pod's link-local connection attempt (a port nothing else in the node netns uses). */
const LL_PORT = 9097;

/** The IPv6 flows of a capture that carried payload, by their server end (`[address]:port`). */
function v6Servers(wire: CaptureResult): string[] {
  return [...new Set([...wire.payloadFlows].map((f) => f.slice(f.indexOf('>') + 1)).filter((s) => s.startsWith('[')))];
}

/**
 * A dual-stack cluster of two nodes whose agents run with --capture-ipv6 (and `args`): a mesh client `sleep` (node 0), a
 * mesh echo server on 9080 (node 1) and a non-mesh `outsider` (node 0).
 */
async function dualStack(t: ExecutionContext, mode: RedirectMode, args: string[]): Promise<{ tb: Testbed; sleep: TestbedPod; server: TestbedPod; outsider: TestbedPod }> {
  const tb = await withTestbed(t, { nodes: 2, ipFamilies: ['ipv4', 'ipv6'], redirectMode: mode, agentArgs: ['--capture-ipv6', ...args] });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('legacy', {});
  const [sleep, server, outsider] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 1, namespace: 'app', name: 'productpage', serviceAccount: 'bookinfo-productpage' },
    { node: 0, namespace: 'legacy', name: 'outsider' },
  ]);
  if (!sleep || !server || !outsider) throw new Error('pods missing');
  await startEcho(server, 9080);
  return { tb, sleep, server, outsider };
}

/** The namespace-wide PeerAuthentication of `app`. */
async function peerAuthentication(tb: Testbed, mode: 'STRICT' | 'PERMISSIVE'): Promise<void> {
  await tb.writeWorkload('pa-app.yaml', {
    apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication',
    metadata: { name: 'app', namespace: 'app' },
    spec: { mtls: { mode } },
  });
}

for (const mode of MODES) {
  netnsTest.serial(`[${mode}] --capture-ipv6: mesh IPv6 is HBONE on [server]:15008, plaintext IPv6 by PeerAuthentication, IPv4 still works, agent down = refused`, async (t) => {
    const { tb, sleep, server: productpage, outsider } = await dualStack(t, mode, []);
    const server6 = ip6(productpage);

    const cap = await captureFabric(tb, `v6-${mode}`);
    const mesh6 = await ask(sleep, server6, 9080, MARKER);
    t.true(mesh6.ok, `mesh client -> enrolled server over IPv6: ${mesh6.output}`);
    t.log(`the app's peer for an IPv6 mesh connection: ${mesh6.output}`);
    t.true(mesh6.output.endsWith(`from ${ip6(sleep)}`), 'IPv6 source preserved (default on): the app sees the mesh client\'s pod IPv6 address');
    const wire = await cap.stop();
    t.deepEqual([...wire.payloadPorts], [15008], `only 15008 carried payload, flows ${[...wire.flows].join(' ')}`);
    t.deepEqual(v6Servers(wire), [`[${server6}]:15008`], 'the tunnel is IPv6, to the server pod\'s IPv6 address');
    t.false(wire.raw.includes(Buffer.from(MARKER)), 'the app\'s bytes never appear on the wire');
    t.true(wire.clientHellos.length >= 1, 'a TLS ClientHello was seen');
    const src = await agentPod(tb, sleep);
    const dst = await agentPod(tb, productpage);
    t.true((src?.stats?.outbound.hbone ?? 0) >= 1, 'the source agent tunnelled it');
    t.true((dst?.stats?.inbound.hbone ?? 0) >= 1, 'the destination agent received it on 15008');

    const mesh4 = await ask(sleep, productpage.ip, 9080, 'v4');
    t.true(mesh4.ok, `IPv4 on the same pods still works: ${mesh4.output}`);
    t.true(mesh4.output.endsWith(`from ${sleep.ip}`), `over IPv4 the app sees the client: ${mesh4.output}`);

    const plain6 = await ask(outsider, server6, 9080, 'permissive');
    t.true(plain6.ok, `PERMISSIVE (default): a non-mesh client over IPv6 is admitted: ${plain6.output}`);
    await peerAuthentication(tb, 'STRICT');
    const refused = await eventually(() => ask(outsider, server6, 9080, 'strict'), (a) => !a.ok, 6000);
    t.false(refused.ok, `STRICT: plaintext over IPv6 refused: ${refused.output}`);
    t.false((await ask(outsider, productpage.ip, 9080, 'strict4')).ok, 'and over IPv4');
    t.true((await ask(sleep, server6, 9080, 'mesh-strict')).ok, 'a mesh client over IPv6 still passes under STRICT');

    // Agents killed: refused both ways over IPv6, never carried around the mesh (and never in clear on the wire). Back
    // to PERMISSIVE first, so that the inbound refusal is the agent's absence, not the policy.
    await peerAuthentication(tb, 'PERMISSIVE');
    t.true((await eventually(() => ask(outsider, server6, 9080, 'permissive-again'), (a) => a.ok, 6000)).ok, 'PERMISSIVE again');
    const down = await captureFabric(tb, `v6-${mode}-down`);
    await tb.agent(0).kill('SIGKILL');
    const out = await ask(sleep, server6, 9080, `${MARKER}-out`);
    t.false(out.ok, `source agent down: the enrolled pod's outbound IPv6 is refused: ${out.output}`);
    await tb.agent(1).kill('SIGKILL');
    const inb = await ask(outsider, server6, 9080, `${MARKER}-in`);
    t.false(inb.ok, `destination agent down: inbound IPv6 to the enrolled pod is refused: ${inb.output}`);
    const downWire = await down.stop();
    t.false(downWire.raw.includes(Buffer.from(`${MARKER}-out`)), 'nothing of the refused outbound connection crossed');
    t.false(downWire.raw.includes(Buffer.from(`${MARKER}-in`)), 'nothing of the refused inbound connection crossed');
  });

  netnsTest.serial(`[${mode}] --capture-ipv6: an IPv6-only pod is enrolled and reaches a mesh pod over HBONE`, async (t) => {
    const tb = await withTestbed(t, { nodes: 2, ipFamilies: ['ipv6'], redirectMode: mode, agentArgs: ['--capture-ipv6'] });
    await tb.setNamespace('app', AMBIENT);
    const [client, server] = await tb.addPods([
      { node: 0, namespace: 'app', name: 'client', serviceAccount: 'client' },
      { node: 1, namespace: 'app', name: 'server', serviceAccount: 'server' },
    ]);
    if (!client || !server) throw new Error('pods missing');
    t.is((await agentPod(tb, client))?.state, 'enrolled', 'ADD succeeded for an IPv6-only pod');
    t.deepEqual((await agentPod(tb, client))?.ips, [ip6(client)]);
    await startEcho(server, 9080);
    const cap = await captureFabric(tb, `v6only-${mode}`);
    const r = await ask(client, ip6(server), 9080, MARKER);
    t.true(r.ok, r.output);
    const wire = await cap.stop();
    t.deepEqual(v6Servers(wire), [`[${ip6(server)}]:15008`]);
    t.false(wire.raw.includes(Buffer.from(MARKER)));
    t.true(((await agentPod(tb, client))?.stats?.outbound.hbone ?? 0) >= 1);
  });
}

/** The ebpf programs' counters in a pod that matter here (ebpfCounters throws when none are attached). */
function counters(pod: TestbedPod): { in: number; out: number; v6: number } {
  const c = ebpfCounters(pod);
  return { in: c.in_assigned, out: c.out_assigned, v6: c.drop_ipv6 };
}

/** The link-local address of an interface, as `ip -6 addr` shows it (no prefix length). */
function linkLocal(addrShow: string): string {
  const m = /inet6 (fe80:[0-9a-f:]+)\/64 scope link/.exec(addrShow);
  if (!m?.[1]) throw new Error(`no link-local address in: ${addrShow}`);
  return m[1];
}

netnsTest.serial('[ebpf] --capture-ipv6: IPv6 goes through the programs\' IPv6 assignment; TCP to or from the pod\'s link-local address is refused, never carried', async (t) => {
  const { tb, sleep, server } = await dualStack(t, 'ebpf', []);
  const [s0, c0] = [counters(server), counters(sleep)];
  t.true((await ask(sleep, ip6(server), 9080, 'assigned')).ok);
  const [s1, c1] = [counters(server), counters(sleep)];
  t.true(c1.out > c0.out, `the client's SYN was assigned to [::1]:15001 (${c0.out} -> ${c1.out})`);
  t.true(s1.in === s0.in, 'HBONE to 15008 is not reassigned');

  // Inbound to the pod's link-local address (from the node, through the bridge the pod's veth is a port of): refused.
  const veth = await hostVeth(tb, server);
  const bridge = /master (\S+)/.exec(String((await tb.nodeExec(server.node.index, 'ip', ['-o', 'link', 'show', 'dev', veth])).stdout))?.[1];
  if (!bridge) throw new Error(`${veth} has no bridge`);
  const ll = linkLocal(String((await server.exec('ip', ['-6', 'addr', 'show', 'dev', server.ifname])).stdout));
  const inLl = await tb.nodeExec(server.node.index, 'ncat', ['--no-shutdown', '-w', '3', `${ll}%${bridge}`, '9080'], { input: 'll-in\n', timeout: 10_000, reject: false });
  t.false(String(inLl.stdout).includes('pong:ll-in'), `a connection to the pod's link-local address is refused: ${String(inLl.stdout)}${String(inLl.stderr)}`);
  const s2 = counters(server);
  t.true(s2.v6 > s1.v6, `refused by the ingress program (drop_ipv6 ${s1.v6} -> ${s2.v6})`);
  t.is(s2.in, s1.in, 'not assigned to the agent');

  // Outbound from the pod's link-local address (to the node's bridge): refused by the egress program, inside the pod. The
  // node listens on the port, so a SYN that left the pod would be answered and the connection made; the capture on the
  // pod's host-side veth shows none left, while the pod's link-local ICMPv6 (which the programs pass) does cross it.
  const nodeLl = linkLocal(String((await tb.nodeExec(server.node.index, 'ip', ['-6', 'addr', 'show', 'dev', bridge])).stdout));
  void tb.nodeSpawn(server.node.index, 'ncat', ['-6', '-l', '-k', String(LL_PORT), '--sh-exec', 'echo node']).catch(() => undefined);
  await waitForListener(server.node.netnsName, LL_PORT, 5000);
  const self = await tb.nodeExec(server.node.index, 'ncat', ['--recv-only', '-w', '3', `${nodeLl}%${bridge}`, String(LL_PORT)], { input: '', timeout: 10_000, reject: false });
  t.regex(String(self.stdout), /^node$/m, `the node answers on its link-local address: ${String(self.stderr)}`);
  const cap = await captureNodeLink(tb, server.node.index, veth, 'v6-ll-egress');
  const ping = await server.exec('ping', ['-6', '-c', '1', '-W', '3', `${nodeLl}%${server.ifname}`], { timeout: 10_000, reject: false });
  t.is(ping.exitCode, 0, `the pod reaches the node's link-local address (ICMPv6 is not refused): ${String(ping.stdout)}${String(ping.stderr)}`);
  const outLl = await server.exec('ncat', ['--no-shutdown', '-w', '3', `${nodeLl}%${server.ifname}`, String(LL_PORT)], { input: 'll-out\n', timeout: 10_000, reject: false });
  const wire = await cap.stop();
  t.not(outLl.exitCode, 0, `not connected: ${String(outLl.stdout)}`);
  t.regex(String(outLl.stderr), /refused/i, `refused at once by the RST made in the pod (the node would have accepted): ${String(outLl.stderr)}`);
  t.true(counters(server).v6 > s2.v6, 'counted as an IPv6 refusal');
  const fromLl = async (filter: string): Promise<number> => {
    const r = await execa('tshark', ['-r', wire.file, '-Y', `ipv6.src == ${ll} && ${filter}`, '-T', 'fields', '-e', 'frame.number']);
    return r.stdout.split('\n').filter((l) => l.trim() !== '').length;
  };
  t.true((await fromLl('icmpv6.type == 128')) >= 1, 'the capture sees the pod\'s link-local traffic leave (its echo request)');
  t.is(await fromLl('tcp'), 0, 'no TCP segment from the pod\'s link-local address left the pod: the egress program dropped the SYN');

  // The pod's own IPv6 address still works both ways after that.
  t.true((await ask(sleep, ip6(server), 9080, 'after')).ok);
});

const TAKEN_OVER = 'take-over complete: socket published, predecessor told to stop accepting';
/** The agent's listeners in a dual-stack pod with --capture-ipv6: one socket on each of these, none other on their ports. */
const DUAL_STACK_LISTENERS = ['0.0.0.0:15006', '0.0.0.0:15008', '127.0.0.1:15001', '[::1]:15001', '[::]:15006', '[::]:15008'];

for (const mode of MODES) {
  netnsTest.serial(`[${mode}] --capture-ipv6 take-over of both nodes' agents while IPv6 connections arrive every 10 ms (mesh and plaintext): none fails, the successors hold the pods' IPv6 listeners (one each), IPv6 mesh stays HBONE on the wire`, async (t) => {
    const { tb, sleep, server: web, outsider } = await dualStack(t, mode, ['--drain-seconds', '1']);
    const [web6, sleep6, outsider6] = [ip6(web), ip6(sleep), ip6(outsider)];
    void web.spawn(PY, [ECHO_SERVER, String(ECHO_PORT), '::']).catch(() => undefined);
    await web.waitForPort(ECHO_PORT);
    const cap = await captureFabric(tb, `v6-takeover-${mode}`);
    t.true((await ask(sleep, web6, 9080, `${MARKER}-before`)).ok, 'IPv6 mesh before');

    // New IPv6 connections every 10 ms, mesh -> mesh and non-mesh -> mesh, across a take-over of the destination's
    // agent (its pod's inbound listeners) and then of the source's (its pod's outbound ones).
    const mesh = startConnectLoop(tb, sleep, web6, `v6-mesh-${mode}`, 10);
    const plain = startConnectLoop(tb, outsider, web6, `v6-plain-${mode}`, 10);
    for (const node of [1, 0]) {
      const old = tb.agent(node);
      const exited = old.exited;
      if (!exited) throw new Error(`node ${node}'s agent is not running`);
      const next = successorOf(old, `v6-${mode}`);
      t.teardown(async () => {
        await next.stop(5000);
      });
      await next.start();
      await eventually(async () => findLog(await next.logs({ currentRun: true }), TAKEN_OVER), (r) => r !== undefined, 60_000);
      const tally = findLog(await next.logs(), 'listeners from the running agent');
      t.is(tally?.plan, 'handed', `node ${node}: ${JSON.stringify(tally)}`);
      t.is(tally?.accepted, 6, `node ${node}: three listeners per family of the one enrolled pod on the node, all checked and kept`);
      t.is(tally?.refused, 0, `node ${node}: none refused`);
      const exit = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 30_000))]);
      t.deepEqual(exit, { code: 0, signal: null }, `node ${node}: the predecessor drained and exited`);
    }
    await new Promise((r) => setTimeout(r, 500));
    const [meshResult, plainResult] = await Promise.all([mesh.stop(), plain.stop()]);
    t.log(`[${mode}] IPv6 mesh -> mesh: ${meshResult.ok} ok, ${meshResult.fails} failed ${meshResult.errors.join('; ')}`);
    t.log(`[${mode}] IPv6 non-mesh -> mesh: ${plainResult.ok} ok, ${plainResult.fails} failed ${plainResult.errors.join('; ')}`);
    t.is(meshResult.fails, 0, 'no new IPv6 mesh connection failed across the take-overs');
    t.is(plainResult.fails, 0, 'no new IPv6 plaintext connection failed across the take-overs');
    t.true(meshResult.ok > 50 && plainResult.ok > 50, 'the loops ran');

    for (const pod of [web, sleep]) {
      const agentOwn = (await listeningAddresses(pod)).filter((a) => /:1500[168]$/.test(a)).sort();
      t.deepEqual(agentOwn, DUAL_STACK_LISTENERS, `${pod.key}: one listener per address and port, IPv6 ones included`);
    }
    const mesh6 = await ask(sleep, web6, 9080, `${MARKER}-after`);
    t.true(mesh6.ok, `IPv6 mesh after the take-over: ${mesh6.output}`);
    const plain6 = await ask(outsider, web6, 9080, 'after-plain');
    t.true(plain6.ok, `IPv6 plaintext (PERMISSIVE) after the take-over: ${plain6.output}`);
    t.true((await ask(sleep, web.ip, 9080, 'after4')).ok, 'IPv4 mesh after the take-over');

    // On the wire, the mesh client's IPv6 went only in HBONE to [server]:15008; in clear only the non-mesh client's.
    const wire = await cap.stop();
    const v6Flows = [...wire.payloadFlows].filter((f) => f.includes('>[')).sort();
    t.deepEqual(v6Flows, [`${outsider6}>[${web6}]:9080`, `${outsider6}>[${web6}]:${ECHO_PORT}`, `${sleep6}>[${web6}]:15008`].sort(), `IPv6 flows with payload: ${v6Flows.join(' ')}`);
    t.false(wire.raw.includes(Buffer.from(MARKER)), 'the mesh app\'s bytes never appear on the wire');
    t.true(wire.clientHellos.length >= 1, 'a TLS ClientHello was seen');
  });
}
