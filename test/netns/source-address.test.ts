// Inbound source preservation (issue 14), on every backend: the app in an enrolled pod sees its client's address as the
// peer (a mesh client's pod IP over HBONE, a plain client's own address on 15006), replies come back, probes still pass;
// without the reply rule the netfilter backends' guard drops the app's replies (fail closed) until repair restores it.
import { netnsTest, withTestbed } from '../testbed/ava.js';
import type { RedirectMode, TestbedPod } from '../testbed/index.js';
import { countOccurrences } from './capture-wire.js';
import { AMBIENT, NFT, agentPod, ask, eventually, hasOurRules, podRules, startEcho, unenrolByLabel } from './helpers.js';
import { appAdvertisedMss, closedPortRefused, download, guardDrops, killWhileAppStreams, podRulesReport, sourceCluster, streamWhileCapturing } from './source-helpers.js';
import { REPLY_RULE_TEXT } from '../../agent/src/redirect/reply-routing.js';
import { REPLY_RULE_PREF } from '../../agent/src/redirect/constants.js';
import { REINJECT_RULE } from '../../agent/src/redirect/ebpf-config.js';

const MODES: RedirectMode[] = ['iptables', 'nftables', 'ebpf'];

/** Deletes the pod's reply rule (as a pod holding CAP_NET_ADMIN could). */
async function deleteReplyRule(pod: TestbedPod): Promise<void> {
  await pod.exec('ip', ['-4', 'rule', 'del', 'pref', String(REPLY_RULE_PREF), ...REPLY_RULE_TEXT.split(' ')]);
}

/**
 * The in-pod pieces source preservation adds: the policy rule, the local route, the mangle chains (iptables) and the
 * reply table (nftables). Throws when the pod's routing cannot be read (an empty answer would pass every notRegex).
 */
async function replyPieces(pod: TestbedPod): Promise<string> {
  const script = `ip -4 rule show; echo ---; ip -4 route show table 100 2>/dev/null; echo ---; iptables-save -t mangle; echo ---; ${NFT} list table inet ambient-reply 2>/dev/null; echo tcp_fwmark_accept=$(cat /proc/sys/net/ipv4/tcp_fwmark_accept) fwmark_reflect=$(cat /proc/sys/net/ipv4/fwmark_reflect); true`;
  const out = String((await pod.exec('sh', ['-c', script])).stdout);
  if (!/lookup main/.test(out) || !out.includes('*mangle')) throw new Error(`cannot read the pod's routing and mangle table: ${out}`);
  return out;
}

