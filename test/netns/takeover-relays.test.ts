// Upgrades without dropping connections (issue 15, item 3): plain TCP relays (passthrough outbound, plaintext inbound)
// move to the successor during a take-over, byte-exact with traffic flowing both ways; a successor killed mid-transfer leaves them with the predecessor.
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import type { AgentProcess } from '../testbed/agent-process.js';
import { ECHO_SERVER, PY, findLog, successorOf, type RedirectMode, type Testbed, type TestbedPod } from '../testbed/index.js';
import { AMBIENT, adminHttp, eventually, metricSample } from './helpers.js';

const PORT = 9100;

/**
 * One long-lived connection carrying a counter stream (8-byte big-endian counters, 8 KiB every 5 ms) while a reader
 * checks that the echo is exactly what was sent so far. Progress lines every 250 ms; at the stop file a half-close,
 * the rest of the echo, and one JSON summary.
 */
const COUNTER_CLIENT = `
import socket, sys, time, json, os, threading, hashlib
ip, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((ip, port), timeout=10)
s.settimeout(None)
sent = bytearray(); lock = threading.Lock()
st = {'recv': 0, 'exact': True, 'err': None}
def reader():
    pos = 0
    try:
        while True:
            d = s.recv(65536)
            if not d: break
            with lock:
                if sent[pos:pos + len(d)] != d: st['exact'] = False
            pos += len(d); st['recv'] = pos
    except OSError as e:
        st['err'] = 'recv %s %s' % (type(e).__name__, e)
r = threading.Thread(target=reader, daemon=True); r.start()
print('connected', flush=True)
n, last = 0, 0
try:
    while not os.path.exists(stop):
        chunk = b''.join((n + i).to_bytes(8, 'big') for i in range(1024)); n += 1024
        with lock: sent += chunk
        s.sendall(chunk)
        if time.time() - last >= 0.25:
            print('progress %.3f %d %d' % (time.time(), len(sent), st['recv']), flush=True); last = time.time()
        time.sleep(0.005)
    s.shutdown(socket.SHUT_WR)
except OSError as e:
    st['err'] = 'send %s %s' % (type(e).__name__, e)
r.join(30)
print(json.dumps({'sent': len(sent), 'received': st['recv'], 'exact': st['exact'] and st['recv'] == len(sent),
                  'sha256': hashlib.sha256(sent).hexdigest(), 'err': st['err']}), flush=True)
`;

/**
 * N more connections held open, each sending a numbered line every second and checking its echo; `echoed N` once every
 * one has had an echo (its relay is connected end to end); at the stop file they close and one JSON line says how many
 * were still exact.
 */
const MANY_CLIENT = `
import socket, sys, time, json, os, selectors
ip, port, n, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sel = selectors.DefaultSelector()
conns = []
for i in range(n):
    s = socket.create_connection((ip, port), timeout=10); s.setblocking(False)
    c = {'s': s, 'sent': b'', 'got': b'', 'k': 0, 'bad': False}
    conns.append(c); sel.register(s, selectors.EVENT_READ, c)
print('connected %d' % n, flush=True)
last, told = 0, False
while not os.path.exists(stop):
    if not told and all(c['got'] for c in conns):
        print('echoed %d' % n, flush=True); told = True
    if time.time() - last >= 1:
        last = time.time()
        for c in conns:
            m = ('%d:%d\\n' % (id(c) % 1000, c['k'])).encode(); c['k'] += 1; c['sent'] += m
            try: c['s'].sendall(m)
            except OSError: c['bad'] = True
    for key, _ in sel.select(0.1):
        c = key.data
        try: d = c['s'].recv(4096)
        except OSError: c['bad'] = True; continue
        if not d: c['bad'] = True; sel.unregister(c['s']); continue
        c['got'] += d
time.sleep(0.5)
for key, _ in sel.select(0.2):
    c = key.data
    try: c['got'] += c['s'].recv(4096)
    except OSError: pass
ok = sum(1 for c in conns if not c['bad'] and c['got'] == c['sent'] and c['k'] > 1)
for c in conns: c['s'].close()
print(json.dumps({'n': n, 'exact': ok}), flush=True)
`;

interface StreamResult {
  sent: number;
  received: number;
  exact: boolean;
  sha256: string;
  err: string | null;
}

