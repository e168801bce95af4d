// Unit tests for the pure rule generators of both backends: golden output, idempotent restore plans, drift diffs.
import test from 'ava';
import * as ipt from '../../agent/src/redirect/iptables.js';
import * as nft from '../../agent/src/redirect/nftables.js';
import { probeIps } from '../../agent/src/reconcile/attachments.js';
import { assertGolden } from './golden.js';

const POD = Object.values(ipt.POD_CHAINS);

interface Case {
  backend: 'iptables' | 'nftables';
  side: 'pod' | 'pod-ipv6' | 'host' | 'host-ipv6';
  render: () => string;
}

const cases: Case[] = [
  { backend: 'iptables', side: 'pod', render: () => ipt.restoreInput('', POD, ipt.podChainRules(), ipt.podJumpRules()) },
  { backend: 'iptables', side: 'pod-ipv6', render: () => ipt.restoreInput('', POD, ipt.podChainRules(6), ipt.podJumpRules()) },
  { backend: 'iptables', side: 'host', render: () => ipt.restoreInput('', [ipt.HOST_CHAIN], ipt.hostChainRules(), ipt.hostJumpRules()) },
  { backend: 'iptables', side: 'host-ipv6', render: () => ipt.restoreInput('', [ipt.HOST_CHAIN], ipt.hostChainRules('', 6), ipt.hostJumpRules()) },
  { backend: 'nftables', side: 'pod', render: () => nft.replaceTableScript(nft.POD_TABLE, nft.podTable()) },
  { backend: 'nftables', side: 'host', render: () => nft.replaceTableScript(nft.HOST_TABLE, nft.hostTable()) },
];

for (const c of cases) {
  test(`${c.backend} ${c.side} rules match golden`, (t) => {
    assertGolden(t, `${c.backend}-${c.side}`, c.render());
  });
  test(`${c.backend} ${c.side} rules are deterministic`, (t) => {
    t.is(c.render(), c.render());
  });
}

// What iptables-save prints after our restore ran once (chains grouped, builtin jumps first).
const savedOnce = [
  '*nat',
  ':PREROUTING ACCEPT [0:0]',
  ':OUTPUT ACCEPT [0:0]',
  ':AMBIENT_OUTPUT - [0:0]',
  ':AMBIENT_PRERT - [0:0]',
  ...ipt.podJumpRules(),
  ...ipt.podChainRules().filter((l) => l.startsWith('-A AMBIENT_OUTPUT')),
  ...ipt.podChainRules().filter((l) => l.startsWith('-A AMBIENT_PRERT')),
  'COMMIT',
].join('\n');

test('iptables probe SNAT: any local socket by default, only the kubelet\'s cgroup when one is set', (t) => {
  t.notRegex(ipt.hostChainRules().join('\n'), /cgroup/);
  t.deepEqual(ipt.hostChainRules('/system.slice/kubelet.service'), [
    '-A AMBIENT_POSTRT -p tcp -m owner --socket-exists -m cgroup --path "/system.slice/kubelet.service" -m set --match-set ambient-node-probes-v4 dst -j SNAT --to-source 169.254.7.127',
  ], 'in iptables-save\'s form, so drift checks compare it as saved');
});

test('IPv6 probe SNAT: ip6tables SNATs to Istio\'s v6 address from its own ipset, the cgroup limit too; the pod accepts it before the redirect', (t) => {
  t.deepEqual(ipt.hostChainRules('/system.slice/kubelet.service', 6), [
    '-A AMBIENT_POSTRT -p tcp -m owner --socket-exists -m cgroup --path "/system.slice/kubelet.service" -m set --match-set ambient-node-probes-v6 dst -j SNAT --to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff',
  ]);
  const pod6 = ipt.podChainRules(6);
  const accept = pod6.indexOf('-A AMBIENT_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -j ACCEPT');
  t.true(accept >= 0, 'in ip6tables-save\'s form (/128)');
  t.true(accept < pod6.findIndex((l) => l.includes('REDIRECT --to-ports 15006')), 'before the inbound redirect');
  t.false(pod6.some((l) => l.includes('169.254.7.127')), 'no IPv4 address in ip6tables');
  t.false(ipt.podChainRules(4).some((l) => l.includes('fd16:')), 'no IPv6 address in iptables');
  const host = nft.hostTable();
  t.regex(host, /set probes-v6 \{\n\t\ttype ipv6_addr\n\t\}/);
  t.regex(host, /ip6 daddr @probes-v6 snat ip6 to fd16:9254:7127:1337:ffff:ffff:ffff:ffff/);
  const pre = nft.podTable().split('\n');
  const v6 = pre.indexOf('\t\tip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff meta l4proto tcp accept');
  t.true(v6 >= 0 && v6 < pre.findIndex((l) => l.includes('redirect to :15006')), 'nft: accepted before the inbound redirect');
});

test('probe targets: every address of a pod, both families (the backend puts each in its family\'s set)', (t) => {
  t.deepEqual(probeIps({ ips: ['10.244.0.5', 'fd00:10:244::5', 'not-an-ip'] }), ['10.244.0.5', 'fd00:10:244::5']);
});

test('nft listing normalisation drops the elements of both probe sets', (t) => {
  const listed = nft.hostTable()
    .replace('type ipv4_addr', 'type ipv4_addr\n\t\telements = { 10.0.0.1 }')
    .replace('type ipv6_addr', 'type ipv6_addr\n\t\telements = { fd00:10:244::5,\n\t\t\t     fd00:10:244::6 }');
  t.is(nft.normaliseListing(listed), nft.normaliseListing(nft.hostTable()));
});