for (const mode of MODES) {
  netnsTest.serial(`[${mode}] the app sees its client: a mesh client's pod IP (HBONE), a plain client's own address; probes and the pod's outbound still work`, async (t) => {
    const { tb, productpage, sleep, neighbour, legacy } = await sourceCluster(t, mode);

    // Mesh clients, from the other node and from the same node: HBONE to 15008, the app sees the client pod's IP.
    for (const client of [sleep, neighbour]) {
      const r = await ask(client, productpage.ip, 9080, `mesh-${client.name}`);
      t.true(r.ok, r.output);
      t.true(r.output.endsWith(`from ${client.ip}`), `the app saw ${client.key}'s pod IP ${client.ip}: ${r.output}`);
    }
    const viaHbone = await eventually(() => agentPod(tb, productpage), (p) => (p?.stats?.inbound.hbone ?? 0) >= 2);
    t.true((viaHbone?.stats?.inbound.hbone ?? 0) >= 2, 'both arrived over HBONE');

    // A plain client (PERMISSIVE): through 15006, the app sees the client's own address.
    const before = (await agentPod(tb, productpage))?.stats?.inbound.opened ?? 0;
    const plain = await ask(legacy, productpage.ip, 9080, 'plain');
    t.true(plain.ok, plain.output);
    t.true(plain.output.endsWith(`from ${legacy.ip}`), `the app saw the plain client's address ${legacy.ip}: ${plain.output}`);
    t.true(((await agentPod(tb, productpage))?.stats?.inbound.opened ?? 0) > before, 'through the agent');

    // Many short connections in a row (the agent's source ports are the kernel's choice, never the client's own).
    for (let i = 0; i < 10; i++) {
      const r = await ask(i % 2 ? legacy : sleep, productpage.ip, 9080, `again-${i}`);
      t.true(r.ok && r.output.endsWith(`from ${(i % 2 ? legacy : sleep).ip}`), r.output);
    }

    // The app's replies in bulk come back through the agent (1 MiB from the app to a mesh client, byte for byte).
    const d = await download(productpage, sleep, 9091, 1024 * 1024);
    t.is(d.received, d.sent, 'the app\'s bytes reached the mesh client intact');

    // The app's end of a preserved connection is routed through lo from its SYN-ACK on, so it advertises lo's MSS.
    for (const client of [sleep, legacy]) {
      const mss = await appAdvertisedMss(productpage, client, 9080);
      t.true(mss > 16_000, `the app advertised MSS ${mss} to the agent for ${client.key} (lo's, not eth0's 1448)`);
    }

    // A port where the app does not listen is refused at once through both inbound paths (its reset reaches the agent).
    await closedPortRefused(t, tb, productpage, [sleep, legacy], 'closed app port');

    // A kubelet-style probe from the node still goes straight to the app, as 169.254.7.127.
    const probe = await tb.nodeExec(1, 'ncat', ['--no-shutdown', '-w', '3', productpage.ip, '9080'], { input: 'probe\n', reject: false });
    t.regex(String(probe.stdout), /pong:probe from 169\.254\.7\.127/);

    // The pod's own outbound (through the agent's 15001, plain to a non-mesh server) is unaffected.
    await startEcho(legacy, 8080);
    const out = await ask(productpage, legacy.ip, 8080, 'outbound');
    t.true(out.ok && out.output.endsWith(`from ${productpage.ip}`), out.output);

    // The destination agent killed while the app streams to the mesh client: nothing leaves toward the client in clear.
    const k = await killWhileAppStreams(tb, productpage, sleep, 9092);
    t.true(k.received > 100_000, `the stream reached the client through the mesh first (${k.received} bytes)`);
    t.true(k.captured > 100_000, `the capture saw the traffic (${k.captured} bytes)`);
    t.is(k.markersOut, 0, 'no byte of the app\'s stream left the pod in clear after the agent died');
    t.log(`${mode}: kill -9 while the app streams: ${k.received} bytes received, ${k.captured} bytes captured, ${k.markersOut} markers in clear`);

    // What the backend installed reads back in sync; un-enrolment of the running pod removes every piece (rule, route,
    // chains); DEL leaves them to die with the namespace.
    const report = await podRulesReport(tb, productpage);
    t.true(report?.ok, `rules in sync: ${JSON.stringify(report)}`);
    const pieces = await replyPieces(productpage);
    if (mode === 'ebpf') {
      t.notRegex(pieces, /fwmark 0x111/, 'ebpf needs no reply rule: its egress program brings replies back');
    } else {
      t.regex(pieces, /fwmark 0x111\/0xfff lookup 100/);
      t.regex(pieces, /local default dev lo/);
    }
    if (mode === 'iptables') t.regex(pieces, /-j CONNMARK --set-xmark 0x111\/0xfff/);
    if (mode === 'iptables') t.regex(pieces, /-A POSTROUTING -j AMBIENT_REPLY_GUARD\n/);
    if (mode === 'iptables') t.regex(pieces, /-A AMBIENT_REPLY_GUARD ! -o lo -m connmark --mark 0x111\/0xfff -j DROP/);
    if (mode === 'nftables') t.regex(pieces, /chain reply-guard \{/);
    if (mode === 'nftables') t.notRegex(pieces, /chain reply-route/, 'a fresh pod with tcp_fwmark_accept needs no restore chain');
    if (mode === 'iptables') t.notRegex(pieces, /-A OUTPUT -j AMBIENT_OUTPUT|--restore-mark/, 'nor the mangle OUTPUT restore');
    if (mode === 'ebpf') t.notRegex(pieces, /AMBIENT_REPLY_GUARD|reply-guard/, 'ebpf uses no connmark, so no guard');
    t.regex(pieces, /tcp_fwmark_accept=1/, 'the app\'s socket takes the mark of the agent\'s SYN');
    t.regex(pieces, mode === 'ebpf' ? /fwmark_reflect=0/ : /fwmark_reflect=1/, 'and (netfilter) the resets answering the agent that of its packet');
    await unenrolByLabel(tb, productpage);
    const after = await replyPieces(productpage);
    t.regex(after, /tcp_fwmark_accept=0 fwmark_reflect=0/, 'un-enrolment turned tcp_fwmark_accept and fwmark_reflect off');
    t.notRegex(after, /fwmark 0x111|fwmark 0x1000|lookup 100/, `no rule left: ${after}`);
    t.notRegex(after, /local default/, `no local route left: ${after}`);
    t.notRegex(after, /AMBIENT_/, `no mangle chain left: ${after}`);
    t.false(hasOurRules(await podRules(productpage)), 'nothing of ours left');
  });
}

netnsTest.serial('[iptables] source.ip / ipBlocks in an AuthorizationPolicy match the real client, on both inbound paths', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, redirectMode: 'iptables' });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('legacy', {});
  const [productpage, sleep, notsleep, legacy, other] = await tb.addPods([
    { node: 1, namespace: 'app', name: 'productpage', serviceAccount: 'productpage', labels: { app: 'productpage' } },
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 0, namespace: 'app', name: 'notsleep', serviceAccount: 'notsleep' },
    { node: 0, namespace: 'legacy', name: 'legacy' },
    { node: 0, namespace: 'legacy', name: 'other' },
  ]);
  if (!productpage || !sleep || !notsleep || !legacy || !other) throw new Error('pods missing');
  await startEcho(productpage, 9080);
  await tb.writeWorkload('allow-by-ip.yaml', {
    apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy',
    metadata: { name: 'allow-by-ip', namespace: 'app' },
    spec: { selector: { matchLabels: { app: 'productpage' } }, action: 'ALLOW', rules: [{ from: [{ source: { ipBlocks: [sleep.ip, `${legacy.ip}/32`] } }] }] },
  });
  const denied = await eventually(() => ask(notsleep, productpage.ip, 9080, 'x'), (a) => !a.ok, 6000);
  t.false(denied.ok, 'a mesh client outside the ipBlocks is denied');
  const meshOk = await ask(sleep, productpage.ip, 9080, 'mesh');
  t.true(meshOk.ok && meshOk.output.endsWith(`from ${sleep.ip}`), meshOk.output);
  const plainOk = await ask(legacy, productpage.ip, 9080, 'plain');
  t.true(plainOk.ok && plainOk.output.endsWith(`from ${legacy.ip}`), plainOk.output);
  // The plain client's refusal must be the policy's (a count taken before it: notsleep's retries also count denials).
  const deniedBefore = (await agentPod(tb, productpage))?.stats?.inbound.denied ?? 0;
  t.true(deniedBefore >= 1, 'the mesh client was denied by policy');
  t.false((await ask(other, productpage.ip, 9080, 'plain-other')).ok, 'a plain client outside the ipBlocks is denied');
  const stats = (await eventually(() => agentPod(tb, productpage), (p) => (p?.stats?.inbound.denied ?? 0) > deniedBefore))?.stats?.inbound;
  t.true((stats?.denied ?? 0) > deniedBefore, `the plain client was denied by policy: ${JSON.stringify(stats)}`);
});