interface Stream {
  /** Seconds (epoch) at which the echo had reached each progress line. */
  progress: () => { t: number; sent: number; recv: number }[];
  stop: () => Promise<StreamResult>;
}

function startStream(tb: Testbed, client: TestbedPod, ip: string, tag: string): Stream {
  const stopFile = join(tb.runDir, `stop-${tag}`);
  let out = '';
  const proc = client.spawn(PY, ['-u', '-c', COUNTER_CLIENT, ip, String(PORT), stopFile], { reject: false, timeout: 120_000 });
  proc.stdout?.on('data', (d: Buffer) => (out += String(d)));
  return {
    progress: () => out.split('\n').filter((l) => l.startsWith('progress ')).map((l) => {
      const [, t, sent, recv] = l.split(' ');
      return { t: Number(t), sent: Number(sent), recv: Number(recv) };
    }),
    async stop() {
      await client.exec('touch', [stopFile]);
      const r = await proc;
      const last = String(r.stdout).trim().split('\n').pop() ?? '';
      if (!last.startsWith('{')) throw new Error(`stream ${tag} printed no summary: ${String(r.stdout).slice(-500)} ${String(r.stderr)}`);
      return JSON.parse(last) as StreamResult;
    },
  };
}


interface Conn {
  direction: string;
  src: { addr: string };
  dst: { addr: string };
  mtls: boolean;
  bytesSent: number;
  bytesRecv: number;
  startedAt: number;
}

async function conns(agent: AgentProcess): Promise<Conn[]> {
  return ((await agent.request('GET', '/v1/conns')).body as { connections: Conn[] }).connections;
}

/**
 * Node 0 carries both relays: sleep (mesh) -> ext (non-mesh, node 1) is passthrough outbound, outsider (non-mesh,
 * node 1) -> web (mesh) is plaintext inbound on 15006. Both stream until stopped.
 */
async function scene(t: ExecutionContext, mode: RedirectMode, drainSeconds: number, extra = 0): Promise<{ tb: Testbed; pass: Stream; inbound: Stream; many?: () => Promise<{ n: number; exact: number }> }> {
  const tb = await withTestbed(t, { nodes: 2, redirectMode: mode, agentArgs: ['--drain-seconds', String(drainSeconds)] });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('plain', {});
  const [sleep, web, outsider, ext] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 0, namespace: 'app', name: 'web', serviceAccount: 'web' },
    { node: 1, namespace: 'plain', name: 'outsider' },
    { node: 1, namespace: 'plain', name: 'ext' },
  ]);
  if (!sleep || !web || !outsider || !ext) throw new Error('pods missing');
  for (const p of [web, ext]) void p.spawn(PY, [ECHO_SERVER, String(PORT)]).catch(() => undefined);
  await Promise.all([web.waitForPort(PORT), ext.waitForPort(PORT)]);
  const pass = startStream(tb, sleep, ext.ip, 'passthrough');
  const inbound = startStream(tb, outsider, web.ip, 'inbound');
  await eventually(async () => pass.progress().length + inbound.progress().length, () => pass.progress().some((p) => p.recv > 0) && inbound.progress().some((p) => p.recv > 0), 10_000);
  let many: (() => Promise<{ n: number; exact: number }>) | undefined;
  if (extra > 0) {
    const stopFile = join(tb.runDir, 'stop-many');
    let out = '';
    const proc = sleep.spawn(PY, ['-u', '-c', MANY_CLIENT, ext.ip, String(PORT), String(extra), stopFile], { reject: false, timeout: 120_000 });
    proc.stdout?.on('data', (d: Buffer) => (out += String(d)));
    // Every extra connection's upstream is connected (it echoed) before the take-over: each is then a movable relay.
    await eventually(async () => out, (o) => o.includes(`echoed ${extra}`), 30_000);
    many = async () => {
      await sleep.exec('touch', [stopFile]);
      const r = await proc;
      const last = String(r.stdout).trim().split('\n').pop() ?? '';
      if (!last.startsWith('{')) throw new Error(`many-connections client printed no summary: ${String(r.stdout).slice(-300)} ${String(r.stderr)}`);
      return JSON.parse(last) as { n: number; exact: number };
    };
  }
  const open = await eventually(() => conns(tb.agent(0)), (c) => c.length === 2 + extra, 15_000);
  t.deepEqual(open.filter((c) => c.dst.addr.endsWith(`:${PORT}`) && !c.mtls).length, 2 + extra, 'node 0 relays every connection in plain TCP');
  return { tb, pass, inbound, ...(many ? { many } : {}) };
}

