// End to end for what only the ebpf backend promises: pre-existing connections survive enrolment, fail closed both ways with
// the agent down, 15008 untouched, no conntrack, anti-spoof, fragmented SYNs dropped both ways, clean unenrol, rules read-back,
// re-adoption, repair, the start-up probe.
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { AGENT_MAIN, type TestbedPod } from '../testbed/index.js';
import type { RulesReply } from '../../agent/src/server/event-server.js';
import { createBackend } from '../../agent/src/redirect/backend.js';
import { EbpfUnavailableError, podCounters, probeKernel } from '../../agent/src/redirect/ebpf.js';
import { Netns } from '../../agent/src/platform/netns.js';
import { execa } from 'execa';
import { type ReadCounters, type StatName } from '../../agent/src/redirect/ebpf-config.js';
import { AMBIENT, agentPod, ask, ebpfCounters as counters, eventually, hasOurRules, meshClientPlainServer, podRules, startEcho } from './helpers.js';

const PY = '/usr/bin/python3';


/**
 * The counters as the attached build has them (one without a counter reads it as undefined): the fragment tests must
 * also run, and fail on what matters, against a program built before drop_fragment existed.
 */
function attachedCounters(pod: TestbedPod): ReadCounters {
  const c = podCounters(pod.netnsPath, pod.ifname);
  if (!c) throw new Error(`no ebpf programs attached in ${pod.key}`);
  return c;
}

/** How much counter `n` grew from `a` to `b`; NaN when the attached build does not have it. */
const grew = (a: ReadCounters, b: ReadCounters, n: StatName): number => (b[n] ?? NaN) - (a[n] ?? NaN);

/** Ids of the programs at our tc slots, from `tc filter show` (what an operator would look at). */
async function attachedIds(pod: TestbedPod): Promise<string[]> {
  const ids: string[] = [];
  for (const dir of ['ingress', 'egress']) {
    const out = String((await pod.exec('tc', ['filter', 'show', 'dev', pod.ifname, dir])).stdout);
    const m = /ambient_\w+.* id (\d+)/.exec(out);
    if (m?.[1]) ids.push(`${dir}:${m[1]}`);
  }
  return ids;
}

function scratchDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ambient-ebpf-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A line echo server: answers every line of a connection with "pong:<line>", keeping the connection open. */
async function startLineEcho(pod: TestbedPod, port: number): Promise<void> {
  void pod.spawn('ncat', ['-l', '-k', String(port), '--sh-exec', 'while read -r l; do echo "pong:$l"; done']).catch(() => undefined);
  await pod.waitForPort(port);
}

netnsTest.serial('[ebpf] a connection opened before enrolment survives it; new ones go through the agent', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, redirectMode: 'ebpf' });
  const dir = scratchDir(t);
  await tb.setNamespace('app', {});
  const [client, server] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep' },
    { node: 1, namespace: 'plain', name: 'web' },
  ]);
  if (!client || !server) throw new Error('pods missing');
  await startLineEcho(server, 9000);
  const ready = join(dir, 'ready');
  const go = join(dir, 'go');
  const conn = client.exec('bash', ['-c', [
    `exec 3<>/dev/tcp/${server.ip}/9000`,
    'echo before >&3; read -r a <&3; echo "$a"',
    `touch ${ready}`,
    `while [ ! -e ${go} ]; do sleep 0.05; done`,
    'echo after >&3; read -r b <&3; echo "$b"',
  ].join('\n')], { timeout: 30_000, reject: false });
  await eventually(async () => existsSync(ready), (v) => v, 10_000);
  t.true(existsSync(ready), 'the connection was up before enrolment');

  await tb.setNamespace('app', AMBIENT);
  const on = await eventually(() => agentPod(tb, client), (v) => v?.state === 'enrolled' && v.listening);
  t.is(on?.state, 'enrolled');
  writeFileSync(go, '');
  const r = await conn;
  t.is(String(r.stdout).trim(), 'pong:before\npong:after', `old connection kept working: ${String(r.stderr)}`);

  await startEcho(server, 8080);
  t.true((await ask(client, server.ip, 8080)).ok);
  const view = await agentPod(tb, client);
  t.is(view?.stats?.outbound.opened, 1, 'only the new connection went through the agent');
});