netnsTest.serial('[ebpf] the app\'s end of a preserved connection carries the re-injection mark: with the agent killed while it streams and then the rule deleted, nothing leaves the pod in clear', async (t) => {
  const { tb, productpage, sleep } = await sourceCluster(t, 'ebpf', { agentArgs: ['--repair-interval-ms', '0'] });
  const rule = ['rule', 'del', 'pref', String(REINJECT_RULE.pref), 'fwmark', `0x${REINJECT_RULE.mark.toString(16)}/0x${REINJECT_RULE.mask.toString(16)}`, 'lookup', String(REINJECT_RULE.table)];
  const k = await killWhileAppStreams(tb, productpage, sleep, 9095, { afterKill: async () => void await productpage.exec('ip', rule) });
  t.true(k.received > 100_000, `the stream reached the client through the mesh first (${k.received} bytes)`);
  t.true(k.captured > 100_000, `the capture saw the traffic (${k.captured} bytes)`);
  t.is(k.markersOut, 0, 'no byte of the app\'s stream left the pod in clear with neither the rule nor the agent\'s socket');
  // The restarted agent re-adopts the pod and puts the rule back; the app sees its client again.
  const adopted = await eventually(() => podRulesReport(tb, productpage), (r) => r?.ok === true, 10_000);
  t.true(adopted?.ok, `re-adoption restored the rule: ${JSON.stringify(adopted)}`);
  const r = await eventually(() => ask(sleep, productpage.ip, 9080, 'after'), (a) => a.ok, 10_000);
  t.true(r.ok && r.output.endsWith(`from ${sleep.ip}`), r.output);
});

