// IPv6 inbound source preservation (--preserve-source with --capture-ipv6; iptables, nftables and ebpf) on the dual-stack
// testbed: the app sees an IPv6 mesh client's pod IPv6 address and a plain IPv6 client's own, IPv6 probes still arrive
// as the probe address, the app's bulk replies come back, the guard drops them without the IPv6 reply rule (ebpf: the
// captured-socket tag keeps them in the pod with the agent killed), DEL cleans up.
import { netnsTest } from '../testbed/ava.js';
import type { TestbedPod } from '../testbed/index.js';
import { countOccurrences } from './capture-wire.js';
import { NFT, agentPod, ask, eventually, ip6, unenrolByLabel } from './helpers.js';
import { appAdvertisedMss, closedPortRefused, download, guardDrops, killWhileAppStreams, podRulesReport, sourceCluster, streamWhileCapturing } from './source-helpers.js';
import { REPLY_RULE_TEXT } from '../../agent/src/redirect/reply-routing.js';
import { PROBE_SNAT_IP6, REPLY_RULE_PREF } from '../../agent/src/redirect/constants.js';

const MODES = ['iptables', 'nftables', 'ebpf'] as const;

/**
 * The IPv6 pieces source preservation adds in a pod: the policy rule, the local route, ip6tables' mangle table and the
 * nft reply table. Throws when the pod's IPv6 routing cannot be read (an empty answer would pass every notRegex).
 */
async function replyPieces6(pod: TestbedPod): Promise<string> {
  const script = `ip -6 rule show; echo ---; ip -6 route show table 100 2>/dev/null; echo ---; ip6tables-save -t mangle; echo ---; ${NFT} list table inet ambient-reply 2>/dev/null; echo fwmark_reflect6=$(cat /proc/sys/net/ipv6/fwmark_reflect); true`;
  const out = String((await pod.exec('sh', ['-c', script])).stdout);
  if (!/lookup main/.test(out) || !out.includes('*mangle')) throw new Error(`cannot read the pod's IPv6 routing and mangle table: ${out}`);
  return out;
}