netnsTest.serial('[ebpf] with the agent down, SYNs are dropped both ways; no conntrack entries; 15008 is not redirected', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, redirectMode: 'ebpf' });
  await tb.setNamespace('app', AMBIENT);
  const [sleep, productpage, web, outsider] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep' },
    { node: 1, namespace: 'app', name: 'productpage' },
    { node: 1, namespace: 'plain', name: 'web' },
    { node: 1, namespace: 'plain', name: 'outsider' },
  ]);
  if (!sleep || !productpage || !web || !outsider) throw new Error('pods missing');
  await Promise.all([startEcho(sleep, 8080), startEcho(productpage, 9080), startEcho(web, 8080)]);

  // Mesh traffic: HBONE to productpage:15008 must reach the HBONE listener, not be steered to 15006.
  t.true((await ask(sleep, productpage.ip, 9080)).ok);
  const pp = await eventually(() => agentPod(tb, productpage), (v) => (v?.stats?.inbound.hbone ?? 0) >= 1);
  t.is(pp?.stats?.inbound.hbone, 1, 'arrived on 15008 as HBONE');
  t.is(counters(productpage).in_assigned, 0, 'the HBONE SYN to 15008 was not assigned to 15006');
  t.true(counters(sleep).out_assigned >= 1);
  t.true((await ask(sleep, web.ip, 8080)).ok, 'outbound plaintext passthrough');
  t.true((await ask(outsider, sleep.ip, 8080)).ok, 'inbound plaintext');
  t.true(counters(sleep).in_assigned >= 1);

  const ct = await sleep.exec('conntrack', ['-L'], { reject: false });
  t.is(String(ct.stdout).trim(), '', `no conntrack entries in the pod: ${String(ct.stdout)}${String(ct.stderr)}`);

  const before = counters(sleep);
  await tb.agent(0).kill('SIGKILL');
  // One drop counter serves both directions: read it after each attempt so each direction must add its own drops.
  const out = await ask(sleep, web.ip, 8080, 'out-while-down');
  const between = counters(sleep);
  const inb = await ask(outsider, sleep.ip, 8080, 'in-while-down');
  const after = counters(sleep);
  t.false(out.ok, 'outbound does not bypass');
  t.false(inb.ok, 'inbound does not bypass');
  t.notRegex(`${out.output}\n${inb.output}`, /refused/i, 'SYNs are dropped, not answered');
  t.true(between.drop_no_listener > before.drop_no_listener, `the outbound SYNs were dropped: ${JSON.stringify(between)}`);
  t.true(after.drop_no_listener > between.drop_no_listener, `the inbound SYNs were dropped: ${JSON.stringify(after)}`);
});

netnsTest.serial('[ebpf] a packet spoofing the pod\'s own source is dropped at ingress', async (t) => {
  const tb = await withTestbed(t, { nodes: 1, redirectMode: 'ebpf' });
  await tb.setNamespace('app', AMBIENT);
  const [victim, attacker] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'victim' },
    { node: 0, namespace: 'plain', name: 'attacker' },
  ]);
  if (!victim || !attacker) throw new Error('pods missing');
  t.is(counters(victim).drop_spoofed, 0);
  const script = [
    'import socket, struct, sys',
    'src, dst = sys.argv[1], sys.argv[2]',
    's = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)',
    "ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 0, 0, 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))",
    "tcp = struct.pack('!HHLLBBHHH', 40000, 8080, 1, 0, 0x50, 0x02, 64240, 0, 0)",
    'for _ in range(3): s.sendto(ip + tcp, (dst, 0))',
  ].join('\n');
  await attacker.exec(PY, ['-c', script, victim.ip, victim.ip]);
  const c = await eventually(async () => counters(victim), (v) => v.drop_spoofed >= 3, 5_000);
  t.true(c.drop_spoofed >= 3, JSON.stringify(c));
  t.is(c.in_assigned, 0, 'nothing was steered to the agent');
});