/** The restore of each netfilter backend, as replyPieces shows it: needed only where tcp_fwmark_accept or fwmark_reflect is off. */
const RESTORE: Record<'iptables' | 'nftables', RegExp> = { iptables: /-A OUTPUT -j AMBIENT_OUTPUT\n(.|\n)*--restore-mark/, nftables: /chain reply-route \{/ };

for (const mode of ['iptables', 'nftables'] as const) {
netnsTest.serial(`[${mode}] the ct mark restore only where tcp_fwmark_accept or fwmark_reflect was off: re-adopted so, the pod gets it, the sysctls after, and keeps it through restarts and repairs; a closed app port is refused at once either way`, async (t) => {
  const { tb, productpage, sleep, legacy } = await sourceCluster(t, mode);
  t.notRegex(await replyPieces(productpage), RESTORE[mode]);
  await closedPortRefused(t, tb, productpage, [sleep, legacy], 'without the restore');
  // As a pod enrolled by an agent that set tcp_fwmark_accept only (2026-12-06): its kernel's resets to the agent rely on the restore.
  await productpage.exec('sh', ['-c', 'echo 0 > /proc/sys/net/ipv4/fwmark_reflect']);
  const agent = tb.agent(productpage.node.index);
  await agent.stop();
  await agent.start();
  const adopted = await eventually(() => podRulesReport(tb, productpage), (r) => r?.ok === true, 10_000);
  t.true(adopted?.ok, `re-adopted in sync: ${JSON.stringify(adopted)}`);
  const pieces = await replyPieces(productpage);
  t.regex(pieces, RESTORE[mode], 'the restore is kept for what was enrolled without the sysctl');
  t.true(adopted?.expected.some((l) => /--restore-mark|chain reply-route/.test(l)), `\`rules\` shows the restore as expected: ${JSON.stringify(adopted?.expected)}`);
  t.regex(pieces, /tcp_fwmark_accept=1 fwmark_reflect=1/, 'and the sysctls set after the pieces');
  for (const client of [sleep, legacy]) {
    const r = await ask(client, productpage.ip, 9080, `after-${client.name}`);
    t.true(r.ok && r.output.endsWith(`from ${client.ip}`), r.output);
  }
  t.true((await podRulesReport(tb, productpage))?.ok, 'the restore is in sync with the sysctl on');
  // Restarted again (the sysctl on, the restore in place): the pieces stay as they are.
  await agent.stop();
  await agent.start();
  t.true((await eventually(() => podRulesReport(tb, productpage), (r) => r?.ok === true, 10_000))?.ok, 'in sync after a second restart');
  t.regex(await replyPieces(productpage), RESTORE[mode], 'nothing rewritten');
  await closedPortRefused(t, tb, productpage, [sleep, legacy], 'with the restore');
  // Other drift (the guard's rule deleted) with the sysctls on: the repair puts the guard back and keeps the restore.
  await productpage.exec('sh', ['-c', mode === 'iptables' ? 'iptables -w 5 -t mangle -F AMBIENT_REPLY_GUARD' : `${NFT} flush chain inet ambient-reply reply-guard`]);
  t.false((await podRulesReport(tb, productpage))?.ok, 'the missing guard is drift');
  const repaired = await eventually(() => podRulesReport(tb, productpage), (r) => r?.ok === true, 15_000);
  t.true(repaired?.ok, `repaired: ${JSON.stringify(repaired)}`);
  const after = await replyPieces(productpage);
  t.regex(after, RESTORE[mode], 'the repair kept the restore the pod had');
  t.regex(after, mode === 'iptables' ? /-A AMBIENT_REPLY_GUARD ! -o lo/ : /oifname != "lo"/, 'and put the guard back');
});
}

netnsTest.serial('[iptables] with --preserve-source false the app sees the agent (its own pod IP) and no reply routing is installed; turned on again, a restart converges', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, redirectMode: 'iptables', agentArgs: ['--preserve-source', 'false'] });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('legacy', {});
  const [productpage, sleep, legacy] = await tb.addPods([
    { node: 1, namespace: 'app', name: 'productpage' },
    { node: 0, namespace: 'app', name: 'sleep' },
    { node: 0, namespace: 'legacy', name: 'legacy' },
  ]);
  if (!productpage || !sleep || !legacy) throw new Error('pods missing');
  await startEcho(productpage, 9080);
  for (const client of [sleep, legacy]) {
    const r = await ask(client, productpage.ip, 9080, client.name);
    t.true(r.ok && r.output.endsWith(`from ${productpage.ip}`), `the old behaviour: ${r.output}`);
  }
  const pieces = await replyPieces(productpage);
  t.notRegex(pieces, /fwmark 0x111|local default|AMBIENT_/, pieces);
  t.true((await podRulesReport(tb, productpage))?.ok);

  // Back to the default (on) across a restart: re-adoption installs the missing pieces, the app sees its clients.
  const agent = tb.agent(1);
  await agent.stop();
  agent.spec.extraArgs.splice(agent.spec.extraArgs.indexOf('--preserve-source'), 2);
  await agent.start();
  const on = await eventually(() => ask(legacy, productpage.ip, 9080, 'on'), (a) => a.output.endsWith(`from ${legacy.ip}`), 10_000);
  t.true(on.ok && on.output.endsWith(`from ${legacy.ip}`), on.output);
  t.regex(await replyPieces(productpage), /fwmark 0x111\/0xfff lookup 100/);
  t.true((await podRulesReport(tb, productpage))?.ok);
});