/** Progress after `since` (epoch s): the echo moved on. */
const flowedAfter = (s: Stream, since: number): boolean => {
  const after = s.progress().filter((p) => p.t > since);
  return after.length >= 2 && after[after.length - 1]!.recv > after[0]!.recv;
};

for (const mode of ['iptables', 'nftables', 'ebpf'] as RedirectMode[]) {
  netnsTest.serial(`[${mode}] take-over with a passthrough and a plaintext inbound connection streaming both ways: both move to the successor byte-exact, the predecessor exits without waiting for its drain deadline, the successor lists, meters and access-logs them`, async (t) => {
    const drainSeconds = 30;
    // iptables also moves 100 more connections (7 batches), for the figure of how long a move takes.
    const extra = mode === 'iptables' ? 100 : 0;
    const { tb, pass, inbound, many } = await scene(t, mode, drainSeconds, extra);
    const current = tb.agent(0);
    const before = await conns(current);
    const next = successorOf(current, 'next');
    t.teardown(async () => {
      await next.stop(5000);
    });
    const exited = current.exited;
    if (!exited) throw new Error('the agent is not running');
    await next.start();
    await eventually(async () => findLog(await next.logs({ currentRun: true }), 'take-over complete: socket published, predecessor told to stop accepting'), (r) => r !== undefined, 60_000);
    const readyAt = Date.now();
    const exit = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), (drainSeconds + 10) * 1000))]);
    const exitMs = Date.now() - readyAt;
    t.deepEqual(exit, { code: 0, signal: null }, 'the predecessor exited 0');
    const oldLogs = await current.logs({ currentRun: true });
    const handed = findLog(oldLogs, 'plain TCP relays handed over to the successor');
    const drained = oldLogs.find((l) => l.msg === 'drain finished' || l.msg === 'drain deadline reached; cutting the rest');
    t.log(`[${mode}] predecessor: ${JSON.stringify({ moved: handed?.moved, kept: handed?.kept, reasons: handed?.reasons, ms: handed?.ms })}; drain ${JSON.stringify(drained)}; exited ${exitMs} ms after the successor was ready (drain deadline ${drainSeconds} s)`);
    t.is(handed?.moved, 2 + extra, 'every relay moved (each was connected end to end before the take-over)');
    t.is(handed?.kept, 0);
    t.is(drained?.msg, 'drain finished', 'nothing was left to drain: the predecessor did not wait for its deadline');
    t.is(drained?.cut, 0);

    // The successor carries them: listed with the predecessor's start and byte counts, counted and metered.
    const handedAt = Date.now() / 1000;
    const after = await conns(next);
    t.is(after.length, 2 + extra, 'the successor lists every connection');
    const key = (c: Conn): string => `${c.direction} ${c.src.addr} -> ${c.dst.addr}`;
    t.deepEqual(after.map(key).sort(), before.map(key).sort(), 'the successor lists the same two connections');
    for (const c of after) {
      const b = before.find((x) => key(x) === key(c));
      t.is(c.startedAt, b?.startedAt ?? -1, `${key(c)}: its start travelled with it`);
      t.true(c.bytesSent >= (b?.bytesSent ?? Infinity), `${key(c)}: byte counts continue from the predecessor's`);
    }
    const pods = (await next.request('GET', '/v1/pods')).body as { pods: { name: string; stats?: { movedIn: number; active: number } }[] };
    t.is(pods.pods.find((p) => p.name === 'sleep')?.stats?.movedIn, 1 + extra, 'sleep: its passthrough relays moved in');
    t.is(pods.pods.find((p) => p.name === 'web')?.stats?.movedIn, 1, 'web: one relay moved in');
    const metrics = await eventually(() => adminHttp(tb, 0, 'GET', 'http://127.0.0.1:15020/metrics').catch(() => ({ status: 0, body: '' })), (m) => m.status === 200, 15_000);
    t.true((metricSample(metrics.body, 'istio_tcp_connections_opened_total', { reporter: 'source', source_workload: 'sleep' }) ?? 0) >= 1, 'the successor counts the passthrough connection as opened');
    t.true((metricSample(metrics.body, 'istio_tcp_connections_opened_total', { reporter: 'destination', destination_workload: 'web' }) ?? 0) >= 1, 'and the plaintext inbound one');

    // Traffic goes on through the successor; then both streams end (half-close, rest of the echo) and are compared.
    await eventually(async () => flowedAfter(pass, handedAt) && flowedAfter(inbound, handedAt), (ok) => ok, 10_000);
    const [p, i, m] = await Promise.all([pass.stop(), inbound.stop(), many?.()]);
    t.log(`[${mode}] passthrough ${JSON.stringify(p)}; inbound ${JSON.stringify(i)}; more connections ${JSON.stringify(m)}`);
    if (m) t.is(m.exact, extra, 'every other connection carried on with its echoes exact');
    for (const [name, r] of [['passthrough', p], ['inbound', i]] as const) {
      t.true(r.exact, `${name}: the echo is byte-exact across the take-over`);
      t.is(r.err, null, `${name}: no error`);
      t.true(r.sent > 1_000_000, `${name}: it streamed`);
    }
    // One access log line per connection, from the successor, with the whole connection's bytes.
    const lines = await eventually(async () => (await next.logs({ currentRun: true })).filter((l) => l.msg === 'connection complete' && l.response_flags === '-' && [PORT].some((port) => String(l['dst.addr'] ?? '').endsWith(`:${port}`))), (l) => l.length >= 2, 10_000);
    const sentBy = (dir: string): number => Number(lines.find((l) => l.direction === dir)?.bytes_sent);
    t.is(sentBy('outbound'), p.sent, 'the passthrough access log counts every byte the client sent, before and after the move');
    t.is(sentBy('inbound'), i.sent, 'and so does the inbound one');
  });
}