/**
 * A hand-built TCP SYN from a raw socket (IP_HDRINCL), whole or as two IP fragments, then what comes back:
 * argv: src dst dport split complete. split = bytes of the 32-byte TCP header in the first fragment (0: not fragmented).
 * complete=1: on a SYN-ACK, finish the handshake and send "frag-attack\n", then collect the reply until FIN or RST
 * (the sender's own kernel must not reset the connection: the caller drops its RSTs with iptables).
 * Prints {"sport", "synack", "reply", "fin", "rst"} as JSON.
 */
const RAW_SYN = String.raw`
import json, random, select, socket, struct, sys, time
src, dst, dport, split, complete = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == '1'
S, D = socket.inet_aton(src), socket.inet_aton(dst)
M = 0xffffffff
sport, isn, ident = random.randint(40000, 60000), random.randint(0, M), random.randint(1, 0xffff)

def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def tcp(seq, ack, flags, opts=b'', payload=b''):
    h = struct.pack('!HHLLBBHHH', sport, dport, seq & M, ack & M, ((20 + len(opts)) // 4) << 4, flags, 64240, 0, 0) + opts
    c = csum(S + D + struct.pack('!BBH', 0, 6, len(h) + len(payload)) + h + payload)
    return h[:16] + struct.pack('!H', c) + h[18:] + payload

def ip(ident, frag, body):
    return struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(body), ident, frag, 64, 6, 0, S, D) + body

out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
send = lambda pkt: out.sendto(pkt, (dst, 0))

def recv(timeout):
    end = time.time() + timeout
    while True:
        left = end - time.time()
        if left <= 0 or not select.select([rx], [], [], left)[0]: return None
        pkt = rx.recv(65535)
        pkt = pkt[:struct.unpack('!H', pkt[2:4])[0]]
        ihl = (pkt[0] & 15) * 4
        if pkt[12:16] != D or pkt[16:20] != S: continue
        sp, dp, seq, ack, off, flags = struct.unpack('!HHLLBB', pkt[ihl:ihl + 14])
        if sp == dport and dp == sport: return seq, ack, flags, pkt[ihl + (off >> 4) * 4:]

# MSS, NOP, NOP, SACK permitted, NOP, window scale: a 32-byte header, split 24 + 8 or 16 + 16.
syn = tcp(isn, 0, 0x02, struct.pack('!BBH', 2, 4, 1460) + bytes([1, 1, 4, 2, 1, 3, 3, 7]))
if split == 0:
    send(ip(ident, 0x4000, syn))
else:
    send(ip(ident, 0x2000, syn[:split]))
    send(ip(ident, split // 8, syn[split:]))
res = {'sport': sport, 'synack': False, 'reply': '', 'fin': False, 'rst': False}
end = time.time() + 3
while True:
    got = recv(end - time.time())
    if got is None: break
    seq, ack, flags, _ = got
    if flags & 0x12 == 0x12 and ack == (isn + 1) & M:
        res['synack'] = True
        break
if res['synack'] and complete:
    rcv, msg, buf = seq + 1, b'frag-attack\n', b''
    send(ip(0, 0x4000, tcp(isn + 1, rcv, 0x10)))
    send(ip(0, 0x4000, tcp(isn + 1, rcv, 0x18, payload=msg)))
    end = time.time() + 3
    while True:
        got = recv(end - time.time())
        if got is None: break
        buf += got[3]
        if got[2] & 0x04: res['rst'] = True; break
        if got[2] & 0x01: res['fin'] = True; break
    res['reply'] = buf.decode('utf-8', 'replace')
print(json.dumps(res))
`;

interface RawSynResult {
  sport: number;
  synack: boolean;
  reply: string;
  fin: boolean;
  rst: boolean;
}

