// Unit tests for the ebpf backend's pure pieces: the config map layout, the routing scripts' input checks, and the
// expected/actual notation with its drift comparison (ids never count, tags count when known).
import { readFileSync } from 'node:fs';
import test from 'ava';
import {
  CFG_SIZE, checkIfname, comparable, decodeConfig, diffLines, encodeConfig, expectedLines, podAddresses, acceptLocalPath, REINJECT_RULE,
  routingLines, routingReadScript, STAT_NAMES, statsLine, sumPerCpu,
} from '../../agent/src/redirect/ebpf-config.js';
import { createBackend } from '../../agent/src/redirect/backend.js';

const POD = { ifname: 'eth0', ips: ['10.1.0.7'] };
const TAGS = { in: '0123456789abcdef', out: 'fedcba9876543210' };

test('config encodes the pod address in network order and decodes back', (t) => {
  const b = encodeConfig({ ifindex: 3, podIp4: '10.1.0.7', flags: 0 });
  t.is(b.length, CFG_SIZE);
  t.deepEqual([...b.subarray(8, 12)], [10, 1, 0, 7]);
  t.deepEqual(decodeConfig(b), { version: 1, ifindex: 3, podIp4: '10.1.0.7', flags: 0 });
});

test('the ebpf path takes the first IPv4 address, the first IPv6 one only with --capture-ipv6, and refuses a pod with neither clearly', (t) => {
  t.deepEqual(podAddresses({ ifname: 'eth0', ips: ['fd00::7', '10.1.0.7'] }, false), { ip4: '10.1.0.7' });
  t.deepEqual(podAddresses({ ifname: 'eth0', ips: ['fd00::7', '10.1.0.7', 'fd00::8'] }, true), { ip4: '10.1.0.7', ip6: 'fd00::7' });
  t.deepEqual(podAddresses({ ifname: 'eth0', ips: ['fd00::7'] }, true), { ip6: 'fd00::7' }, 'IPv6-only pod with capture');
  t.deepEqual(podAddresses({ ifname: 'eth0', ips: ['fd00::7'] }, false), {}, 'IPv6-only pod without capture: nothing steered, its IPv6 TCP refused');
  t.throws(() => podAddresses({ ifname: 'eth0', ips: [] }, true), { message: /needs an IPv4 or IPv6 pod address; the pod has none/ });
});