test('iptables restore plan does not add a jump that is already there', (t) => {
  const input = ipt.restoreInput(savedOnce, POD, ipt.podChainRules(), ipt.podJumpRules());
  for (const jump of ipt.podJumpRules()) t.false(input.includes(jump), jump);
  t.true(input.includes(':AMBIENT_PRERT - [0:0]'), 'declaring our chains flushes and refills them');
});

test('iptables restore plan deletes duplicate jumps a third party added', (t) => {
  const dup = savedOnce.replace(ipt.podJumpRules()[0] ?? '', `${ipt.podJumpRules()[0]}\n${ipt.podJumpRules()[0]}`);
  const input = ipt.restoreInput(dup, POD, ipt.podChainRules(), ipt.podJumpRules());
  t.true(input.includes('-D PREROUTING -j AMBIENT_PRERT'));
});

test('iptables restore plan is skipped only when the table already holds exactly our rules and jumps', (t) => {
  const need = (save: string): boolean => ipt.restoreNeeded(save, POD, ipt.podChainRules(), ipt.podJumpRules());
  t.false(need(savedOnce), 'in place: nothing to restore');
  t.true(need(''), 'an empty table');
  t.true(need(savedOnce.replace(`${ipt.podChainRules()[6]}\n`, '')), 'a rule missing from our chain');
  t.true(need(`${savedOnce}\n-A AMBIENT_OUTPUT -p tcp -j ACCEPT`), 'a rule added to our chain');
  t.true(need(savedOnce.replace(ipt.podJumpRules()[0] ?? '', `${ipt.podJumpRules()[0]}\n${ipt.podJumpRules()[0]}`)), 'a duplicate jump');
  t.true(need(savedOnce.split('\n').filter((l) => l !== ipt.podJumpRules()[1]).join('\n')), 'a jump missing');
  const swapped = savedOnce.replace(ipt.podChainRules()[4] ?? '', 'X').replace(ipt.podChainRules()[5] ?? '', ipt.podChainRules()[4] ?? '').replace('X', ipt.podChainRules()[5] ?? '');
  t.true(need(swapped), 'our rules out of order');
});

test('probe set members are read from ipset save, that set only', (t) => {
  const save = [
    `create ${ipt.PROBE_IPSET} hash:ip family inet hashsize 1024 maxelem 65536 comment bucketsize 12 initval 0x09fa2f9c`,
    `add ${ipt.PROBE_IPSET} 10.244.0.7 comment "uid with spaces"`,
    `add ${ipt.PROBE_IPSET} 10.244.0.5 comment "3f1c"`,
    `add ${ipt.PROBE_IPSET6} fd00::5 comment "other set"`,
  ].join('\n');
  t.deepEqual(ipt.ipsetMembers(save, ipt.PROBE_IPSET), ['10.244.0.7', '10.244.0.5']);
  t.deepEqual(ipt.ipsetMembers('', ipt.PROBE_IPSET), []);
});

test('iptables drift: a clean save has no drift, in any chain order', (t) => {
  const d = ipt.diffOwned([...ipt.podJumpRules(), ...ipt.podChainRules()], ipt.ownedNatLines(savedOnce, POD));
  t.deepEqual(d, { missing: [], unexpected: [] });
});

test('iptables drift: flushed chains show every rule missing', (t) => {
  const flushed = savedOnce.split('\n').filter((l) => !l.startsWith('-A AMBIENT_')).join('\n');
  const d = ipt.diffOwned([...ipt.podJumpRules(), ...ipt.podChainRules()], ipt.ownedNatLines(flushed, POD));
  t.deepEqual([...d.missing].sort(), [...ipt.podChainRules()].sort());
  t.deepEqual(d.unexpected, []);
});

test('iptables drift: a rule inserted into our chain is unexpected', (t) => {
  const extra = `${savedOnce}\n-A AMBIENT_OUTPUT -p tcp -j ACCEPT`;
  const d = ipt.diffOwned([...ipt.podJumpRules(), ...ipt.podChainRules()], ipt.ownedNatLines(extra, POD));
  t.deepEqual(d.unexpected, ['-A AMBIENT_OUTPUT -p tcp -j ACCEPT']);
});

test('iptables drift: reordered rules inside a chain are drift', (t) => {
  const rules = ipt.podChainRules();
  const swapped = [...ipt.podJumpRules(), ...[...rules].reverse()];
  const d = ipt.diffOwned([...ipt.podJumpRules(), ...rules], swapped);
  t.true(d.missing.length > 0);
});

test('iptables removal deletes jumps and our chains only', (t) => {
  const input = ipt.removeInput(`${savedOnce}\n-A OUTPUT -j OTHER`, POD);
  t.true(input.includes('-D PREROUTING -j AMBIENT_PRERT'));
  t.true(input.includes('-X AMBIENT_OUTPUT'));
  t.false(input.includes('OTHER'));
});

test('nft listing normalisation ignores handles, counters-free blanks and set elements', (t) => {
  const listed = nft.hostTable().replace('type ipv4_addr', 'type ipv4_addr\n\t\telements = { 10.0.0.1, 10.0.0.2 }').replace('policy accept;', 'policy accept; # handle 3');
  t.is(nft.normaliseListing(listed), nft.normaliseListing(nft.hostTable()));
});

test('agent mark exemption and ports are what Istio users expect', (t) => {
  const rules = ipt.podChainRules().join('\n');
  t.regex(rules, /--mark 0x539\/0xfff -j ACCEPT/);
  t.regex(rules, /REDIRECT --to-ports 15001/);
  t.regex(rules, /REDIRECT --to-ports 15006/);
  t.regex(rules, /--dport 15008 -j ACCEPT/);
  t.regex(nft.podTable(), /redirect to :15001/);
});