for (const mode of ['iptables', 'nftables'] as const) {
  netnsTest.serial(`[${mode}] an agent restarted with --preserve-source false keeps the reply routing of pods it adopts: nothing of a live app connection leaves in clear`, async (t) => {
    const tb = await withTestbed(t, { nodes: 2, redirectMode: mode });
    await tb.setNamespace('app', AMBIENT);
    const [productpage, sleep] = await tb.addPods([
      { node: 1, namespace: 'app', name: 'productpage' },
      { node: 0, namespace: 'app', name: 'sleep' },
    ]);
    if (!productpage || !sleep) throw new Error('pods missing');
    const k = await killWhileAppStreams(tb, productpage, sleep, 9093, { restartArgs: ['--preserve-source', 'false'] });
    t.true(k.received > 100_000, `the stream reached the client through the mesh first (${k.received} bytes)`);
    t.true(k.sentAfterAdopt, `the app sent again after the agent without source preservation adopted its pod: ${k.appSockets}`);
    t.is(k.markersOut, 0, 'no byte of the app\'s stream left the pod in clear');
    // The pieces are still there, and the drift check does not call them unexpected (nor repair them away).
    const pieces = await replyPieces(productpage);
    t.regex(pieces, /fwmark 0x111\/0xfff lookup 100/);
    t.regex(pieces, /local default dev lo/);
    const report = await podRulesReport(tb, productpage);
    t.true(report?.ok, `in sync: ${JSON.stringify(report)}`);
    t.true(report?.actual.some((l) => l.includes('fwmark 0x111')), 'the rule is shown as found');
    // Un-enrolment of the running pod is what removes them, with the flag off too (DEL leaves them to its namespace).
    await unenrolByLabel(tb, productpage);
    t.notRegex(await replyPieces(productpage), /fwmark 0x111|local default|AMBIENT_|ambient-reply/);
  });
}

