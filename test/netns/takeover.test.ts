// Upgrades without dropping connections (issue 15, phase 1): a second agent on the same state dir and socket takes
// over from the running one while new connections arrive every 20 ms; a long-lived HBONE stream drains; a third agent is refused.
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { signalGroup, type AgentLogRecord, type AgentProcess } from '../testbed/agent-process.js';
import {
  AGENT_MAIN, ECHO_PORT, ECHO_SERVER, PY, agentNodePid, findLog, procFdCount, procRssKb, startConnectLoop, successorOf, type RedirectMode, type Testbed,
  type TestbedPod,
} from '../testbed/index.js';
import { AGENT_NODE_FLAGS } from '../testbed/repo.js';
import { captureFabric, captureNodeLink, countOccurrences } from './capture-wire.js';
import type { PodView } from '../../agent/src/reconcile/enroller.js';
import { AMBIENT, eventually, hostVeth, listeningPorts, podRules } from './helpers.js';

const DRAIN_SECONDS = 4;
/** Take-overs in a row in the leak check, on every backend (each costs ~4 s of CI). */
const TAKEOVERS = 20;

/** One long-lived connection: a line (argv[3], default x) every 100 ms, echo checked; prints twice a second and how it ended. */
const LONG_STREAM = `
import socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
line = (sys.argv[3] if len(sys.argv) > 3 else 'x').encode() + b'\\n'
s = socket.create_connection((ip, port), timeout=5)
print('connected', flush=True)
n, last = 0, time.time()
try:
    while True:
        s.sendall(line); got = b''
        while not got.endswith(b'\\n'):
            d = s.recv(4096)
            if not d: raise OSError('eof')
            got += d
        n += 1
        if time.time() - last >= 0.5:
            print('echo %d %.3f' % (n, time.time()), flush=True); last = time.time()
        time.sleep(0.1)
except OSError as e:
    print('ended %s %s %.3f after %d echoes' % (type(e).__name__, e, time.time(), n), flush=True)
`;

/** Binds argv[1]:argv[2] with SO_REUSEPORT and listens; prints 'bound' or the errno's name. */
const REUSEPORT_BIND = `
import errno, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8); print('bound')
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
`;

/** Opens argv[3] connections to argv[1]:argv[2], sends a line on each, prints 'queued', then reads every echo (40 s each); prints a JSON tally. */
const QUEUED_CONNECTIONS = `
import json, socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(n):
    s = socket.create_connection((ip, port), timeout=5); s.sendall(b'q%d\\n' % i); socks.append(s)
print('queued', flush=True)
ok, errors = 0, []
for i, s in enumerate(socks):
    s.settimeout(40); got = b''
    try:
        while not got.endswith(b'\\n'):
            d = s.recv(100)
            if not d: raise OSError('eof after %r' % got)
            got += d
        print('got %d' % i, flush=True)
        if got == b'q%d\\n' % i: ok += 1
        else: errors.append('%d: %r' % (i, got))
    except OSError as e:
        errors.append('%d: %s' % (i, e))
print(json.dumps({'ok': ok, 'errors': errors}), flush=True)
`;

/**
 * The agent command run with /proc/sys read-only in its own mount namespace, as in an unprivileged container; it refuses
 * to start when a write to /proc/sys would still succeed, so the test cannot pass on a writable one.
 */
const READ_ONLY_PROC_SYS = [
  'unshare', '--mount', '--propagation', 'private', '--', '/bin/sh', '-c',
  'mount --bind -o ro /proc/sys /proc/sys || exit 3; if (echo 1 > /proc/sys/net/ipv4/tcp_migrate_req) 2>/dev/null; then echo "/proc/sys is writable" >&2; exit 3; fi; exec "$@"',
  'agent-ro-proc-sys', process.execPath, ...AGENT_NODE_FLAGS, AGENT_MAIN,
];

const TAKEN_OVER = 'take-over complete: socket published, predecessor told to stop accepting';
const DRAINING = 'successor ready: listeners closed, draining';
const IDLE = 'handed over and drained; idle (not ready, no locks, no listeners) until SIGTERM';