/** Sends RAW_SYN from `from` to ip:port; split is the TCP header bytes in the first fragment (0: one whole packet). */
async function rawSyn(from: TestbedPod, ip: string, port: number, split: 0 | 16 | 24, complete = false): Promise<RawSynResult> {
  const r = await from.exec(PY, ['-c', RAW_SYN, from.ip, ip, String(port), String(split), complete ? '1' : '0'], { timeout: 15_000 });
  return JSON.parse(String(r.stdout)) as RawSynResult;
}

/** The app: a TCP server on `port` that logs the peer of every connection it accepts, answers "pong:<line> from <peer>" and closes. */
async function startAcceptLog(pod: TestbedPod, port: number, log: string): Promise<() => string[]> {
  writeFileSync(log, '');
  const script = [
    'import socket, sys',
    's = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)',
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(16)",
    'while True:',
    '    c, a = s.accept()',
    "    open(sys.argv[2], 'a').write('%s:%d\\n' % a)",
    '    c.settimeout(2)',
    '    try:',
    "        line = c.recv(1024).strip(); c.sendall(b'pong:' + line + (' from %s\\n' % a[0]).encode())",
    '    except OSError: pass',
    '    c.close()',
  ].join('\n');
  void pod.spawn(PY, ['-c', script, String(port), log]).catch(() => undefined);
  await pod.waitForPort(port);
  return () => readFileSync(log, 'utf8').split('\n').filter(Boolean);
}

/** Keeps the sender's kernel from resetting a handshake its raw socket carries on (only in non-mesh pods: nothing of ours there). */
async function dropOwnResets(pod: TestbedPod, ip: string, port: number): Promise<void> {
  await pod.exec('iptables', ['-w', '-A', 'OUTPUT', '-p', 'tcp', '-d', ip, '--dport', String(port), '--tcp-flags', 'RST', 'RST', '-j', 'DROP']);
}

netnsTest.serial('[ebpf] a SYN in IP fragments never reaches the app under STRICT (same node and across nodes); whole, the agent refuses it', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, redirectMode: 'ebpf' });
  const dir = scratchDir(t);
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('legacy', {});
  const [productpage, neighbour, remote] = await tb.addPods([
    { node: 1, namespace: 'app', name: 'productpage', labels: { app: 'productpage' } },
    { node: 1, namespace: 'legacy', name: 'neighbour' },
    { node: 0, namespace: 'legacy', name: 'remote' },
  ]);
  if (!productpage || !neighbour || !remote) throw new Error('pods missing');
  const accepted = await startAcceptLog(productpage, 9080, join(dir, 'accepted'));
  t.true((await ask(neighbour, productpage.ip, 9080, 'permissive')).ok, 'the app answers while PERMISSIVE');
  await tb.writeWorkload('pa-strict.yaml', {
    apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication',
    metadata: { name: 'strict', namespace: 'app' },
    spec: { mtls: { mode: 'STRICT' } },
  });
  t.false((await eventually(() => ask(neighbour, productpage.ip, 9080, 'strict'), (a) => !a.ok, 6000)).ok, 'STRICT refuses plaintext');
  await Promise.all([dropOwnResets(neighbour, productpage.ip, 9080), dropOwnResets(remote, productpage.ip, 9080)]);
  const apps = accepted().length;
  const refused = async () => (await agentPod(tb, productpage))?.stats?.inbound.refused ?? 0;

  // The attack: a non-mesh pod on the same node sends the SYN as two fragments (24 + 8 bytes of TCP header).
  const c0 = attachedCounters(productpage);
  const frag = await rawSyn(neighbour, productpage.ip, 9080, 24, true);
  const c1 = attachedCounters(productpage);
  t.false(frag.synack, `nobody answers a fragmented SYN: ${JSON.stringify(frag)}`);
  t.notRegex(frag.reply, /pong/, 'the app never answered');
  t.is(grew(c0, c1, 'drop_fragment'), 2, `both fragments dropped: ${JSON.stringify(c1)}`);
  t.is(grew(c0, c1, 'in_assigned'), 0, 'no fragment was assigned to a listener');

  // The same SYN whole: steered to the agent (it answers for the app's address), refused under STRICT.
  const refusedBefore = await refused();
  const whole = await rawSyn(neighbour, productpage.ip, 9080, 0, true);
  const c2 = attachedCounters(productpage);
  t.true(whole.synack, `the agent's listener answers the whole SYN: ${JSON.stringify(whole)}`);
  t.true(whole.fin || whole.rst, `and closes it: ${JSON.stringify(whole)}`);
  t.notRegex(whole.reply, /pong/);
  t.is(grew(c1, c2, 'in_assigned'), 1, 'assigned to the agent');
  t.is((await eventually(refused, (n) => n > refusedBefore, 5000)) - refusedBefore, 1, 'refused by the agent (STRICT)');
  t.is(grew(c1, c2, 'drop_fragment'), 0);

  // From the other node the nodes' conntrack reassembles the fragments on the way, so the pod may get the SYN whole:
  // then it is the agent that answers and refuses it, never the app.
  const refusedFar = await refused();
  const far = await rawSyn(remote, productpage.ip, 9080, 24, true);
  const c3 = attachedCounters(productpage);
  t.notRegex(far.reply, /pong/, `from another node: ${JSON.stringify(far)}`);
  if (far.synack) {
    t.true(far.fin || far.rst, `from another node: ${JSON.stringify(far)}`);
    t.is(grew(c2, c3, 'in_assigned'), 1, 'arrived whole and was assigned to the agent');
    t.is((await eventually(refused, (n) => n > refusedFar, 5000)) - refusedFar, 1, 'refused by the agent (STRICT)');
  } else {
    t.is(grew(c2, c3, 'drop_fragment'), 2, `arrived in fragments and was dropped: ${JSON.stringify(c3)}`);
  }
  t.deepEqual(accepted().slice(apps), [], 'the app accepted nothing after STRICT');
});

