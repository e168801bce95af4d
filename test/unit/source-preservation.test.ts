// Unit tests for inbound source preservation's pure pieces: the iptables mangle rules and the nft chains (goldens), the
// fail-closed guard, the pod's reply routing per address family (install, removal, read-back, drift), which families a
// pod gets them for (IPv6 only with --capture-ipv6 and a pod IPv6 address), and where the upstream socket binds.
import test from 'ava';
import * as ipt from '../../agent/src/redirect/iptables.js';
import * as nft from '../../agent/src/redirect/nftables.js';
import {
  REPLY_RULE, REPLY_RULE_TEXT, expectedReplyRoutingLines, replyFamilies, replyRoutingLines, replyRoutingReadScript, replyRoutingRemoveScript, upstreamSource,
} from '../../agent/src/redirect/reply-routing.js';
import { createBackend } from '../../agent/src/redirect/backend.js';
import { AGENT_MARK, LOCAL_ROUTE_TABLE, REPLY_MARK } from '../../agent/src/redirect/constants.js';
import { ROUTE_TABLE as EBPF_ROUTE_TABLE } from '../../agent/src/redirect/ebpf-config.js';
import { assertGolden } from './golden.js';

const POD: readonly string[] = Object.values(ipt.POD_CHAINS);
const MANGLE = ipt.POD_MANGLE_CHAINS;

test('iptables mangle rules for source preservation match golden, per family', (t) => {
  assertGolden(t, 'iptables-pod-mangle', ipt.restoreInput('', MANGLE, ipt.podMangleRules(4), ipt.podMangleJumpRules(), 'mangle'));
  assertGolden(t, 'iptables-pod-mangle-ipv6', ipt.restoreInput('', MANGLE, ipt.podMangleRules(6), ipt.podMangleJumpRules(), 'mangle'));
  // Applied again over what the first one made: the chains are rewritten, the jumps already there not added twice.
  const saved = ipt.restoreInput('', MANGLE, ipt.podMangleRules(6), ipt.podMangleJumpRules(), 'mangle');
  const again = ipt.restoreInput(saved, MANGLE, ipt.podMangleRules(6), ipt.podMangleJumpRules(), 'mangle');
  t.false(ipt.podMangleJumpRules().some((j) => again.includes(`\n${j}\n`)), again);
});

test('nft reply table of source preservation matches golden; it is a table of its own, the capture\'s has no ct mark', (t) => {
  assertGolden(t, 'nftables-pod-preserve', nft.replaceTableScript(nft.REPLY_TABLE, nft.replyTable(true)));
  t.not(nft.REPLY_TABLE, nft.POD_TABLE);
  // Without the `route` chain (a pod with tcp_fwmark_accept on): the same table less that chain, nothing else.
  const noRoute = nft.replyTable(false);
  t.false(noRoute.includes('reply-route') || noRoute.includes('type route'), noRoute);
  t.is(noRoute, nft.replyTable(true).replace(/\tchain reply-route \{\n[^}]*\}\n\n/, ''));
  t.false(nft.podTable().includes('ct mark'));
});

test('the mangle rules are Istio\'s scheme with our marks: agent mark in, connmark 0x111, restored on the way out', (t) => {
  const [pre, out, guard, synMark] = ipt.podMangleRules(4);
  t.is(pre, `-A AMBIENT_PRERT -m mark --mark 0x${AGENT_MARK.toString(16)}/0xfff -j CONNMARK --set-xmark 0x${REPLY_MARK.toString(16)}/0xfff`);
  t.is(out, '-A AMBIENT_OUTPUT -m mark ! --mark 0x539/0xfff -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff');
  t.is(guard, '-A AMBIENT_REPLY_GUARD ! -o lo -m connmark --mark 0x111/0xfff -j DROP');
  // The agent's packets to the app arrive with the reply mark (after the CONNMARK line, which needs the agent mark), so
  // the app's socket takes it (tcp_fwmark_accept: from the SYN, or the final ACK after SYN cookies) and its SYN-ACK
  // advertises lo's MSS.
  t.is(synMark, '-A AMBIENT_PRERT -m mark --mark 0x539/0xfff -j MARK --set-xmark 0x111/0xfff');
  // The nat chains stay as they were: replies are never NEW, so nat needs no 0x111 exemption (which a pod able to set
  // its own mark could use to skip its capture).
  t.false(ipt.podChainRules(4).some((l) => l.includes('0x111')));
});

test('nft writes the connmark expression the way nft lists it (so verify compares equal)', (t) => {
  t.regex(nft.replyTable(false), /ct mark set ct mark & 0xfffff111 \| 0x00000111/);
  t.regex(nft.replyTable(true), /type route hook output priority mangle/);
});