/**
 * Starts a successor for `current` (same flags, its own log) and waits until it has taken over and the predecessor
 * has drained and exited. Returns the successor and what the predecessor logged of its drain.
 */
async function takeOver(t: ExecutionContext, current: AgentProcess, round: string, during?: () => Promise<void>): Promise<{ next: AgentProcess; drained: AgentLogRecord | undefined; rss: [number, number] }> {
  const next = successorOf(current, round);
  t.teardown(async () => {
    await next.stop(5000);
  });
  const exited = current.exited;
  if (!exited) throw new Error('the current agent is not running');
  await next.start(); // may return on the predecessor's status: the log says when the take-over completed
  await eventually(async () => findLog(await next.logs({ currentRun: true }), TAKEN_OVER), (r) => r !== undefined, 60_000);
  const rss: [number, number] = [procRssKb(agentNodePid(current)), procRssKb(agentNodePid(next))];
  await during?.();
  const exit = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), (DRAIN_SECONDS + 20) * 1000))]);
  t.deepEqual(exit, { code: 0, signal: null }, `${round}: the predecessor exited 0 after its drain`);
  const logs = await current.logs({ currentRun: true });
  return { next, drained: logs.find((l) => l.msg === 'drain finished' || l.msg === 'drain deadline reached; cutting the rest'), rss };
}

/** Listening sockets per port in a pod (the agent's 15001/15006/15008). */
async function listenerCounts(pod: TestbedPod): Promise<Record<number, number>> {
  const out: Record<number, number> = {};
  for (const port of await listeningPorts(pod)) out[port] = (out[port] ?? 0) + 1;
  return out;
}

/** Two nodes: a mesh client (node 0), a mesh echo server (node 1) and a non-mesh pod (node 0); agents drain `drain` s. */
async function twoNodes(t: ExecutionContext, mode: RedirectMode, drain: number, agentArgs: string[] = []): Promise<{ tb: Testbed; client: TestbedPod; server: TestbedPod; outsider: TestbedPod }> {
  const tb = await withTestbed(t, { nodes: 2, redirectMode: mode, agentArgs: ['--drain-seconds', String(drain), ...agentArgs] });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('plain', {});
  const [client, server, outsider] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 1, namespace: 'app', name: 'web', serviceAccount: 'web' },
    { node: 0, namespace: 'plain', name: 'outsider' },
  ]);
  if (!client || !server || !outsider) throw new Error('pods missing');
  void server.spawn(PY, [ECHO_SERVER, String(ECHO_PORT)]).catch(() => undefined);
  await server.waitForPort(ECHO_PORT);
  return { tb, client, server, outsider };
}

/** The pod's net.ipv4.tcp_fwmark_accept ('0' or '1'). */
async function fwmarkAccept(pod: TestbedPod): Promise<string> {
  return String((await pod.exec('cat', ['/proc/sys/net/ipv4/tcp_fwmark_accept'])).stdout).trim();
}