test('an IPv6 address in the config sets CFG_CAPTURE_IPV6 and is written in network order at offset 16', (t) => {
  const b = encodeConfig({ ifindex: 3, podIp4: '10.1.0.7', flags: 0, podIp6: 'fd00:10:244::7' });
  t.is(b.length, CFG_SIZE);
  t.is(b.readUInt32LE(12), 1);
  t.deepEqual([...b.subarray(16, 32)], [0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
  t.deepEqual(decodeConfig(b), { version: 1, ifindex: 3, podIp4: '10.1.0.7', flags: 1, podIp6: 'fd00:10:244::7' });
  const v6only = decodeConfig(encodeConfig({ ifindex: 4, podIp4: '0.0.0.0', flags: 0, podIp6: 'fd00::9' }));
  t.deepEqual(v6only, { version: 1, ifindex: 4, podIp4: '0.0.0.0', flags: 1, podIp6: 'fd00::9' });
  t.is(encodeConfig({ ifindex: 3, podIp4: '10.1.0.7', flags: 1 }).readUInt32LE(12), 0, 'the flag never stands without an address');
});

test('the flag on and layout unchanged: the IPv6 address, rule and route are expected only when captured', (t) => {
  const dual = { ifname: 'eth0', ips: ['10.1.0.7', 'fd00::7'] };
  t.deepEqual(expectedLines(dual, TAGS, false), expectedLines(POD, TAGS), 'flag off: exactly the IPv4 pieces');
  const on = expectedLines(dual, TAGS, true);
  t.true(on.includes('map ambient_cfg: v1 pod 10.1.0.7 ipv6 fd00::7'));
  t.true(on.includes('ip6: ip rule 100: from all fwmark 0x1000/0x1000 lookup 100'));
  t.true(on.includes('ip6: route table 100: local default dev lo metric 1024 pref medium'));
  t.true(expectedLines({ ifname: 'eth0', ips: ['fd00::7'] }, TAGS, true).includes('map ambient_cfg: v1 pod 0.0.0.0 ipv6 fd00::7'));
  t.true(routingReadScript('eth0', true).includes('ip -6 rule show pref 100'));
  t.false(routingReadScript('eth0').includes('ip -6'));
  const out = '100:\tfrom all fwmark 0x1000/0x1000 lookup 100\n@@ambient@@\nlocal default dev lo scope host \n@@ambient@@\n1\n'
    + '@@ambient@@\n100:\tfrom all fwmark 0x1000/0x1000 lookup 100\n@@ambient@@\nlocal default dev lo metric 1024 pref medium\n';
  t.deepEqual(diffLines(on, [...on.slice(0, 4).map((l, i) => `${l} id ${i}`), ...routingLines(out, 'eth0')]), { missing: [], unexpected: [] });
});

test('interface names that could break a script are refused', (t) => {
  t.is(checkIfname('eth0'), 'eth0');
  for (const bad of ['', 'eth0; reboot', 'a'.repeat(16), '$(x)']) t.throws(() => checkIfname(bad), { message: /invalid interface name/ });
  t.throws(() => acceptLocalPath('../../x'));
});

const actual = [
  'tc ingress eth0: prog ambient_in tag 0123456789abcdef id 42',
  'tc egress eth0: prog ambient_out tag fedcba9876543210 id 43',
  'map ambient_cfg: v1 pod 10.1.0.7 id 7',
  'map ambient_stats: percpu counters id 8 (out_redirected=3 out_assigned=3 in_assigned=0 drop_no_listener=0 drop_spoofed=0 drop_fragment=0)',
  'ip rule 100: from all fwmark 0x1000/0x1000 lookup 100',
  'route table 100: local default dev lo scope host',
  'sysctl net.ipv4.conf.eth0.accept_local=1',
];

test('an intact pod has no drift whatever the kernel ids are', (t) => {
  t.deepEqual(diffLines(expectedLines(POD, TAGS), actual), { missing: [], unexpected: [] });
  const otherIds = actual.map((l) => l.replace(/ id \d+$/, ' id 999'));
  t.deepEqual(diffLines(expectedLines(POD, TAGS), otherIds), { missing: [], unexpected: [] });
});

test('a detached program is missing; a program of another build is both missing and unexpected', (t) => {
  const detached = actual.filter((l) => !l.startsWith('tc egress'));
  t.deepEqual(diffLines(expectedLines(POD, TAGS), detached).missing, ['tc egress eth0: prog ambient_out tag fedcba9876543210']);
  const old = actual.map((l) => l.replace('0123456789abcdef', '1111111111111111'));
  const d = diffLines(expectedLines(POD, TAGS), old);
  t.deepEqual(d.missing, ['tc ingress eth0: prog ambient_in tag 0123456789abcdef']);
  t.deepEqual(d.unexpected, ['tc ingress eth0: prog ambient_in tag 1111111111111111 id 42']);
});

test('without known tags only names count', (t) => {
  t.deepEqual(diffLines(expectedLines(POD), actual), { missing: [], unexpected: [] });
  t.is(comparable('tc ingress eth0: prog ambient_in tag 0123456789abcdef id 42', false), 'tc ingress eth0: prog ambient_in');
});

test('a config map for another address is drift', (t) => {
  const moved = actual.map((l) => l.replace('pod 10.1.0.7', 'pod 10.1.0.8'));
  t.deepEqual(diffLines(expectedLines(POD, TAGS), moved).missing, ['map ambient_cfg: v1 pod 10.1.0.7']);
});

test('per-CPU counters are summed over every CPU slot', (t) => {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(2n, 0);
  b.writeBigUInt64LE(5n, 16);
  t.is(sumPerCpu(b), 7);
});

test('the counter names mirror the stats enum of bpf/redirect.c, in order', (t) => {
  const src = readFileSync(new URL('../../bpf/redirect.c', import.meta.url), 'utf8');
  const body = /enum \{\s*(STAT_[\s\S]*?)STAT_MAX,/.exec(src)?.[1] ?? '';
  const names = [...body.matchAll(/^\s*STAT_(\w+),/gm)].map((m) => m[1]?.toLowerCase());
  t.deepEqual(names, [...STAT_NAMES]);
  t.is(STAT_NAMES.at(-1), 'out_orphaned');
});

test('the stats line shows every counter, and only those an older program\'s shorter map has', (t) => {
  const all = { out_redirected: 1, out_assigned: 1, in_assigned: 2, drop_no_listener: 0, drop_spoofed: 0, drop_fragment: 4, drop_ipv6: 3, out_orphaned: 5 };
  t.is(statsLine(8, all), 'map ambient_stats: percpu counters id 8 (out_redirected=1 out_assigned=1 in_assigned=2 drop_no_listener=0 drop_spoofed=0 drop_fragment=4 drop_ipv6=3 out_orphaned=5)');
  const { drop_fragment: _f, drop_ipv6: _v, out_orphaned: _o, ...older } = all;
  t.is(statsLine(8, older), 'map ambient_stats: percpu counters id 8 (out_redirected=1 out_assigned=1 in_assigned=2 drop_no_listener=0 drop_spoofed=0)');
  t.is(statsLine(), 'map ambient_stats: percpu counters');
  t.deepEqual(diffLines(expectedLines(POD), [statsLine(8, older)]).missing.filter((l) => l.startsWith('map ambient_stats')), [], 'counters never count as drift');
});

test('routing pieces are read back into the same notation', (t) => {
  t.true(routingReadScript('eth0').includes('net.ipv4.conf.eth0.accept_local'));
  const out = '100:\tfrom all fwmark 0x1000/0x1000 lookup 100\n@@ambient@@\nlocal default dev lo scope host \n@@ambient@@\n1\n';
  t.deepEqual(routingLines(out, 'eth0'), actual.slice(4));
  t.deepEqual(routingLines('@@ambient@@\n@@ambient@@\n0\n', 'eth0'), []);
});

test('without a pod the expected lines show placeholders for the interface and the address', async (t) => {
  const lines = (await createBackend('ebpf', { preserveSource: true })).expectedPodRules();
  t.is(lines[0], 'tc ingress <ifname>: prog ambient_in');
  t.true(lines.includes('map ambient_cfg: v1 pod <pod-ip>'));
  t.true(lines.includes('sysctl net.ipv4.conf.<ifname>.accept_local=1'));
});

test('the re-injection rule: pref 100, the outbound mark, the local table', (t) => {
  t.deepEqual(REINJECT_RULE, { pref: 100, mark: 0x1000, mask: 0x1000, table: 100 });
});
