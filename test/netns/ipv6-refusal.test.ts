// With --capture-ipv6 false (IPv6 capture is on by default), an enrolled pod's IPv6 TCP is refused both ways (iptables: ip6tables rules beside the IPv4
// ones; nftables: the inet table; ebpf: the tc programs answer a SYN with a RST and drop the rest), never carried around
// the mesh, and refused at once (a reset, not a timeout); the rest of IPv6
// (ICMPv6, neighbour discovery) still works, and a pod outside the mesh keeps its IPv6.
import { podCounters } from '../../agent/src/redirect/ebpf.js';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import type { RedirectMode, TestbedPod } from '../testbed/index.js';
import { AMBIENT, NFT, agentPod, eventually } from './helpers.js';

/** The ebpf programs' IPv6 drop counter in a pod (-1 when the attached build has none). */
function ipv6Drops(pod: TestbedPod): number {
  return podCounters(pod.netnsPath, pod.ifname)?.drop_ipv6 ?? -1;
}

/** A ULA address on the pod's interface (the testbed's CNI gives IPv4 only); nodad: usable at once. */
async function addV6(pod: TestbedPod, addr: string): Promise<void> {
  await pod.exec('ip', ['-6', 'addr', 'add', `${addr}/64`, 'dev', pod.ifname, 'nodad']);
}

async function v6Connect(client: TestbedPod, addr: string, port: number): Promise<{ ok: boolean; out: string }> {
  const r = await client.exec('ncat', ['-6', '--no-shutdown', '-w', '3', addr, String(port)], { input: 'hi\n', timeout: 10_000, reject: false });
  const out = `${String(r.stdout)}${String(r.stderr)}`.trim();
  return { ok: r.exitCode === 0 && out.includes('v6:hi'), out };
}

for (const mode of ['iptables', 'nftables', 'ebpf'] as RedirectMode[]) {
  netnsTest.serial(`[${mode}] with --capture-ipv6 false an enrolled pod's IPv6 TCP is refused both ways; a plain pod keeps IPv6`, async (t) => {
    const tb = await withTestbed(t, { nodes: 1, redirectMode: mode, agentArgs: ['--capture-ipv6', 'false'] });
    await tb.setNamespace('app', AMBIENT);
    await tb.setNamespace('plain', {});
    const [sleep, web, other] = await tb.addPods([
      { node: 0, namespace: 'app', name: 'sleep' },
      { node: 0, namespace: 'plain', name: 'web' },
      { node: 0, namespace: 'plain', name: 'other' },
    ]);
    if (!sleep || !web || !other) throw new Error('pods missing');
    await addV6(sleep, 'fd00:db8::2');
    await addV6(web, 'fd00:db8::3');
    await addV6(other, 'fd00:db8::4');
    for (const [p, port] of [[web, 8080], [sleep, 9090]] as const) {
      void p.spawn('ncat', ['-6', '-l', '-k', String(port), '--sh-exec', 'read l; echo "v6:$l"']).catch(() => undefined);
      await p.waitForPort(port);
    }
    const control = await v6Connect(other, 'fd00:db8::3', 8080);
    t.true(control.ok, `IPv6 works between pods outside the mesh: ${control.out}`);
    const ping = await sleep.exec('ping', ['-6', '-c', '1', '-W', '3', 'fd00:db8::3'], { reject: false, timeout: 10_000 });
    t.is(ping.exitCode, 0, `ICMPv6 (and neighbour discovery) still work for the enrolled pod: ${String(ping.stdout)}${String(ping.stderr)}`);
    const d0 = mode === 'ebpf' ? ipv6Drops(sleep) : 0;
    const out = await v6Connect(sleep, 'fd00:db8::3', 8080);
    t.false(out.ok, `outbound IPv6 from the enrolled pod is refused: ${out.out}`);
    t.regex(out.out, /refused/i, 'at once, with a reset (the app can fall back to IPv4 without waiting for a timeout)');
    const d1 = mode === 'ebpf' ? ipv6Drops(sleep) : 0;
    const inb = await v6Connect(web, 'fd00:db8::2', 9090);
    t.false(inb.ok, `inbound IPv6 to the enrolled pod is refused: ${inb.out}`);
    t.regex(inb.out, /refused/i, 'the peer is reset at once too');
    const d2 = mode === 'ebpf' ? ipv6Drops(sleep) : 0;
    t.is((await agentPod(tb, sleep))?.state, 'enrolled');
    // `ambient-node rules` reads the pod's ip6tables with every backend: iptables' own IPv6 rules, none for the others.
    const rules = (await tb.agent(0).request('GET', `/v1/rules?pod=${encodeURIComponent('app/sleep')}`)).body as { attachments: { ip6tables: string[] }[] };
    const v6rules = rules.attachments[0]?.ip6tables;
    t.true(Array.isArray(v6rules), 'the report carries the ip6tables read-back');
    if (mode === 'iptables') t.true(v6rules?.includes('ip6tables: -A AMBIENT_OUTPUT -p tcp -j REDIRECT --to-ports 15001'), JSON.stringify(v6rules));
    else t.deepEqual(v6rules, [], 'none of ours in ip6tables');
    if (mode === 'ebpf') {
      t.true(d0 >= 0, 'the attached programs count IPv6 drops');
      t.true(d1 > d0, `the outbound SYN was refused at egress (drop_ipv6 ${d0} -> ${d1})`);
      t.true(d2 > d1, `the inbound SYN was refused at ingress (drop_ipv6 ${d1} -> ${d2})`);
      const view = (await tb.agent(0).request('GET', `/v1/rules?pod=${encodeURIComponent('app/sleep')}`)).body as { attachments: { ok: boolean; actual: string[] }[] };
      t.true(view.attachments[0]?.ok, 'rules in sync');
      t.true(view.attachments[0]?.actual.some((l) => / drop_ipv6=\d+/.test(l)), 'the read-back shows the IPv6 drop counter');
    }
    if (mode === 'iptables') {
      const rules = String((await sleep.exec('ip6tables-save', ['-t', 'nat'])).stdout);
      t.regex(rules, /-A AMBIENT_OUTPUT -p tcp -j REDIRECT --to-ports 15001/);
      const view = (await tb.agent(0).request('GET', `/v1/rules?pod=${encodeURIComponent('app/sleep')}`)).body as { attachments: { ok: boolean; expected: string[] }[] };
      t.true(view.attachments[0]?.ok, 'in sync, IPv6 lines included');
      t.true(view.attachments[0]?.expected.some((l) => l.startsWith('ip6tables: -A AMBIENT_OUTPUT')));
    }
    await tb.deletePod(sleep);
  });
}