for (const mode of ['iptables', 'nftables', 'ebpf'] as RedirectMode[]) {
  netnsTest.serial(`[${mode}] take-over on both nodes while new connections arrive every 20 ms: 0 failures; a long HBONE stream drains, then is cut; a third agent is refused; ${TAKEOVERS} take-overs in a row leak nothing`, async (t) => {
    const { tb, client, server, outsider } = await twoNodes(t, mode, DRAIN_SECONDS);
    const agents = [tb.agent(0), tb.agent(1)];
    const before = { rules: await podRules(server), records: readFileSync(join(agents[1]!.spec.stateDir, 'pods.json'), 'utf8') };

    // 1. New connections every 20 ms (mesh -> mesh, non-mesh -> mesh) across a take-over of each node's agent, and a
    //    long-lived HBONE stream across the destination's.
    const mesh = startConnectLoop(tb, client, server.ip, 'mesh');
    const plain = startConnectLoop(tb, outsider, server.ip, 'plain');
    let streamOut = '';
    const stream = client.spawn(PY, ['-u', '-c', LONG_STREAM, server.ip, String(ECHO_PORT)], { reject: false, timeout: 120_000 });
    stream.stdout?.on('data', (d: Buffer) => (streamOut += String(d)));
    await eventually(async () => streamOut, (o) => o.includes('echo'), 10_000);
    await new Promise((r) => setTimeout(r, 1000));
    let handedOffAt = 0;
    let third = '';
    let fwmarkWhileDraining = '';
    const dest = await takeOver(t, agents[1]!, 'r1', async () => {
      handedOffAt = Date.now() / 1000;
      fwmarkWhileDraining = await fwmarkAccept(server);
      // 2. A third agent while the predecessor drains: refused with a clear error.
      const c = successorOf(agents[1]!, 'third', { readyTimeoutMs: 15_000 });
      t.teardown(async () => {
        await c.stop(2000);
      });
      // start() may return on the successor's status (the socket path is its): the exit is what counts.
      const started = c.start().catch(() => undefined);
      const exitedC = c.exited;
      await started;
      const exit = await Promise.race([exitedC ?? Promise.resolve(undefined), new Promise<undefined>((r) => setTimeout(() => r(undefined), 10_000))]);
      third = (await c.logs()).map((l) => String(l.err && typeof l.err === 'object' && 'message' in l.err ? l.err.message : l.msg)).join(' | ');
      t.not(exit?.code ?? 0, 0, `the third agent exited with an error (${JSON.stringify(exit)})`);
    });
    agents[1] = dest.next;
    t.regex(third, /at most two agents/, 'the third agent says why it cannot start');
    if (mode === 'ebpf') {
      // The successor keeps tcp_fwmark_accept off while its predecessor may still dial the app (an older agent's dials
      // carry the agent mark, which ambient_out passes), and turns it on once the predecessor is gone.
      t.is(fwmarkWhileDraining, '0', 'tcp_fwmark_accept held off while the predecessor drains');
      t.is(await eventually(() => fwmarkAccept(server), (v) => v === '1', 10_000), '1', 'and on once it is gone');
    }
    // The source's predecessor gets a SIGTERM in its drain (the DaemonSet deletes the old pod once the new is ready):
    // it drains on and exits 0 at the end.
    const oldSource = agents[0]!;
    const src = await takeOver(t, oldSource, 'r1', async () => {
      await new Promise((r) => setTimeout(r, 300));
      if (oldSource.pid !== undefined) signalGroup(oldSource.pid, 'SIGTERM');
    });
    t.truthy(src.drained, 'the source\'s predecessor finished its drain despite the SIGTERM');
    agents[0] = src.next;
    await new Promise((r) => setTimeout(r, 500));
    const [meshResult, plainResult] = await Promise.all([mesh.stop(), plain.stop()]);
    await stream;
    t.log(`[${mode}] mesh -> mesh: ${meshResult.ok} ok, ${meshResult.fails} failed (p50 ${meshResult.p50ms} ms, p99 ${meshResult.p99ms} ms) ${meshResult.errors.join('; ')}`);
    t.log(`[${mode}] non-mesh -> mesh: ${plainResult.ok} ok, ${plainResult.fails} failed (p50 ${plainResult.p50ms} ms, p99 ${plainResult.p99ms} ms) ${plainResult.errors.join('; ')}`);
    t.log(`[${mode}] RSS during the overlap (KiB): destination old ${dest.rss[0]} new ${dest.rss[1]}; source old ${src.rss[0]} new ${src.rss[1]}`);
    t.log(`[${mode}] drains: destination ${JSON.stringify(dest.drained)}; source ${JSON.stringify(src.drained)}`);
    t.log(`[${mode}] third agent: ${third}`);
    t.is(meshResult.fails, 0, 'no new mesh connection failed across the take-overs');
    t.is(plainResult.fails, 0, 'no new non-mesh connection failed across the take-overs');
    t.true(meshResult.ok > 50 && plainResult.ok > 50, 'the loops ran');

    // 3. The long stream: served during the drain, then cut (not hung) by the predecessor's deadline.
    const lines = streamOut.trim().split('\n');
    const echoTimes = lines.filter((l) => l.startsWith('echo ')).map((l) => Number(l.split(' ')[2]));
    const ended = lines.find((l) => l.startsWith('ended '));
    t.log(`[${mode}] long stream: ${lines.slice(-3).join(' | ')}; hand-off at ${handedOffAt.toFixed(3)}`);
    t.true(echoTimes.some((x) => x > handedOffAt + 1), 'the stream still carried echoes during the drain');
    t.truthy(ended, 'the stream was ended by the drain deadline');
    t.is(dest.drained?.msg, 'drain deadline reached; cutting the rest', 'the destination\'s predecessor cut what was left at its deadline');
    t.true(Number(dest.drained?.cut ?? 0) >= 1, 'and counted it');

    // 4. More take-overs of the destination's agent in a row: nothing leaks.
    const fdsFirst = procFdCount(agentNodePid(agents[1]!));
    for (let i = 2; i <= TAKEOVERS; i++) agents[1] = (await takeOver(t, agents[1]!, `r${i}`)).next;
    const fdsLast = procFdCount(agentNodePid(agents[1]!));
    const listeners = await listenerCounts(server);
    const after = { rules: await podRules(server), records: readFileSync(join(agents[1]!.spec.stateDir, 'pods.json'), 'utf8') };
    t.log(`[${mode}] after ${TAKEOVERS} take-overs of the destination: agent fds ${fdsFirst} -> ${fdsLast}; listeners ${JSON.stringify(listeners)}`);
    for (const port of [15001, 15006, 15008]) t.is(listeners[port], 1, `one listener on ${port} in the pod`);
    // The pod's listeners are not SO_REUSEPORT: root in the pod cannot join them to take a share of its traffic.
    for (const [addr, port] of [['127.0.0.1', 15001], ['0.0.0.0', 15006], ['0.0.0.0', 15008]] as const) {
      const r = await server.exec(PY, ['-c', REUSEPORT_BIND, addr, String(port)], { reject: false });
      t.is(String(r.stdout).trim(), 'EADDRINUSE', `a SO_REUSEPORT bind of ${addr}:${port} in the pod is refused (${String(r.stdout).trim()} ${String(r.stderr).trim()})`);
    }
    const rulesOnly = (dump: string): string => dump.split('\n').filter((l) => !l.startsWith('#')).join('\n');
    t.is(rulesOnly(after.rules.iptables), rulesOnly(before.rules.iptables), 'the pod\'s iptables rules are unchanged');
    const noCounters = (dump: string): string => dump.replace(/counter packets \d+ bytes \d+/g, 'counter');
    t.is(noCounters(after.rules.nft), noCounters(before.rules.nft), 'the pod\'s nft ruleset is unchanged');
    t.is(after.rules.ebpf, before.rules.ebpf, 'the pod\'s eBPF pieces are unchanged');
    t.deepEqual(
      (JSON.parse(after.records) as { pods: { uid: string; state: string }[] }).pods.map((p) => `${p.uid}:${p.state}`).sort(),
      (JSON.parse(before.records) as { pods: { uid: string; state: string }[] }).pods.map((p) => `${p.uid}:${p.state}`).sort(),
      'the same pod records',
    );
    t.true(fdsFirst > 0 && fdsLast > 0, `the agents' fds were read (${fdsFirst}, ${fdsLast})`);
    t.true(fdsLast <= fdsFirst + 4, `the agent's fds did not grow with take-overs (${fdsFirst} -> ${fdsLast})`);
    t.true((await eventually(async () => (await agents[1]!.request('GET', '/v1/status')).body, (b) => (b as { ready?: boolean }).ready === true, 10_000) as { ready: boolean }).ready);
  });
}