netnsTest.serial('[ebpf] an app cannot carry an outbound SYN past the capture in IP fragments', async (t) => {
  const tb = await withTestbed(t, { nodes: 1, redirectMode: 'ebpf' });
  const dir = scratchDir(t);
  await tb.setNamespace('app', AMBIENT);
  const [client, web] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep' },
    { node: 0, namespace: 'plain', name: 'web' },
  ]);
  if (!client || !web) throw new Error('pods missing');
  const accepted = await startAcceptLog(web, 8080, join(dir, 'accepted'));
  t.true((await ask(client, web.ip, 8080)).ok, 'outbound passthrough through the agent');
  const served = accepted().length;

  // 16 + 16: the first fragment is too short for a TCP header (the tiny-fragment trick); 24 + 8: it holds the SYN.
  for (const split of [16, 24] as const) {
    const before = attachedCounters(client);
    const r = await rawSyn(client, web.ip, 8080, split);
    const after = attachedCounters(client);
    t.false(r.synack, `split ${split}: the server never saw the SYN: ${JSON.stringify(r)}`);
    t.is(grew(before, after, 'drop_fragment'), 2, `split ${split}: both fragments dropped at egress: ${JSON.stringify(after)}`);
    t.is(grew(before, after, 'out_redirected'), 0);
  }
  // The same SYN whole is captured: re-injected and assigned to the agent's 15001, which answers for the server.
  const before = attachedCounters(client);
  const whole = await rawSyn(client, web.ip, 8080, 0);
  const after = attachedCounters(client);
  t.true(whole.synack, JSON.stringify(whole));
  t.is(grew(before, after, 'out_redirected'), 1);
  t.is(grew(before, after, 'out_assigned'), 1);
  t.is(accepted().length, served, 'the server accepted nothing from the raw sockets');
});