for (const mode of ['iptables', 'nftables'] as const) {
  netnsTest.serial(`[${mode}] the reply guard: with the pod's reply rule deleted, the app's replies are dropped in the pod, not sent toward the client in clear; repair restores the rule`, async (t) => {
    // The repair loop off at first: it would put the rule back (and reset the guard's counter) before the drops are read.
    const tb = await withTestbed(t, { nodes: 2, redirectMode: mode, agentArgs: ['--repair-interval-ms', '0'] });
    await tb.setNamespace('app', AMBIENT);
    const [productpage, sleep] = await tb.addPods([
      { node: 1, namespace: 'app', name: 'productpage' },
      { node: 0, namespace: 'app', name: 'sleep' },
    ]);
    if (!productpage || !sleep) throw new Error('pods missing');
    const { marker, cap, reader } = await streamWhileCapturing(tb, productpage, sleep, 9094, `src-guard-${mode}`);
    const before = await guardDrops(productpage, mode);
    await deleteReplyRule(productpage);
    const dropped = await eventually(() => guardDrops(productpage, mode), (n) => n > before, 10_000);
    t.true(dropped > before, `the guard dropped the app's replies (${before} -> ${dropped} packets)`);
    const drift = await podRulesReport(tb, productpage);
    t.false(drift?.ok, 'the missing rule is drift');
    t.deepEqual(drift?.missing, [`ip rule ${REPLY_RULE_PREF}: from all ${REPLY_RULE_TEXT}`], JSON.stringify(drift));
    const received = Number(String((await reader).stdout).trim()) || 0;
    const raw = (await cap.stop()).raw;
    t.true(received > 100_000, `the stream reached the client through the mesh first (${received} bytes)`);
    t.true(raw.length > 100_000, `the capture saw the traffic (${raw.length} bytes)`);
    t.is(countOccurrences(raw, Buffer.from(marker)), 0, 'no byte of the app\'s stream left the pod in clear without the reply rule');
    t.log(`${mode}: reply rule deleted while the app streams: ${received} bytes received, guard dropped ${dropped - before} packets, ${raw.length} bytes captured`);

    // Repair: restarted with the loop on, the agent re-adopts the pod and puts the rule back; deleted again, the loop does.
    const agent = tb.agent(1);
    await agent.stop();
    agent.spec.extraArgs.splice(agent.spec.extraArgs.indexOf('--repair-interval-ms'), 2);
    await agent.start();
    const adopted = await eventually(() => podRulesReport(tb, productpage), (r) => r?.ok === true, 10_000);
    t.true(adopted?.ok, `re-adoption restored the rule: ${JSON.stringify(adopted)}`);
    await deleteReplyRule(productpage);
    const repaired = await eventually(() => replyPieces(productpage), (p) => p.includes(REPLY_RULE_TEXT), 20_000);
    t.true(repaired.includes(REPLY_RULE_TEXT), `the repair loop restored the rule: ${repaired}`);
    t.true((await eventually(() => podRulesReport(tb, productpage), (r) => r?.ok === true, 10_000))?.ok, 'in sync again');
    await startEcho(productpage, 9080);
    const r = await ask(sleep, productpage.ip, 9080, 'after-repair');
    t.true(r.ok && r.output.endsWith(`from ${sleep.ip}`), `replies reach the client through the mesh again: ${r.output}`);
  });
}