netnsTest.serial('[iptables] kill -9 of the successor while it adopts: the running agent carries on (new connections keep working), a later take-over succeeds', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, agentArgs: ['--drain-seconds', '1'] });
  await tb.setNamespace('app', AMBIENT);
  const [client, server] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 1, namespace: 'app', name: 'web', serviceAccount: 'web' },
  ]);
  if (!client || !server) throw new Error('pods missing');
  void server.spawn(PY, [ECHO_SERVER, String(ECHO_PORT)]).catch(() => undefined);
  await server.waitForPort(ECHO_PORT);
  const running = tb.agent(1);
  const loop = startConnectLoop(tb, client, server.ip, 'killed-successor');
  const doomed = successorOf(running, 'doomed');
  t.teardown(async () => {
    await doomed.stop(2000);
  });
  const started = doomed.start().catch(() => undefined);
  // Killed once it holds the state dir and adopts, before it is ready.
  await eventually(async () => findLog(await doomed.logs(), 'state dir taken over; adopting pods'), (r) => r !== undefined, 30_000);
  await doomed.kill('SIGKILL');
  await started;
  const resumed = await eventually(async () => findLog(await running.logs({ currentRun: true }), 'successor went away before it was ready; carrying on'), (r) => r !== undefined, 15_000);
  t.truthy(resumed, 'the running agent took the state dir back');
  t.true(running.running, 'and is still running');
  await eventually(async () => (await running.request('GET', '/v1/status')).body, (b) => (b as { ready?: boolean }).ready === true, 10_000);
  const next = await takeOver(t, running, 'after-kill');
  const result = await loop.stop();
  t.log(`successor killed, then a take-over: ${result.ok} ok, ${result.fails} failed ${result.errors.join('; ')}`);
  t.is(result.fails, 0, 'no new connection failed');
  t.true((await next.next.request('GET', '/v1/status')).statusCode === 200);
  const staging = readdirSync(dirname(running.spec.socketPath)).filter((n) => n.endsWith('.new'));
  t.deepEqual(staging, [], 'the killed successor\'s staging socket was cleaned up by the next agent');
});