for (const mode of ['iptables', 'nftables', 'ebpf'] as RedirectMode[]) {
  netnsTest.serial(`[${mode}] an IPv6-only pod enrolled with IPv6 capture and re-adopted with --capture-ipv6 false stays enrolled and refused, said once, not repaired in a loop`, async (t) => {
    const tb = await withTestbed(t, { nodes: 1, ipFamilies: ['ipv6'], redirectMode: mode, agentArgs: ['--repair-interval-ms', '300'] });
    await tb.setNamespace('app', AMBIENT);
    await tb.setNamespace('plain', {});
    const [v6, web] = await tb.addPods([
      { node: 0, namespace: 'app', name: 'v6' },
      { node: 0, namespace: 'plain', name: 'web' },
    ]);
    if (!v6 || !web) throw new Error('pods missing');
    t.is((await agentPod(tb, v6))?.state, 'enrolled', 'IPv6 capture (the default) enrols an IPv6-only pod');
    void web.spawn('ncat', ['-6', '-l', '-k', '8080', '--sh-exec', 'read l; echo "v6:$l"']).catch(() => undefined);
    await web.waitForPort(8080);
    const carried = await v6Connect(v6, web.ip, 8080);
    t.true(carried.ok, `carried while IPv6 is captured: ${carried.out}`);

    const agent = tb.agent(0);
    await agent.kill();
    agent.spec.extraArgs.push('--capture-ipv6', 'false');
    await agent.start();
    await new Promise((r) => setTimeout(r, 2000)); // several repair passes (every 300 ms)
    t.is((await agentPod(tb, v6))?.state, 'enrolled', 'never dropped from the mesh by the family check');
    const refused = await v6Connect(v6, web.ip, 8080);
    t.false(refused.ok, `its IPv6 TCP is refused now, not carried and not sent in clear: ${refused.out}`);
    t.regex(refused.out, /refused/i);
    const logs = await agent.logs({ currentRun: true });
    t.is(logs.filter((l) => l.msg.includes('kept with its rules and no listener')).length, 1, 'said once');
    t.deepEqual(logs.filter((l) => /repair failed|re-adopting pod failed|capture drifted/.test(l.msg)).map((l) => l.msg), [], 'no repair loop');
    type Report = { attachments: { missing: string[]; unexpected: string[]; listening: boolean }[] };
    const report = async (): Promise<Report['attachments'][number] | undefined> =>
      ((await agent.request('GET', `/v1/rules?pod=${encodeURIComponent('app/v6')}`)).body as Report).attachments[0];
    const rules = await report();
    t.deepEqual(rules?.missing, [], 'its rules are in place');
    t.deepEqual(rules?.unexpected, []);
    t.false(rules?.listening, 'and no listener');

    // The repair loop does run for it: rules taken away come back, through the same kept-refused path, said no second time.
    const flush = mode === 'iptables' ? ['ip6tables', '-t', 'nat', '-F', 'AMBIENT_OUTPUT']
      : mode === 'nftables' ? [NFT, 'flush', 'chain', 'inet', 'ambient-nat', 'output']
        : ['tc', 'filter', 'del', 'dev', v6.ifname, 'egress'];
    const [cmd = '', ...args] = flush;
    await v6.exec(cmd, args);
    // (A repair pass every 300 ms may put them back before anyone looks: its log line below is the proof it ran.)
    const back = await eventually(async () => ({ r: await report(), logs: await agent.logs({ currentRun: true }) }),
      (x) => x.r?.missing.length === 0 && x.logs.some((l) => l.msg.includes('capture drifted')), 10_000);
    t.deepEqual(back.r?.missing, [], 'a repair pass put them back');
    const after = await agent.logs({ currentRun: true });
    t.is(after.filter((l) => l.msg.includes('kept with its rules and no listener')).length, 1, 'still said once');
    t.deepEqual(after.filter((l) => /repair failed|re-adopting pod failed/.test(l.msg)).map((l) => l.msg), [], 'the repair did not fail');
    t.true(after.some((l) => l.msg.includes('capture drifted')), 'it was a repair pass that put them back');
    await tb.deletePod(v6);
  });
}
