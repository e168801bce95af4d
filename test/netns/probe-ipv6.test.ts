// Kubelet probes over IPv6 on a dual-stack testbed (issue 14): the node SNATs its own TCP to an enrolled pod's IPv6
// address to fd16:9254:7127:1337:ffff:ffff:ffff:ffff (ip6tables + ipset, or the nft host table), the pod lets it through
// to the app, other IPv6 TCP into the pod is still refused, the app cannot dial out to the probe address, and DEL takes
// the address out of the node's set. The agents run with --capture-ipv6 false here (with IPv6 captured, the probe is in
// source-ipv6.test.ts).
import { PROBE_SNAT_IP6 } from '../../agent/src/redirect/constants.js';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { waitForListener, type RedirectMode } from '../testbed/index.js';
import { AMBIENT, agentPod, ebpfCounters, holds, probeSet, startEcho } from './helpers.js';

/** Where the node listens on the probe address for the egress check (a port nothing else in the node netns uses). */
const PROBE_PORT = 9098;

for (const mode of ['iptables', 'nftables', 'ebpf'] as RedirectMode[]) {
  netnsTest.serial(`[${mode}] an IPv6 kubelet-style connection from the node reaches an enrolled dual-stack pod as ${PROBE_SNAT_IP6}; another pod's IPv6 is refused, and the app's own SYN to the probe address too`, async (t) => {
    const tb = await withTestbed(t, { nodes: 1, redirectMode: mode, ipFamilies: ['ipv4', 'ipv6'], agentArgs: ['--capture-ipv6', 'false'] });
    await tb.setNamespace('app', AMBIENT);
    await tb.setNamespace('plain', {});
    await tb.writeWorkload('strict.yaml', { apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'app' }, spec: { mtls: { mode: 'STRICT' } } });
    const [pod, other] = await tb.addPods([
      { node: 0, namespace: 'app', name: 'productpage' },
      { node: 0, namespace: 'plain', name: 'other' },
    ]);
    if (!pod || !other) throw new Error('pods missing');
    const ip6 = pod.ip6;
    if (!ip6) throw new Error('the dual-stack pod has no IPv6 address');
    t.is((await agentPod(tb, pod))?.state, 'enrolled');
    const set6 = await probeSet(tb, 0, mode, 6);
    t.true(holds(set6, ip6), `the pod's IPv6 address ${ip6} is in the node's v6 probe set: ${set6}`);
    await startEcho(pod, 9080); // ncat listens on both families

    const probe = await tb.nodeExec(0, 'ncat', ['-6', '--no-shutdown', '-w', '3', ip6, '9080'], { input: 'probe\n', reject: false });
    t.regex(String(probe.stdout), new RegExp(`pong:probe from ${PROBE_SNAT_IP6}$`, 'm'), `the IPv6 probe reaches the app, SNATed: ${String(probe.stdout)}${String(probe.stderr)}`);
    const probe4 = await tb.nodeExec(0, 'ncat', ['--no-shutdown', '-w', '3', pod.ip, '9080'], { input: 'probe\n', reject: false });
    t.regex(String(probe4.stdout), /pong:probe from 169\.254\.7\.127$/m, 'the IPv4 probe still works beside it');
    const stats = (await agentPod(tb, pod))?.stats;
    t.truthy(stats, 'the agent reports the pod');
    t.is(stats?.inbound.opened, 0, 'both went straight to the app, not through the agent');

    const sneak = await other.exec('ncat', ['-6', '--no-shutdown', '-w', '3', ip6, '9080'], { input: 'sneak\n', timeout: 10_000, reject: false });
    const sneakOut = `${String(sneak.stdout)}${String(sneak.stderr)}`;
    t.notRegex(sneakOut, /pong:sneak/, 'another pod\'s IPv6 TCP does not reach the app');
    t.regex(sneakOut, /refused/i, `it is refused, as before: ${sneakOut}`);

    // The probe address is no way out: the enrolled app's own SYN to it is refused in the pod (ebpf: probe6 passes only
    // a reply to the probe), though the node answers on that address here, so a SYN that left the pod would connect.
    await tb.nodeExec(0, 'ip', ['-6', 'addr', 'add', `${PROBE_SNAT_IP6}/128`, 'dev', 'lo', 'nodad']);
    const nodeListener = tb.nodeSpawn(0, 'ncat', ['-6', '-l', '-k', PROBE_SNAT_IP6, String(PROBE_PORT), '--sh-exec', 'echo node'], { reject: false, timeout: 30_000 });
    try {
      await waitForListener(pod.node.netnsName, PROBE_PORT, 5000);
      const control = await other.exec('ncat', ['-6', '--recv-only', '-w', '3', PROBE_SNAT_IP6, String(PROBE_PORT)], { timeout: 10_000, reject: false });
      t.regex(String(control.stdout), /^node$/m, `a pod outside the mesh reaches the node on that address: ${String(control.stdout)}${String(control.stderr)}`);
      const d0 = mode === 'ebpf' ? ebpfCounters(pod).drop_ipv6 : 0;
      const out = await pod.exec('ncat', ['-6', '--recv-only', '-w', '3', PROBE_SNAT_IP6, String(PROBE_PORT)], { timeout: 10_000, reject: false });
      t.notRegex(String(out.stdout), /node/, 'the enrolled pod\'s SYN to the probe address never reached the node');
      t.regex(String(out.stderr), /refused/i, `refused at once in the pod: ${String(out.stderr)}`);
      if (mode === 'ebpf') t.true(ebpfCounters(pod).drop_ipv6 > d0, 'counted as an IPv6 refusal by the programs');
    } finally {
      nodeListener.kill();
      await nodeListener;
    }

    const rules = (await tb.agent(0).request('GET', `/v1/rules?pod=${encodeURIComponent('app/productpage')}`)).body as { node: { ok: boolean; actual: string[] } };
    t.true(rules.node.ok, `the node rules of both families read back in sync: ${JSON.stringify(rules.node)}`);
    if (mode !== 'nftables') {
      t.true(rules.node.actual.some((l) => l.startsWith('ip6tables: -A AMBIENT_POSTRT ') && l.endsWith(`--to-source ${PROBE_SNAT_IP6}`)), JSON.stringify(rules.node.actual));
      t.true(rules.node.actual.includes('ip6tables: ipset ambient-node-probes-v6'));
    } else {
      t.true(rules.node.actual.some((l) => l.includes(`ip6 daddr @probes-v6 snat ip6 to ${PROBE_SNAT_IP6}`)), JSON.stringify(rules.node.actual));
    }

    await tb.deletePod(pod);
    t.false(holds(await probeSet(tb, 0, mode, 6), ip6), 'DEL took the address out of the v6 probe set');
  });
}