netnsTest.serial('[iptables] pods added while the agent is taken over: ADDs arriving mid-take-over are held, forwarded to the successor once it is ready, and the pods end up captured', async (t) => {
  const tb = await withTestbed(t, { nodes: 1, agentArgs: ['--drain-seconds', '1'] });
  await tb.setNamespace('app', AMBIENT);
  const running = tb.agent(0);
  // The successor waits 5 s after it holds the state dir, before adopting (the plugin waits 10 s), so the ADDs below
  // arrive while the predecessor holds events, however fast the rest of the take-over is.
  const next = successorOf(running, 'next', { env: { AMBIENT_HANDOVER_TEST_ADOPT_DELAY_MS: '5000' } });
  t.teardown(async () => {
    await next.stop(5000);
  });
  const exited = running.exited;
  const started = next.start().catch(() => undefined);
  await eventually(async () => findLog(await next.logs(), 'state dir taken over; adopting pods'), (r) => r !== undefined, 30_000);
  const adding = tb.addPods(Array.from({ length: 4 }, (_, i) => ({ node: 0, namespace: 'app', name: `late-${i}`, serviceAccount: 'late' })));
  const pods = await adding;
  await started;
  await Promise.race([exited, new Promise((r) => setTimeout(r, 20_000))]);
  const forwarded = (await running.logs({ currentRun: true })).filter((l) => l.msg === 'plugin event held during a take-over, forwarded to the successor');
  t.log(`${forwarded.length} plugin events were held by the predecessor and forwarded to the successor`);
  t.true(forwarded.length >= 4, 'the ADDs that arrived during the take-over were held and forwarded');
  const handled = (await next.logs()).filter((l) => l.msg === 'plugin event handled' && l.command === 'ADD');
  t.is(handled.length, pods.length, 'each ADD was handled once (answered through the predecessor, not retried)');
  const st = (await next.request('GET', '/v1/pods')).body as { pods: { name: string; state: string; listening: boolean }[] };
  for (const p of pods) {
    const view = st.pods.find((v) => v.name === p.name);
    t.is(view?.state, 'enrolled', `${p.name} is enrolled with the successor`);
    t.true(view?.listening ?? false, `${p.name} has the successor's listeners`);
  }
});