netnsTest.serial('[ebpf] rules read-back shows programs, maps and routing; after unenrol nothing of ours is left', async (t) => {
  const tb = await withTestbed(t, { nodes: 1, redirectMode: 'ebpf' });
  await tb.setNamespace('app', AMBIENT);
  const pod = await tb.addPod({ node: 0, namespace: 'app', name: 'sleep' });
  const backend = await createBackend('ebpf', { preserveSource: true });
  await backend.prepare();
  const ctx = { ifname: pod.ifname, ips: [pod.ip] };
  const podNetns = Netns.open(pod.netnsPath);
  t.teardown(() => podNetns.close());
  const drift = await backend.verifyPod(podNetns, ctx);
  t.deepEqual({ missing: drift.missing, unexpected: drift.unexpected }, { missing: [], unexpected: [] });
  const dev = pod.ifname;
  const want = [
    new RegExp(`^tc ingress ${dev}: prog ambient_in tag [0-9a-f]{16} id \\d+$`),
    new RegExp(`^tc egress ${dev}: prog ambient_out tag [0-9a-f]{16} id \\d+$`),
    new RegExp(`^map ambient_cfg: v1 pod ${pod.ip.replace(/\./g, '\\.')} id \\d+$`),
    /^map ambient_stats: percpu counters id \d+ \(out_redirected=\d+ .*drop_spoofed=\d+ drop_fragment=\d+ drop_ipv6=\d+ out_orphaned=\d+\)$/,
    /^ip rule 100: from all fwmark 0x1000\/0x1000 lookup 100$/,
    /^route table 100: local default dev lo scope host$/,
    new RegExp(`^sysctl net.ipv4.conf.${dev}.accept_local=1$`),
  ];
  t.is(drift.actual.length, want.length, drift.actual.join('\n'));
  want.forEach((re, i) => t.regex(drift.actual[i] ?? '', re));
  t.deepEqual(backend.expectedPodRules(ctx).length, want.length);
  // The ids and tags are the kernel's own: bpftool agrees.
  const id = /id (\d+)$/.exec(drift.actual[0] ?? '')?.[1] ?? '';
  const tag = / tag ([0-9a-f]+)/.exec(drift.actual[0] ?? '')?.[1] ?? '';
  const shown = String((await pod.exec('bpftool', ['prog', 'show', 'id', id])).stdout);
  t.regex(shown, new RegExp(`^${id}: sched_cls\\s+name ambient_in\\s+tag ${tag}`, 'm'));
  t.true(hasOurRules(await podRules(pod)));

  // The operator's view: `ambient-node rules` lists the same programs (ids, tags), maps and routing pieces, in sync.
  const cliRun = (...a: string[]) => tb.nodeExec(0, process.execPath, [AGENT_MAIN, 'rules', 'app/sleep', ...a, '--socket', tb.node(0).socketPath], { reject: false });
  const human = await cliRun();
  t.is(human.exitCode, 0, String(human.stdout));
  t.regex(String(human.stdout), /state enrolled, backend ebpf, agent listeners open/);
  t.regex(String(human.stdout), new RegExp(`tc ingress ${dev}: prog ambient_in`));
  t.regex(String(human.stdout), /^\s+in sync$/m);
  const report = JSON.parse(String((await cliRun('-o', 'json')).stdout)) as RulesReply;
  t.deepEqual(report.attachments[0]?.actual.map((l) => l.replace(/ \(out_redirected=.*\)$/, '')), drift.actual.map((l) => l.replace(/ \(out_redirected=.*\)$/, '')));
  t.true(report.attachments[0]?.ok);

  // Late unenrolment (label removed) leaves no filter, rule, route, qdisc or sysctl of ours (DEL leaves them to the namespace).
  await tb.setNamespace('app', {});
  t.is((await eventually(() => agentPod(tb, pod), (v) => v?.state === 'skipped'))?.state, 'skipped');
  const rules = await podRules(pod);
  t.false(hasOurRules(rules), rules.ebpf);
  t.regex(rules.ebpf, /accept_local=0/);
  const qdisc = String((await pod.exec('tc', ['qdisc', 'show', 'dev', dev])).stdout);
  t.notRegex(qdisc, /clsact/);
  const again = await backend.verifyPod(podNetns, ctx);
  podNetns.close();
  t.deepEqual(again.actual, []);
});