for (const mode of MODES) {
  const failClosed = mode === 'ebpf' ? 'the agent killed leaves nothing in clear' : 'the guard fails closed';
  netnsTest.serial(`[${mode}] --capture-ipv6: the app sees its IPv6 client (mesh pod IPv6, plain client's own), probes pass, replies come back, ${failClosed}, un-enrolment cleans up`, async (t) => {
    // The repair loop off: it would put the deleted rule back (and reset the guard's counter) before the drops are read.
    const { tb, productpage, sleep, neighbour, legacy } = await sourceCluster(t, mode, { ipFamilies: ['ipv4', 'ipv6'], agentArgs: ['--capture-ipv6', '--repair-interval-ms', '0'] });
    const server6 = ip6(productpage);

    // Mesh clients over IPv6, from the other node and from the same one: HBONE, the app sees the client pod's IPv6 address.
    for (const client of [sleep, neighbour]) {
      const r = await ask(client, server6, 9080, `mesh6-${client.name}`);
      t.true(r.ok, r.output);
      t.true(r.output.endsWith(`from ${ip6(client)}`), `the app saw ${client.key}'s pod IPv6 address ${ip6(client)}: ${r.output}`);
    }
    const viaHbone = await eventually(() => agentPod(tb, productpage), (p) => (p?.stats?.inbound.hbone ?? 0) >= 2);
    t.true((viaHbone?.stats?.inbound.hbone ?? 0) >= 2, 'both arrived over HBONE');

    // A plain IPv6 client (PERMISSIVE): through 15006, the app sees the client's own IPv6 address; a few in a row.
    const before = (await agentPod(tb, productpage))?.stats?.inbound.opened ?? 0;
    for (let i = 0; i < 4; i++) {
      const plain = await ask(legacy, server6, 9080, `plain6-${i}`);
      t.true(plain.ok && plain.output.endsWith(`from ${ip6(legacy)}`), `the app saw the plain client's address ${ip6(legacy)}: ${plain.output}`);
    }
    t.true(((await agentPod(tb, productpage))?.stats?.inbound.opened ?? 0) > before, 'through the agent');

    // IPv4 on the same pods is unchanged.
    const v4 = await ask(sleep, productpage.ip, 9080, 'mesh4');
    t.true(v4.ok && v4.output.endsWith(`from ${sleep.ip}`), v4.output);

    // A kubelet-style IPv6 probe from the node still goes straight to the app, as the probe address.
    const probe = await tb.nodeExec(1, 'ncat', ['--no-shutdown', '-w', '3', server6, '9080'], { input: 'probe6\n', reject: false });
    t.true(String(probe.stdout).trim().endsWith(`pong:probe6 from ${PROBE_SNAT_IP6}`), String(probe.stdout));

    // The app's replies in bulk come back through the agent over IPv6 (1 MiB to a mesh client, byte for byte).
    const d = await download(productpage, sleep, 9091, 1024 * 1024, server6);
    t.is(d.received, d.sent, 'the app\'s bytes reached the IPv6 mesh client intact');
    // The app's end of a preserved IPv6 connection advertises lo's MSS too (tcp_fwmark_accept covers IPv6 TCP).
    for (const client of [sleep, legacy]) {
      const mss = await appAdvertisedMss(productpage, client, 9080, server6);
      t.true(mss > 16_000, `the app advertised MSS ${mss} over IPv6 to the agent for ${client.key} (lo's, not eth0's)`);
    }

    // What the backend installed reads back in sync, IPv6 pieces included.
    const report = await podRulesReport(tb, productpage);
    t.true(report?.ok, `rules in sync: ${JSON.stringify(report)}`);
    if (mode === 'ebpf') {
      // No reply rule: the egress program brings the app's IPv6 replies back (the re-injection's own IPv6 rule and route).
      t.true(report?.actual.some((l) => l.startsWith(`map ambient_cfg: v1 pod ${productpage.ip} ipv6 ${server6} id `)), JSON.stringify(report?.actual));
      t.true(report?.actual.includes('ip6: ip rule 100: from all fwmark 0x1000/0x1000 lookup 100'), JSON.stringify(report?.actual));
      t.notRegex(await replyPieces6(productpage), /fwmark 0x111/, 'ebpf needs no reply rule');
      await closedPortRefused(t, tb, productpage, [sleep, legacy], 'IPv6', server6);
      const k = await killWhileAppStreams(tb, productpage, sleep, 9092, { host: server6 });
      t.true(k.received > 100_000, `the IPv6 stream reached the client through the mesh first (${k.received} bytes)`);
      t.true(k.captured > 100_000, `the capture saw the traffic (${k.captured} bytes)`);
      t.is(k.markersOut, 0, 'no byte of the app\'s IPv6 stream left the pod in clear after the agent died');
      t.log(`ebpf: kill -9 while the app streams over IPv6: ${k.received} bytes received, ${k.captured} bytes captured`);
      t.true((await eventually(() => podRulesReport(tb, productpage), (r) => r?.ok === true, 10_000))?.ok, 'the rules read back in sync after the restart');
      await unenrolByLabel(tb, productpage);
      t.notRegex(await replyPieces6(productpage), /fwmark 0x|lookup 100|local default/, 'un-enrolment removed the IPv6 rule and route');
      return;
    }
    t.true(report?.actual.includes(`ip6: ip rule ${REPLY_RULE_PREF}: from all ${REPLY_RULE_TEXT}`), JSON.stringify(report?.actual));
    if (mode === 'iptables') t.true(report?.actual.includes('ip6tables: mangle: -A AMBIENT_REPLY_GUARD ! -o lo -m connmark --mark 0x111/0xfff -j DROP'), JSON.stringify(report?.actual));
    const pieces = await replyPieces6(productpage);
    t.regex(pieces, /fwmark 0x111\/0xfff lookup 100/);
    t.regex(pieces, /local default dev lo/);
    if (mode === 'iptables') t.regex(pieces, /-A AMBIENT_REPLY_GUARD ! -o lo -m connmark --mark 0x111\/0xfff -j DROP/);
    if (mode === 'nftables') t.regex(pieces, /table inet ambient-reply/, 'one inet table serves both families');
    t.regex(pieces, /fwmark_reflect6=1/, 'the IPv6 resets answering the agent carry its packet\'s mark');
    await closedPortRefused(t, tb, productpage, [sleep, legacy], 'IPv6', server6);

    // The pod's IPv6 reply rule deleted while the app streams over IPv6: the guard drops the replies, none leave in clear.
    const { marker, cap, reader } = await streamWhileCapturing(tb, productpage, sleep, 9094, `src6-guard-${mode}`, server6);
    const dropsBefore = await guardDrops(productpage, mode, 6);
    await productpage.exec('ip', ['-6', 'rule', 'del', 'pref', String(REPLY_RULE_PREF), ...REPLY_RULE_TEXT.split(' ')]);
    const dropped = await eventually(() => guardDrops(productpage, mode, 6), (n) => n > dropsBefore, 10_000);
    t.true(dropped > dropsBefore, `the guard dropped the app's IPv6 replies (${dropsBefore} -> ${dropped} packets)`);
    const drift = await podRulesReport(tb, productpage);
    t.false(drift?.ok, 'the missing IPv6 rule is drift');
    t.deepEqual(drift?.missing, [`ip6: ip rule ${REPLY_RULE_PREF}: from all ${REPLY_RULE_TEXT}`], JSON.stringify(drift));
    const received = Number(String((await reader).stdout).trim()) || 0;
    const raw = (await cap.stop()).raw;
    t.true(received > 100_000, `the stream reached the client through the mesh first (${received} bytes)`);
    t.true(raw.length > 100_000, `the capture saw the traffic (${raw.length} bytes)`);
    t.is(countOccurrences(raw, Buffer.from(marker)), 0, 'no byte of the app\'s IPv6 stream left the pod in clear without the reply rule');
    t.log(`${mode}: IPv6 reply rule deleted while the app streams: ${received} bytes received, guard dropped ${dropped - dropsBefore} packets, ${raw.length} bytes captured`);

    // Un-enrolment of the running pod removes every IPv6 piece: rule, route, ip6tables chains, the reply table (DEL
    // leaves them to die with the namespace).
    await unenrolByLabel(tb, productpage);
    const after = await replyPieces6(productpage);
    t.notRegex(after, /fwmark 0x111|lookup 100/, `no IPv6 rule left: ${after}`);
    t.notRegex(after, /local default/, `no IPv6 local route left: ${after}`);
    t.notRegex(after, /AMBIENT_|ambient-reply/, `no ip6tables chain or reply table left: ${after}`);
    t.regex(after, /fwmark_reflect6=0/, 'un-enrolment turned IPv6 fwmark_reflect off');
  });
}