/** One connection, one marker line, the echo awaited for 2 s: 'echoed', or how it failed. */
const ONE_SHOT = `
import socket, sys
ip, port, line = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode() + b'\\n'
try:
    s = socket.create_connection((ip, port), timeout=2)
    s.sendall(line); got = b''
    while not got.endswith(b'\\n'):
        d = s.recv(4096)
        if not d: raise OSError('closed without an echo')
        got += d
    print('echoed' if got == line else 'wrong echo')
except OSError as e:
    print('failed %s %s' % (type(e).__name__, e))
`;

for (const mode of ['iptables', 'nftables', 'ebpf'] as RedirectMode[]) {
  netnsTest.serial(`[${mode}] kill -9 of the predecessor during its drain, then of the successor: the draining stream is cut, new connections keep working, then are refused; nothing in clear on the wire; a later agent recovers`, async (t) => {
    const { tb, client, server, outsider } = await twoNodes(t, mode, 60);
    const marker = `TAKEOVER-KILL9-${randomBytes(12).toString('hex')}`;
    const fabric = await captureFabric(tb, `takeover-kill9-${mode}-fabric`);
    const veth = await captureNodeLink(tb, 1, await hostVeth(tb, server), `takeover-kill9-${mode}-web`);
    const oneShot = async (from: TestbedPod): Promise<string> => String((await from.exec(PY, ['-c', ONE_SHOT, server.ip, String(ECHO_PORT), marker], { reject: false, timeout: 10_000 })).stdout).trim();

    let streamOut = '';
    const stream = client.spawn(PY, ['-u', '-c', LONG_STREAM, server.ip, String(ECHO_PORT), marker], { reject: false, timeout: 120_000 });
    stream.stdout?.on('data', (d: Buffer) => (streamOut += String(d)));
    await eventually(async () => streamOut, (o) => o.includes('echo'), 10_000);
    const loop = startConnectLoop(tb, client, server.ip, 'kill9-drain');

    // The destination's agent is taken over; its predecessor drains (60 s) and is killed in the middle of it.
    const old = tb.agent(1);
    const next = successorOf(old, 'next');
    t.teardown(async () => {
      await next.stop(5000);
    });
    await next.start();
    await eventually(async () => findLog(await next.logs({ currentRun: true }), TAKEN_OVER), (r) => r !== undefined, 60_000);
    await eventually(async () => findLog(await old.logs({ currentRun: true }), DRAINING), (r) => r !== undefined, 10_000);
    await new Promise((r) => setTimeout(r, 1000));
    const echoesBeforeKill = streamOut.split('\n').filter((l) => l.startsWith('echo ')).length;
    await old.kill('SIGKILL');
    await eventually(async () => streamOut, (o) => o.includes('ended '), 10_000);
    await new Promise((r) => setTimeout(r, 1500));
    const loopResult = await loop.stop();
    t.log(`[${mode}] predecessor killed during its drain: new connections ${loopResult.ok} ok, ${loopResult.fails} failed ${loopResult.errors.join('; ')}; stream: ${streamOut.trim().split('\n').slice(-2).join(' | ')}`);
    t.true(echoesBeforeKill > 0, 'the long stream carried echoes before the kill');
    t.regex(streamOut, /ended (ConnectionResetError|OSError)/, 'the draining stream was cut by the kill (reset or closed), not hung');
    t.is(loopResult.fails, 0, 'new connections went to the successor throughout');
    t.is(await oneShot(client), 'echoed', 'a new mesh connection works through the successor');

    // The successor dies too: the pod has no listener, and its traffic is refused, never passed in clear.
    await next.kill('SIGKILL');
    const refusedMesh = await oneShot(client);
    const refusedPlain = await oneShot(outsider);
    t.regex(refusedMesh, /^failed /, `with both agents gone, a mesh connection is refused (${refusedMesh})`);
    t.regex(refusedPlain, /^failed /, `and a plaintext one from a non-mesh pod too (${refusedPlain})`);

    // A later agent recovers the node: adopts the pod, listens, carries mesh traffic.
    const later = successorOf(old, 'later');
    t.teardown(async () => {
      await later.stop(5000);
    });
    await later.start();
    const viewOf = async (): Promise<PodView | undefined> => ((await later.request('GET', '/v1/pods')).body as { pods: PodView[] }).pods.find((p) => p.containerId === server.containerId);
    const view = await eventually(viewOf, (p) => p?.listening === true, 20_000);
    t.is(view?.state, 'enrolled', 'the later agent re-adopted the pod');
    t.is(await eventually(async () => oneShot(client), (r) => r === 'echoed', 15_000), 'echoed', 'mesh traffic works again');
    t.true(((await viewOf())?.stats?.inbound.hbone ?? 0) >= 1, 'and arrives over HBONE');
    await stream;

    const seen = [{ where: 'fabric br0 (between nodes)', raw: (await fabric.stop()).raw }, { where: `host side of ${server.key}'s veth`, raw: (await veth.stop()).raw }];
    for (const c of seen) {
      t.true(c.raw.length > 10_000, `${c.where}: the capture saw traffic (${c.raw.length} bytes)`);
      t.is(countOccurrences(c.raw, Buffer.from(marker)), 0, `${c.where}: the marker never crossed in clear`);
    }
  });
}