netnsTest.serial('[iptables] the successor killed -9 in the middle of the relay hand-over: the predecessor keeps both relays and carries them on byte-exact', async (t) => {
  const drainSeconds = 12;
  const { tb, pass, inbound } = await scene(t, 'iptables', drainSeconds);
  const current = tb.agent(0);
  // A test knob: the successor waits 20 s between receiving a batch and acknowledging it, long enough to kill it there.
  const doomed = successorOf(current, 'doomed', { env: { AMBIENT_HANDOVER_TEST_ACK_DELAY_MS: '20000' } });
  t.teardown(async () => {
    await doomed.stop(2000);
  });
  const exited = current.exited;
  if (!exited) throw new Error('the agent is not running');
  const started = doomed.start().catch(() => undefined);
  await eventually(async () => findLog(await doomed.logs(), 'relay batch received'), (r) => r !== undefined, 60_000);
  await doomed.kill('SIGKILL');
  const killedAt = Date.now() / 1000;
  await started;
  const failed = await eventually(async () => findLog(await current.logs({ currentRun: true }), 'plain TCP relays handed over to the successor'), (r) => r !== undefined, 15_000);
  t.log(`predecessor after the kill: ${JSON.stringify(failed)}`);
  t.is(failed?.moved, 0, 'nothing moved');
  t.is(failed?.kept, 2, 'both relays stayed with the predecessor');
  t.true(current.running, 'the predecessor runs on (draining)');
  await eventually(async () => flowedAfter(pass, killedAt) && flowedAfter(inbound, killedAt), (ok) => ok, 10_000);
  const [p, i] = await Promise.all([pass.stop(), inbound.stop()]);
  t.log(`passthrough ${JSON.stringify(p)}; inbound ${JSON.stringify(i)}`);
  for (const [name, r] of [['passthrough', p], ['inbound', i]] as const) {
    t.true(r.exact, `${name}: byte-exact, carried on by the predecessor`);
    t.is(r.err, null, `${name}: no error`);
  }
  // Both connections ended by themselves: the drain finishes without cutting anything and the predecessor exits.
  const exit = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), (drainSeconds + 10) * 1000))]);
  t.deepEqual(exit, { code: 0, signal: null });
  const drained = (await current.logs({ currentRun: true })).find((l) => l.msg === 'drain finished' || l.msg === 'drain deadline reached; cutting the rest');
  t.is(drained?.msg, 'drain finished');
  t.is(drained?.cut, 0);
});