test('the guard drops a reply-marked connection\'s packets leaving through anything but lo (fail closed without the policy rule)', (t) => {
  t.deepEqual(ipt.podMangleJumpRules(), ['-A PREROUTING -j AMBIENT_PRERT', '-A OUTPUT -j AMBIENT_OUTPUT', '-A POSTROUTING -j AMBIENT_REPLY_GUARD']);
  t.deepEqual([...MANGLE], [...POD, 'AMBIENT_REPLY_GUARD']);
  t.not(ipt.REPLY_GUARD_CHAIN, ipt.HOST_CHAIN, 'not the node\'s nat chain AMBIENT_POSTRT');
  t.false(POD.includes(ipt.REPLY_GUARD_CHAIN), 'the nat table holds no guard');
  t.regex(nft.replyTable(false), /\tchain reply-guard \{\n\t\ttype filter hook postrouting priority mangle; policy accept;\n\t\toifname != "lo" ct mark & 0x00000fff == 0x00000111 counter drop\n/);
  // nft lists the counter with its values: they are not drift.
  const listed = nft.replyTable(true).replace(' counter drop', ' counter packets 42 bytes 4200 drop');
  t.is(nft.normaliseListing(listed), nft.normaliseListing(nft.replyTable(true)));
});

test('iptables mangle restore and removal inputs name the mangle table', (t) => {
  t.true(ipt.restoreInput('', MANGLE, ipt.podMangleRules(4), ipt.podMangleJumpRules(), 'mangle').startsWith('*mangle\n'));
  const saved = ['*mangle', ':AMBIENT_OUTPUT - [0:0]', ':AMBIENT_PRERT - [0:0]', ':AMBIENT_REPLY_GUARD - [0:0]', ...ipt.podMangleJumpRules(), ...ipt.podMangleRules(4), 'COMMIT'].join('\n');
  const removal = ipt.removeInput(saved, MANGLE, 'mangle');
  t.true(removal.startsWith('*mangle\n'));
  t.true(removal.includes('-D PREROUTING -j AMBIENT_PRERT'));
  t.true(removal.includes('-X AMBIENT_PRERT'));
  t.true(removal.includes('-D POSTROUTING -j AMBIENT_REPLY_GUARD'));
  t.true(removal.includes('-X AMBIENT_REPLY_GUARD'));
  // An older agent's pod (no guard yet): the drift check reports the guard and its jump missing, the repair adds them.
  const older = ['*mangle', ':AMBIENT_OUTPUT - [0:0]', ':AMBIENT_PRERT - [0:0]', ...ipt.podJumpRules(), ...ipt.podMangleRules(4).slice(0, 2), 'COMMIT'].join('\n');
  const d = ipt.diffOwned([...ipt.podMangleJumpRules(), ...ipt.podMangleRules(4)], ipt.ownedNatLines(older, MANGLE));
  t.deepEqual(d, { missing: [ipt.podMangleRules(4)[2], ipt.podMangleRules(4)[3], '-A POSTROUTING -j AMBIENT_REPLY_GUARD'].sort(), unexpected: [] });
  const repair = ipt.restoreInput(older, MANGLE, ipt.podMangleRules(4), ipt.podMangleJumpRules(), 'mangle');
  t.true(repair.includes(':AMBIENT_REPLY_GUARD - [0:0]\n'));
  t.true(repair.includes('\n-A POSTROUTING -j AMBIENT_REPLY_GUARD\n'));
  t.false(repair.includes('\n-A PREROUTING -j AMBIENT_PRERT\n'), 'jumps already there are not added twice');
});

test('reply routing: the rule sends the reply mark to the local table, the ebpf backend\'s', (t) => {
  t.is(LOCAL_ROUTE_TABLE, EBPF_ROUTE_TABLE);
  t.deepEqual(REPLY_RULE, { pref: 32764, mark: 0x111, mask: 0xfff, table: 100 });
  t.is(REPLY_RULE_TEXT, 'fwmark 0x111/0xfff lookup 100');
});

test('reply routing removal deletes our rule, and the route only when no other rule looks the table up', (t) => {
  const s = replyRoutingRemoveScript(4);
  t.regex(s, /ip -4 rule del pref 32764 fwmark 0x111\/0xfff lookup 100/);
  t.regex(s, /if ! ip -4 rule show \| grep -q 'lookup 100\\b'; then ip -4 route del local 0\.0\.0\.0\/0 dev lo table 100/);
  t.regex(replyRoutingRemoveScript(6), /ip -6 route del local ::\/0 dev lo table 100/);
});

test('reply routing reads back in our notation and compares with the expectation', (t) => {
  t.regex(replyRoutingReadScript(4), /ip -4 route show table 100 2>\/dev\/null \|\| true/);
  const output = '32764:\tfrom all fwmark 0x111/0xfff lookup 100\n@@ambient-reply@@\nlocal default dev lo scope host \n';
  t.deepEqual(replyRoutingLines(output, 4), expectedReplyRoutingLines(4));
  t.deepEqual(replyRoutingLines('@@ambient-reply@@\n', 4), [], 'nothing installed');
  t.regex(replyRoutingRemoveScript(4), /echo 0 > \/proc\/sys\/net\/ipv4\/tcp_fwmark_accept/, 'un-enrolment turns tcp_fwmark_accept off');
  t.regex(replyRoutingRemoveScript(4), /echo 0 > \/proc\/sys\/net\/ipv4\/fwmark_reflect/, 'and each family\'s fwmark_reflect');
  t.regex(replyRoutingRemoveScript(6), /echo 0 > \/proc\/sys\/net\/ipv6\/fwmark_reflect/);
  t.notRegex(replyRoutingRemoveScript(6), /tcp_fwmark_accept|ipv4/, 'the IPv4 sysctls only with the IPv4 rule');
  t.deepEqual(expectedReplyRoutingLines(6), ['ip6: ip rule 32764: from all fwmark 0x111/0xfff lookup 100', 'ip6: route table 100: local default dev lo metric 1024 pref medium']);
  // As `ip -6` prints them (read in a pod holding both).
  const output6 = '32764:\tfrom all fwmark 0x111/0xfff lookup 100\n@@ambient-reply@@\nlocal default dev lo metric 1024 pref medium\n';
  t.deepEqual(replyRoutingLines(output6, 6), expectedReplyRoutingLines(6));
});

test('the upstream socket binds the client\'s address only in a family whose replies are routed back, and when it can stand as a source', (t) => {
  t.is(upstreamSource('10.244.0.3', [4]), '10.244.0.3');
  t.is(upstreamSource('10.244.0.3', []), undefined, 'switched off: the kernel picks the pod\'s own address');
  t.is(upstreamSource('127.0.0.1', [4]), undefined, 'loopback');
  t.is(upstreamSource('0.0.0.0', [4]), undefined);
  t.is(upstreamSource('224.0.0.1', [4]), undefined, 'multicast');
  t.is(upstreamSource('fd00::1', [4]), undefined, 'IPv6 without IPv6 reply routing in the pod: never bound (fail closed)');
  t.is(upstreamSource('fd00::1', [4, 6]), 'fd00::1');
  t.is(upstreamSource('fd00:0:0::0001', [4, 6]), 'fd00::1', 'canonical form');
  t.is(upstreamSource('::ffff:10.244.0.3', [4]), '10.244.0.3', 'IPv4-mapped is the IPv4 address');
  for (const bad of ['::1', '::', 'ff02::1', 'fe80::1', 'febf::1']) t.is(upstreamSource(bad, [4, 6]), undefined, bad);
  t.is(upstreamSource('fec0::1', [4, 6]), 'fec0::1', 'just past link-local');
  t.is(upstreamSource('not-an-ip', [4, 6]), undefined);
});

test('reply families: IPv4 with preservation; IPv6 too only when IPv6 is captured and the pod has an IPv6 address', (t) => {
  const dual = ['10.244.1.5', 'fd00:10:244:1::5'];
  t.deepEqual(replyFamilies(false, ['ipv4', 'ipv6'], dual), []);
  t.deepEqual(replyFamilies(true, ['ipv4'], dual), [4], 'IPv6 not captured (or ebpf)');
  t.deepEqual(replyFamilies(true, ['ipv4', 'ipv6'], dual), [4, 6]);
  t.deepEqual(replyFamilies(true, ['ipv4', 'ipv6'], ['10.244.1.5']), [4], 'an IPv4-only pod');
  t.deepEqual(replyFamilies(true, ['ipv4', 'ipv6'], ['::ffff:10.244.1.5']), [4], 'IPv4-mapped is IPv4');
  t.deepEqual(replyFamilies(true, ['ipv4', 'ipv6'], ['fd00:10:244:1::5']), [4, 6], 'an IPv6-only pod');
});

test('the netfilter backends expect the IPv6 pieces exactly when the pod gets them', async (t) => {
  const dual = { ifname: 'eth0', ips: ['10.244.1.5', 'fd00:10:244:1::5'] };
  const v4 = { ifname: 'eth0', ips: ['10.244.1.5'] };
  const ip6Rule = `ip6: ip rule 32764: from all ${REPLY_RULE_TEXT}`;
  const ip6Guard = `${ipt.IP6_PREFIX}${ipt.MANGLE_PREFIX}-A AMBIENT_REPLY_GUARD ! -o lo -m connmark --mark 0x111/0xfff -j DROP`;
  const ipv6On = await createBackend('iptables', { preserveSource: true, captureIpv6: true });
  t.true(ipv6On.expectedPodRules(dual).includes(ip6Rule));
  t.true(ipv6On.expectedPodRules(dual).includes(ip6Guard));
  t.true(ipv6On.expectedPodRules(dual).includes(`${ipt.IP6_PREFIX}${ipt.MANGLE_PREFIX}-A POSTROUTING -j AMBIENT_REPLY_GUARD`));
  for (const [b, pod, why] of [
    [ipv6On, v4, 'no pod IPv6 address'],
    [await createBackend('iptables', { preserveSource: true }), dual, 'IPv6 not captured'],
    [await createBackend('iptables', { preserveSource: false, captureIpv6: true }), dual, 'preservation off'],
  ] as const) {
    t.false(b.expectedPodRules(pod).some((l) => l.startsWith('ip6: ') || l.startsWith(`${ipt.IP6_PREFIX}${ipt.MANGLE_PREFIX}`)), why);
  }
  const nftOn = await createBackend('nftables', { preserveSource: true, captureIpv6: true });
  t.true(nftOn.expectedPodRules(dual).includes(ip6Rule), 'nft: the inet reply table serves IPv6, the IPv6 rule and route are added');
  t.true(nftOn.expectedPodRules(dual).includes('ip6: route table 100: local default dev lo metric 1024 pref medium'));
  t.false(nftOn.expectedPodRules(v4).includes(ip6Rule));
  t.false((await createBackend('nftables', { preserveSource: true })).expectedPodRules(dual).includes(ip6Rule));
});

test('one iptables-save of every table is split into the nat and mangle parts', (t) => {
  const save = ['# Generated', '*mangle', ':PREROUTING ACCEPT [0:0]', '-A PREROUTING -j AMBIENT_PRERT', 'COMMIT', '# Completed', '*nat', ':OUTPUT ACCEPT [0:0]', '-A OUTPUT -j AMBIENT_OUTPUT', 'COMMIT', ''].join('\n');
  t.is(ipt.tableSection(save, 'mangle'), '*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j AMBIENT_PRERT\nCOMMIT');
  t.deepEqual(ipt.ownedNatLines(ipt.tableSection(save, 'nat'), POD), ['-A OUTPUT -j AMBIENT_OUTPUT']);
  t.is(ipt.tableSection('*filter\nCOMMIT\n', 'nat'), '', 'a table that is not there (never used in this namespace)');
});

test('without the OUTPUT restore (the reply-mark sysctls on): no restore line, no mangle OUTPUT jump; any part of it in a table keeps it', (t) => {
  t.deepEqual(ipt.podMangleRules(4, false), ipt.podMangleRules(4, true).filter((l) => !l.includes('--restore-mark')));
  t.deepEqual(ipt.podMangleJumpRules(false), ['-A PREROUTING -j AMBIENT_PRERT', '-A POSTROUTING -j AMBIENT_REPLY_GUARD']);
  const table = (lines: string[]): string => `*mangle\n:AMBIENT_PRERT - [0:0]\n:AMBIENT_OUTPUT - [0:0]\n:AMBIENT_REPLY_GUARD - [0:0]\n${lines.join('\n')}\nCOMMIT\n`;
  const withRestore = [...ipt.podMangleJumpRules(true), ...ipt.podMangleRules(4, true)];
  const without = [...ipt.podMangleJumpRules(false), ...ipt.podMangleRules(4, false)];
  t.true(ipt.holdsRestore(table(withRestore)));
  t.false(ipt.holdsRestore(table(without)));
  t.true(ipt.holdsRestore(table([...without, '-A OUTPUT -j AMBIENT_OUTPUT'])), 'the jump alone');
  t.true(ipt.holdsRestore(table(withRestore.filter((l) => l !== '-A OUTPUT -j AMBIENT_OUTPUT'))), 'the rule alone');
  t.false(ipt.holdsRestore(table([...without, '-A OUTPUT -j OTHER'])), 'someone else\'s OUTPUT jump');
  t.true(ipt.restoreNeeded(table(withRestore), MANGLE, ipt.podMangleRules(4, false), ipt.podMangleJumpRules(false)));
  t.false(ipt.restoreNeeded(table(withRestore), MANGLE, ipt.podMangleRules(4, true), ipt.podMangleJumpRules(true)));
  // nftables: the `route` chain is the restore.
  t.true(nft.holdsRestore(nft.replyTable(true)));
  t.false(nft.holdsRestore(nft.replyTable(false)));
  t.false(nft.holdsRestore(''), 'no table');
});