netnsTest.serial('[iptables] --exit-after-handover false: a policy change during the drain closes the predecessor\'s now-denied HBONE stream; after its drain the predecessor idles holding nothing (a further take-over works) and exits 0 on SIGTERM', async (t) => {
  const { tb, client, server } = await twoNodes(t, 'iptables', 30, ['--exit-after-handover', 'false']);
  let streamOut = '';
  const stream = client.spawn(PY, ['-u', '-c', LONG_STREAM, server.ip, String(ECHO_PORT)], { reject: false, timeout: 120_000 });
  stream.stdout?.on('data', (d: Buffer) => (streamOut += String(d)));
  await eventually(async () => streamOut, (o) => o.includes('echo'), 10_000);

  // The destination's agent is taken over; its predecessor drains the HBONE stream (up to 30 s) with everything frozen.
  const old = tb.agent(1);
  const next = successorOf(old, 'next');
  t.teardown(async () => {
    await next.stop(5000);
  });
  await next.start();
  await eventually(async () => findLog(await next.logs({ currentRun: true }), TAKEN_OVER), (r) => r !== undefined, 60_000);
  await eventually(async () => findLog(await old.logs({ currentRun: true }), DRAINING), (r) => r !== undefined, 10_000);

  // A DENY for the stream's client: the frozen predecessor still enforces it on what it carries (fail closed).
  await tb.writeWorkload('deny-sleep.yaml', {
    apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-sleep', namespace: 'app' },
    spec: { action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/app/sa/sleep'] } }] }] },
  });
  await eventually(async () => streamOut, (o) => o.includes('ended '), 15_000);
  const closed = await eventually(async () => findLog(await old.logs({ currentRun: true }), 'open connection closed: now denied by authorization policy'), (r) => r !== undefined, 5000);
  t.log(`stream: ${streamOut.trim().split('\n').slice(-1)[0]}; predecessor: ${JSON.stringify(closed)}`);
  t.truthy(closed, 'the predecessor closed the stream the new policy denies, well before its drain deadline');
  await stream;

  // Nothing left to drain: it finishes, stops serving and stays up (a DaemonSet would otherwise restart it).
  const idle = await eventually(async () => findLog(await old.logs({ currentRun: true }), IDLE), (r) => r !== undefined, 20_000);
  t.truthy(idle, 'the predecessor is idle after its drain');
  t.true(old.running, 'and still running');
  const third = successorOf(next, 'third');
  t.teardown(async () => {
    await third.stop(5000);
  });
  await third.start();
  t.truthy(await eventually(async () => findLog(await third.logs({ currentRun: true }), TAKEN_OVER), (r) => r !== undefined, 60_000), 'the idle agent holds no lock: another take-over completes');
  t.true(old.running, 'the idle agent is still up');
  const exit = await old.stop(10_000);
  t.deepEqual(exit, { code: 0, signal: null }, 'SIGTERM ends the idle agent with 0');
});

netnsTest.serial('[iptables] take-over into an agent whose /proc/sys is read-only, with connections queued while neither agent accepts: the listeners are handed over and every queued connection is served by the successor', async (t) => {
  const { tb, client, server, outsider } = await twoNodes(t, 'iptables', DRAIN_SECONDS);
  const old = tb.agent(1);
  // The successor waits 3 s before adopting, so both agents are stopped below before it accepts anything.
  const next = successorOf(old, 'ro-proc-sys', { command: READ_ONLY_PROC_SYS, env: { AMBIENT_HANDOVER_TEST_ADOPT_DELAY_MS: '3000' } });
  t.teardown(async () => {
    if (old.pid !== undefined) signalGroup(old.pid, 'SIGCONT');
    if (next.pid !== undefined) signalGroup(next.pid, 'SIGCONT');
    await next.stop(5000);
  });
  const exited = old.exited;
  const started = next.start().catch((err: unknown) => err);
  // Both agents are stopped once the successor holds the listeners (received before it logs this) and before it adopts.
  await eventually(async () => findLog(await next.logs(), 'state dir taken over; adopting pods'), (r) => r !== undefined, 30_000);
  const [oldPid, nextPid] = [old.pid, next.pid];
  if (oldPid === undefined || nextPid === undefined) throw new Error('an agent is not running');
  signalGroup(nextPid, 'SIGSTOP');
  signalGroup(oldPid, 'SIGSTOP');
  const tally = findLog(await next.logs(), 'listeners from the running agent');
  t.is(tally?.plan, 'handed', `the listeners were handed over: ${JSON.stringify(tally)}`);

  // Plaintext (15006) and mesh (15008) connections complete their handshakes into the listeners' queues; nobody accepts.
  let plainOut = '';
  let meshOut = '';
  const plain = outsider.spawn(PY, ['-u', '-c', QUEUED_CONNECTIONS, server.ip, String(ECHO_PORT), '12'], { reject: false, timeout: 90_000 });
  const mesh = client.spawn(PY, ['-u', '-c', QUEUED_CONNECTIONS, server.ip, String(ECHO_PORT), '4'], { reject: false, timeout: 90_000 });
  plain.stdout?.on('data', (d: Buffer) => (plainOut += String(d)));
  mesh.stdout?.on('data', (d: Buffer) => (meshOut += String(d)));
  await eventually(async () => plainOut + meshOut, (o) => o.split('queued').length === 3, 20_000);
  await new Promise((r) => setTimeout(r, 500));
  t.false(/^got /m.test(plainOut + meshOut), 'no queued connection was answered while both agents were stopped');

  // The successor goes on with the predecessor still stopped: it adopts on the handed sockets and accepts the queue.
  signalGroup(nextPid, 'SIGCONT');
  await eventually(async () => plainOut, (o) => o.includes('{'), 30_000);
  signalGroup(oldPid, 'SIGCONT');
  await started;
  await eventually(async () => findLog(await next.logs({ currentRun: true }), TAKEN_OVER), (r) => r !== undefined, 60_000);
  const [p, m] = [await plain, await mesh];
  const last = (out: string): { ok: number; errors: string[] } => JSON.parse(out.trim().split('\n').pop() ?? '{}') as { ok: number; errors: string[] };
  t.log(`queued plaintext: ${JSON.stringify(last(String(p.stdout)))}; queued mesh: ${JSON.stringify(last(String(m.stdout)))}`);
  t.deepEqual(last(String(p.stdout)), { ok: 12, errors: [] }, 'every plaintext connection queued in 15006 was served');
  t.deepEqual(last(String(m.stdout)), { ok: 4, errors: [] }, 'every mesh connection queued in 15008 was served');
  const exit = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), (DRAIN_SECONDS + 20) * 1000))]);
  t.deepEqual(exit, { code: 0, signal: null }, 'the predecessor exited 0 after its drain');
  t.deepEqual(await listenerCounts(server), { [ECHO_PORT]: 1, 15001: 1, 15006: 1, 15008: 1 }, 'one listener per port: the same sockets, not new ones');
});