netnsTest.serial('[ebpf] restart re-adopts attached programs without re-attaching; CHECK and repair restore a detached one', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, redirectMode: 'ebpf', agentArgs: ['--repair-interval-ms', '1000'] });
  const { client, server } = await meshClientPlainServer(tb);
  const ids = await attachedIds(client);
  t.is(ids.length, 2);

  await tb.agent(0).kill('SIGKILL');
  t.deepEqual(await attachedIds(client), ids, 'programs stay attached while the agent is down');
  await tb.agent(0).start();
  const up = await eventually(() => ask(client, server.ip, 8080, 'after-restart'), (a) => a.ok, 10_000);
  t.true(up.ok, up.output);
  t.deepEqual(await attachedIds(client), ids, 'the same programs: adopted, never detached or replaced');

  // Drift: someone deletes the ingress filter; the repair loop puts it back (CHECK failing on a deleted filter is
  // covered for every backend in capture.test.ts).
  await client.exec('tc', ['filter', 'del', 'dev', client.ifname, 'ingress']);
  const repaired = await eventually(() => attachedIds(client), (v) => v.length === 2, 10_000);
  t.is(repaired.length, 2, 'ingress program restored');
  const c = (await tb.agent(0).request('GET', '/v1/pods')).body as { counters: { ruleRepairs: number } };
  t.true(c.counters.ruleRepairs >= 1);
  t.true((await ask(client, server.ip, 8080, 'after-repair')).ok);
  await t.notThrowsAsync(tb.checkPod(client));

  // The routing pieces drift too: the policy rule is deleted; repair adds it back (and traffic works again).
  await client.exec('ip', ['rule', 'del', 'pref', '100']);
  const rule = await eventually(async () => String((await client.exec('ip', ['rule', 'show', 'pref', '100'])).stdout), (v) => v.includes('fwmark 0x1000/0x1000 lookup 100'), 10_000);
  t.regex(rule, /fwmark 0x1000\/0x1000 lookup 100/);
  t.true((await eventually(() => ask(client, server.ip, 8080, 'after-rule-repair'), (a) => a.ok, 10_000)).ok);
});

netnsTest.serial('[ebpf] the start-up probe names what is missing and shows verifier rejections verbatim', async (t) => {
  const dir = scratchDir(t);
  const missing = t.throws(() => probeKernel(join(dir, 'absent.o')), { instanceOf: EbpfUnavailableError });
  t.regex(missing?.message ?? '', /--redirect-mode ebpf cannot run here: .*absent\.o is missing: build it with scripts\/build\.sh/);
  // A program the verifier must reject: a packet read without a bounds check.
  writeFileSync(join(dir, 'bad.c'), [
    '#include <linux/bpf.h>',
    '#include <bpf/bpf_helpers.h>',
    'SEC("tc") int ambient_in(struct __sk_buff *skb) { unsigned char *d = (void *)(long)skb->data; return d[20]; }',
    'SEC("tc") int ambient_out(struct __sk_buff *skb) { return 0; }',
    'char LICENSE[] SEC("license") = "GPL";',
  ].join('\n'));
  await execa('clang', ['-O2', '-g', '-target', 'bpf', `-I/usr/include/${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu`, '-c', join(dir, 'bad.c'), '-o', join(dir, 'bad.o')]);
  const rejected = t.throws(() => probeKernel(join(dir, 'bad.o')), { instanceOf: EbpfUnavailableError });
  const msg = rejected?.message ?? '';
  t.regex(msg, /bpf_object__load: Permission denied/);
  t.regex(msg, /verifier log for ambient_in:/);
  t.regex(msg, /invalid access to packet, off=20 size=1/);
  t.regex(probeKernel(join(process.cwd(), 'dist/bpf/redirect.o')).in, /^[0-9a-f]{16}$/);
});
