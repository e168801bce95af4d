// Hostile clients against an enrolled pod's 15008 (issue 11): connection floods that never finish a handshake; with a
// valid certificate, header bombs (HPACK, 70 KiB, 1 MiB frames), rapid reset, 10,000 streams opened and reset, zero
// windows against an app that writes without end, flow-control credit left by reset and never-read streams; client
// certificates whose SPIFFE ID is no ns/sa identity. After each attack the agent must keep serving (a new pod's CNI ADD
// enrols it, two other pods talk through the mesh) and its descriptors and memory must come back; the figures are
// logged. The raw clients and upstream apps are test/interop/hbone_attack.py.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { DEFAULT_SERVER_LIMITS } from '../../agent/src/hbone/settings.js';
import { BuiltinCa } from '../../agent/src/identity/builtin-ca.js';
import { issueCredential } from '../interop/certs.js';
import { DEBIAN_PYTHON, runHboneClient } from '../interop/hbone-client.js';
import { issueRogueCredential } from '../interop/rogue-certs.js';
import { CASES_TRUST_DOMAIN, SPIFFE_CASES } from '../interop/spiffe-cases.js';
import type { Testbed, TestbedPod } from '../testbed/index.js';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { AMBIENT, agentPod, ask, eventually, startEcho } from './helpers.js';

const ATTACK_PY = fileURLToPath(new URL('../interop/hbone_attack.py', import.meta.url));
/**
 * How long the agent's descriptors and memory may take to come back after an attack: past the 30 s unread-linger bound
 * (a stream closed in order whose app does not read keeps its upstream that long).
 */
const FOOTPRINT_SETTLE_MS = 40_000;
const CLIENT_ID = `spiffe://${CASES_TRUST_DOMAIN}/ns/legacy/sa/attacker`;

interface Scene {
  tb: Testbed;
  productpage: TestbedPod;
  sleep: TestbedPod;
  notsleep: TestbedPod;
  attacker: TestbedPod;
  caPath: string;
  credential: Awaited<ReturnType<typeof issueCredential>>;
}

/** productpage (node 1, echo on 9080) is attacked from a non-mesh pod on node 0; sleep and notsleep (node 0) are the bystanders. */
async function scene(t: ExecutionContext): Promise<Scene> {
  const tb = await withTestbed(t, { nodes: 2 });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('legacy', {});
  const [productpage, sleep, notsleep, attacker] = await tb.addPods([
    { node: 1, namespace: 'app', name: 'productpage', serviceAccount: 'productpage' },
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 0, namespace: 'app', name: 'notsleep', serviceAccount: 'notsleep' },
    { node: 0, namespace: 'legacy', name: 'attacker', serviceAccount: 'attacker' },
  ]);
  if (!productpage || !sleep || !notsleep || !attacker) throw new Error('pods missing');
  await startEcho(productpage, 9080);
  const caPath = join(tb.caDir, 'root-cert.pem');
  const credential = await issueCredential(await BuiltinCa.open(tb.caDir, { trustDomain: CASES_TRUST_DOMAIN }), CLIENT_ID, join(tb.runDir, 'attack'), 'attacker');
  return { tb, productpage, sleep, notsleep, attacker, caPath, credential };
}

type AttackResult = Record<string, unknown> & { error: string | null };

async function attack(pod: TestbedPod, args: string[], timeoutMs: number): Promise<AttackResult> {
  const r = await pod.exec(DEBIAN_PYTHON, ['-I', ATTACK_PY, ...args], { reject: false, timeout: timeoutMs });
  const line = String(r.stdout).trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as AttackResult;
  } catch {
    throw new Error(`hbone_attack.py printed no JSON line (exit ${r.exitCode}): ${String(r.stdout)}${String(r.stderr)}`);
  }
}

/** Open descriptors and resident memory (MiB) of the agent on a node. */
async function agentFootprint(tb: Testbed, node: number): Promise<{ fds: number; rssMiB: number }> {
  const pid = tb.agent(node).pid;
  if (pid === undefined) throw new Error(`agent on node ${node} is not running`);
  const fds = (await readdir(`/proc/${pid}/fd`)).length;
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  return { fds, rssMiB: Math.round(rssKiB / 102.4) / 10 };
}

/**
 * The agent still serves: a CNI ADD of a new pod on the attacked node completes and the pod is enrolled, and the
 * bystanders talk through the mesh, on an existing pooled connection and on a new one. Returns how long that took (ms).
 */
async function meshStillWorks(t: ExecutionContext, s: Scene, label: string): Promise<{ ms: number; podFds: number }> {
  const started = Date.now();
  const name = `late-${label}`.toLowerCase().replace(/[^a-z0-9-]+/g, '-').slice(0, 40);
  const fdsBefore = (await agentFootprint(s.tb, 1)).fds;
  const late = await s.tb.addPod({ node: 1, namespace: 'app', name, serviceAccount: 'late' });
  // The new pod's listeners are the agent's descriptors too: footprintBack allows for them.
  const podFds = Math.max(0, (await agentFootprint(s.tb, 1)).fds - fdsBefore);
  const view = await agentPod(s.tb, late);
  t.is(view?.state, 'enrolled', `${label}: a pod added after the attack is enrolled`);
  t.true(view?.listening === true, `${label}: its listeners are open`);
  const a = await ask(s.sleep, s.productpage.ip, 9080, `after-${label}`);
  t.true(a.ok, `${label}: sleep -> productpage: ${a.output}`);
  const b = await ask(s.notsleep, s.productpage.ip, 9080, `after-${label}-2`);
  t.true(b.ok, `${label}: notsleep -> productpage: ${b.output}`);
  return { ms: Date.now() - started, podFds };
}

interface Footprint {
  fds: number;
  rssMiB: number;
}

/** Samples the attacked agent's footprint every 200 ms until stopped; stop() resolves with the peak of each. */
function samplePeak(tb: Testbed, node: number): { stop: () => Promise<Footprint> } {
  const peak: Footprint = { fds: 0, rssMiB: 0 };
  let running = true;
  const loop = (async () => {
    while (running) {
      const f = await agentFootprint(tb, node).catch(() => undefined);
      if (f) {
        peak.fds = Math.max(peak.fds, f.fds);
        peak.rssMiB = Math.max(peak.rssMiB, f.rssMiB);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return peak;
    },
  };
}

/** Waits until the agent's descriptors and memory are back near `before`; returns what it saw. */
async function footprintBack(t: ExecutionContext, s: Scene, before: Footprint, label: string, rssSlackMiB: number, podFds = 0): Promise<Footprint> {
  const fdBound = before.fds + podFds + 8;
  const after = await eventually(() => agentFootprint(s.tb, 1), (f) => f.fds <= fdBound && f.rssMiB <= before.rssMiB + rssSlackMiB, FOOTPRINT_SETTLE_MS);
  t.log(`${label}: agent fds ${before.fds} -> ${after.fds} (${podFds} for the pod added since), RSS ${before.rssMiB} -> ${after.rssMiB} MiB`);
  t.true(after.fds <= fdBound, `${label}: descriptors back (${before.fds} -> ${after.fds}, ${podFds} of them the new pod's)`);
  t.true(after.rssMiB <= before.rssMiB + rssSlackMiB, `${label}: RSS back within ${rssSlackMiB} MiB (${before.rssMiB} -> ${after.rssMiB})`);
  return after;
}

/**
 * Runs one attack against the scene and checks the agent afterwards: it serves again (meshStillWorks) and its
 * footprint comes back. Logs the figures first: attack duration, fds and RSS before / at the peak / after, time to
 * serve again (a new pod's CNI ADD and two mesh connections).
 */
async function underAttack(t: ExecutionContext, s: Scene, label: string, run: () => Promise<AttackResult>, rssSlackMiB = 64): Promise<{ r: AttackResult; before: Footprint; peak: Footprint }> {
  const before = await agentFootprint(s.tb, 1);
  const sampler = samplePeak(s.tb, 1);
  const started = Date.now();
  const r = await run();
  const attackMs = Date.now() - started;
  const peak = await sampler.stop();
  t.log(`${label}:`, JSON.stringify(r));
  const serving = await meshStillWorks(t, s, label);
  const fdBound = before.fds + serving.podFds + 8;
  const after = await eventually(() => agentFootprint(s.tb, 1), (f) => f.fds <= fdBound && f.rssMiB <= before.rssMiB + rssSlackMiB, FOOTPRINT_SETTLE_MS);
  t.log(`figures ${label}: attack ${attackMs} ms; agent fds ${before.fds} / peak ${peak.fds} / after ${after.fds} `
    + `(${serving.podFds} of them the new pod's); RSS ${before.rssMiB} / peak ${peak.rssMiB} / after ${after.rssMiB} MiB; `
    + `a new HBONE connection from the attacker answered in ${String(r.check_seconds)} s; serving again (pod ADD + 2 mesh connections) ${serving.ms} ms after`);
  t.true(after.fds <= fdBound, `${label}: descriptors back (${before.fds} -> ${after.fds}, ${serving.podFds} of them the new pod's)`);
  t.true(after.rssMiB <= before.rssMiB + rssSlackMiB, `${label}: RSS back within ${rssSlackMiB} MiB (${before.rssMiB} -> ${after.rssMiB})`);
  return { r, before, peak };
}

/** An upstream app in `pod` from hbone_attack.py: `discard` reads and drops, `source` writes zeros without end. */
async function startUpstream(pod: TestbedPod, kind: 'discard' | 'source', port: number): Promise<void> {
  void pod.spawn(DEBIAN_PYTHON, ['-I', ATTACK_PY, `serve-${kind}`, '--port', String(port)]).catch(() => undefined);
  await pod.waitForPort(port);
}

/** The mutual-TLS options every attack with a valid certificate passes to hbone_attack.py. */
function withCert(s: Scene): string[] {
  return ['--connect', `${s.productpage.ip}:15008`, '--ca', s.caPath, '--cert', s.credential.certPath, '--key', s.credential.keyPath,
    '--authority', `${s.productpage.ip}:9080`, '--timeout', '10'];
}

netnsTest.serial(`2,000 idle TCP connections and 200 stalled TLS handshakes on 15008 are closed by the handshake deadline`, async (t) => {
  t.timeout(240_000);
  const s = await scene(t);
  t.true((await ask(s.sleep, s.productpage.ip, 9080, 'warm')).ok, 'sleep has a pooled connection before the flood');
  const before = await agentFootprint(s.tb, 1);
  const started = Date.now();
  const flooding = attack(s.attacker, ['flood', '--connect', `${s.productpage.ip}:15008`, '--idle', '2000', '--stalled', '200', '--wait', '25'], 60_000);
  // While the flood holds its connections, the pooled connection keeps carrying new streams.
  await new Promise((r) => setTimeout(r, 4000));
  const during = await ask(s.sleep, s.productpage.ip, 9080, 'during');
  const peak = await agentFootprint(s.tb, 1);
  const r = await flooding;
  t.log('flood:', JSON.stringify(r), `in ${Date.now() - started} ms; agent at the peak: ${peak.fds} fds, ${peak.rssMiB} MiB (before: ${before.fds}, ${before.rssMiB} MiB)`);
  t.is(r.error, null);
  t.true(during.ok, `a pooled mesh connection works during the flood: ${during.output}`);
  t.is(Number(r.opened) + Number(r.connect_failed), 2200);
  // Under load some connects fail at once (the listener's queue of 511 sheds them): refused is as good as closed here.
  // How many get in depends on how fast the loaded agent accepts (1,462 to 2,200 across runs), so the flood is only
  // required to reach the agent's cap of handshakes in progress: what is tested is that all of them are closed.
  t.true(Number(r.opened) >= DEFAULT_SERVER_LIMITS.maxHandshaking, `the flood filled the handshake cap (${String(r.opened)} accepted; ${String(r.connect_failed)} refused at connect)`);
  t.is(r.still_open, 0, 'none is left open');
  t.is(r.closed, r.opened);
  t.true(Number(r.close_max) <= 10 + 2.5, `the last one closed ${String(r.close_max)} s after it opened (deadline 10 s)`);
  // Those over the cap are reset as soon as the agent accepts them (the accept queue itself may hold them a moment).
  t.true(Number(r.closed_within_5s) >= Number(r.opened) - 1024 - 50, 'beyond 1,024 handshakes in progress new connections are closed at once');
  t.true(peak.fds < before.fds + 1024 + 64, `the agent never held more than the cap (${peak.fds} fds at the peak)`);
  const logs = await s.tb.agent(1).logs({ currentRun: true });
  const refusals = logs.filter((l) => l.msg === 'hbone connections refused: too many handshakes in progress');
  t.true(refusals.length >= 1, 'the refusals over the cap are logged');
  t.log('over the cap:', JSON.stringify(refusals.at(-1)));
  t.true(logs.some((l) => l.msg === 'hbone handshake refused' && /did not finish within|TLS handshake timeout/.test(String(l.error))), 'timeouts are logged');
  const serving = await meshStillWorks(t, s, 'flood');
  t.log(`flood: serving again (pod ADD + 2 mesh connections) in ${serving.ms} ms`);
  await footprintBack(t, s, before, 'flood', 48, serving.podFds);
});

netnsTest.serial(`header bombs on 15008 (HPACK, 70 KiB, a 1 MiB frame) are reset at 64 KiB, without a large event, and the connection and agent keep serving`, async (t) => {
  t.timeout(180_000);
  const s = await scene(t);
  const before = await agentFootprint(s.tb, 1);
  const common = ['--connect', `${s.productpage.ip}:15008`, '--ca', s.caPath, '--cert', s.credential.certPath, '--key', s.credential.keyPath,
    '--authority', `${s.productpage.ip}:9080`, '--timeout', '10'];
  for (const kind of ['hpack', 'big', 'frame'] as const) {
    const r = await attack(s.attacker, ['bomb', '--kind', kind, ...common], 40_000);
    t.log(`${kind}:`, JSON.stringify(r));
    t.is(r.error, null, `${kind}: ${JSON.stringify(r)}`);
    t.true(r.bomb_answered === true, `${kind}: the bomb stream is answered`);
    t.true(r.bomb_reset !== null || r.bomb_status === 431, `${kind}: reset or 431, got status ${String(r.bomb_status)}`);
    t.true(Number(r.answer_seconds) < 2, `${kind}: answered in ${String(r.answer_seconds)} s`);
    t.true(r.check_ok === true, `${kind}: a CONNECT on the same connection works afterwards`);
    t.true(Number(r.check_seconds) < 2, `${kind}: in ${String(r.check_seconds)} s`);
  }
  // A frame larger than the 1 MiB we advertise is a connection error; a new connection works.
  const oversize = await attack(s.attacker, ['bomb', '--kind', 'oversize', ...common], 40_000);
  t.log('oversize:', JSON.stringify(oversize));
  t.is(oversize.error, null, JSON.stringify(oversize));
  t.true(oversize.bomb_goaway !== null && oversize.bomb_goaway !== undefined, 'oversize: the connection is closed (GOAWAY or EOF)');
  t.true(oversize.check_ok === true, 'oversize: a new connection works');
  const under = await attack(s.attacker, ['bomb', '--kind', 'under', ...common], 40_000);
  t.log('under:', JSON.stringify(under));
  t.is(under.bomb_status, 200, 'a 60 KiB header list (inside the limit) is served');
  t.true(under.check_ok === true);
  const peak = await agentFootprint(s.tb, 1);
  t.log(`agent after the bombs: ${peak.fds} fds, ${peak.rssMiB} MiB (before: ${before.fds}, ${before.rssMiB} MiB)`);
  t.true(peak.rssMiB < before.rssMiB + 48, 'no large allocation for the bombs');
  const logs = await s.tb.agent(1).logs({ currentRun: true });
  t.false(logs.some((l) => /event line longer/.test(l.msg)), 'no oversized event reached the agent');
  const serving = await meshStillWorks(t, s, 'bombs');
  t.log(`bombs: serving again (pod ADD + 2 mesh connections) in ${serving.ms} ms`);
  await footprintBack(t, s, before, 'bombs', 48, serving.podFds);
});

netnsTest.serial('a client certificate whose SPIFFE ID is no ns/sa identity is refused', async (t) => {
  t.timeout(240_000);
  // Sampled from the shared table (test/unit/hbone-spiffe-rule.test.ts runs all of it).
  const picked = new Set(['spiffe://cluster.local/whatever', 'spiffe://cluster.local/ns/app/sa/b/extra', 'spiffe://cluster.local/ns/./sa/b',
    'spiffe://cluster.localx/ns/app/sa/b', 'spiffe://cluster.local/ns/My_App-1.x/sa/SA.name-2']);
  const cases = SPIFFE_CASES.filter(([uri]) => picked.has(uri));
  t.is(cases.length, picked.size);
  const tb = await withTestbed(t, { nodes: 1 });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('legacy', {});
  const [productpage, sleep, client] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'productpage', serviceAccount: 'productpage' },
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 0, namespace: 'legacy', name: 'client' },
  ]);
  if (!productpage || !sleep || !client) throw new Error('pods missing');
  await startEcho(productpage, 9080);
  const caPath = join(tb.caDir, 'root-cert.pem');
  for (const [i, [uri, accepted, why]] of cases.entries()) {
    const cred = await issueRogueCredential(tb.caDir, uri, join(tb.runDir, 'rogue'), `rogue-${i}`);
    const refusedBefore = (await agentPod(tb, productpage))?.stats?.inbound.refused ?? 0;
    const r = await runHboneClient(client, { connect: `${productpage.ip}:15008`, authority: `${productpage.ip}:9080`, caPath, credential: cred, send: 'spiffe\n', expect: 'pong:spiffe' });
    t.log(`${uri} (${why}):`, JSON.stringify({ status: r.status, error: r.error, goaway: r.goaway, last: r.goaway_last_stream }));
    if (accepted) {
      t.is(r.status, 200, `${uri} is a valid identity: ${JSON.stringify(r)}`);
      continue;
    }
    t.is(r.status, null, `${uri} must be refused (${why}): ${JSON.stringify(r)}`);
    t.is(r.received, '');
    const refusedAfter = await eventually(async () => (await agentPod(tb, productpage))?.stats?.inbound.refused ?? 0, (n) => n > refusedBefore, 5000);
    t.true(refusedAfter > refusedBefore, `the refusal of ${uri} is counted`);
  }
  const logs = await tb.agent(0).logs({ currentRun: true });
  t.true(logs.some((l) => l.msg === 'hbone client refused' && String(l.reason).includes('spiffe://cluster.local/whatever')), 'the agent logs the refused identity');
  const ok = await ask(sleep, productpage.ip, 9080, 'after-spiffe');
  t.true(ok.ok, `the mesh still works: ${ok.output}`);
});

/**
 * A server in `pod` that accepts on `port` and never reads (a small receive buffer, so little hides in the kernel);
 * with `shutWrite` it also ends its side at once, so a stream the client ends too is closed in order with bytes unread.
 */
async function startStall(pod: TestbedPod, port: number, shutWrite: boolean): Promise<void> {
  const py = [
    'import socket, time',
    's = socket.socket()',
    's.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)',
    's.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)',
    `s.bind(("0.0.0.0", ${port}))`,
    's.listen(128)',
    'held = []',
    'while True:',
    '    c = s.accept()[0]',
    ...(shutWrite ? ['    c.shutdown(socket.SHUT_WR)'] : []),
    '    held.append(c)',
  ].join('\n');
  void pod.spawn(DEBIAN_PYTHON, ['-I', '-c', py]).catch(() => undefined);
  await pod.waitForPort(port);
}

// The relay gives flow-control credit back itself; it must let go of the upstream sockets of reset streams and, after
// the linger bound, of streams closed in order whose app never reads.
netnsTest.serial(`flow control: after reset and never-read streams, a new stream on the same connection delivers within 1 s, and the upstreams are let go`, async (t) => {
  t.timeout(240_000);
  // Closed-in-order streams whose app never reads are reset after this (default 30 s), giving their credit back.
  const lingerEnv = 'AMBIENT_HBONE_UNREAD_LINGER_MS';
  const saved = process.env[lingerEnv];
  process.env[lingerEnv] = '2000';
  t.teardown(() => {
    if (saved === undefined) delete process.env[lingerEnv];
    else process.env[lingerEnv] = saved;
  });
  const s = await scene(t);
  await startStall(s.productpage, 9090, false);
  await startStall(s.productpage, 9091, true);
  const before = await agentFootprint(s.tb, 1);
  const common = ['--connect', `${s.productpage.ip}:15008`, '--ca', s.caPath, '--cert', s.credential.certPath, '--key', s.credential.keyPath,
    '--authority', `${s.productpage.ip}:9080`, '--stall-authority', `${s.productpage.ip}:9090`, '--timeout', '10'];
  const reset = await attack(s.attacker, ['flow', '--rounds', '3', '--streams', '4', ...common], 90_000);
  t.log('reset streams:', JSON.stringify(reset));
  t.is(reset.error, null);
  t.true(Number(reset.sent_total) > 16 * 1024 * 1024, `more than a connection window was sent into reset streams (${String(reset.sent_total)} bytes)`);
  t.true(reset.check_ok === true, 'a fifth stream on the same connection delivers');
  t.true(Number(reset.check_seconds) < 1, `within 1 s (${String(reset.check_seconds)} s)`);
  // In order, never read: held until the linger bound, then the credit comes back.
  const graceful = await attack(s.attacker, ['flow', '--rounds', '1', '--streams', '4', '--graceful', '--linger', '4', ...common,
    '--stall-authority', `${s.productpage.ip}:9091`], 90_000);
  t.log('graceful streams:', JSON.stringify(graceful));
  t.is(graceful.error, null);
  t.true(graceful.check_ok === true, 'a new stream delivers once the never-read streams are given up');
  t.true(Number(graceful.check_seconds) < 1, `within 1 s (${String(graceful.check_seconds)} s)`);
  const serving = await meshStillWorks(t, s, 'flow');
  t.log(`flow: serving again (pod ADD + 2 mesh connections) in ${serving.ms} ms`);
  await footprintBack(t, s, before, 'flow', 96, serving.podFds);
});

// Rapid reset (CVE-2023-44487): HEADERS then RST_STREAM at once, as fast as the client can write them; twice, since a
// second wave finds whatever the first left behind. Native: a request reset in the same read never reaches TypeScript
// (no dial), at most 200 requests per connection are in progress, and nghttp2's reset rate limit ends the connection.
netnsTest.serial(`rapid reset: 2 x 20,000 CONNECTs each cancelled at once leave the agent serving`, async (t) => {
  t.timeout(180_000);
  const s = await scene(t);
  await startUpstream(s.productpage, 'discard', 9099);
  const count = 20_000;
  for (const wave of [1, 2]) {
    const { r } = await underAttack(t, s, `rapid-reset-${wave}`, () => attack(s.attacker, ['rapid', ...withCert(s), '--target', `${s.productpage.ip}:9099`,
      '--count', String(count), '--batch', '200', '--max-seconds', '60'], 90_000));
    t.is(r.error, null, JSON.stringify(r));
    t.is(r.sent, count, 'every HEADERS + RST_STREAM pair was written');
    t.true(r.check_ok === true, `a new HBONE connection works after the attack (${String(r.check_seconds)} s)`);
  }
});

netnsTest.serial(`10,000 streams opened (upstream connected, 200) and then reset leave the agent serving`, async (t) => {
  t.timeout(180_000);
  const s = await scene(t);
  await startUpstream(s.productpage, 'discard', 9099);
  const count = 10_000;
  const { r } = await underAttack(t, s, 'open-and-reset', () => attack(s.attacker, ['churn', ...withCert(s), '--target', `${s.productpage.ip}:9099`,
    '--count', String(count), '--batch', '100', '--max-seconds', '90'], 120_000));
  t.is(r.error, null, JSON.stringify(r));
  t.is(Number(r.opened_and_reset) + Number(r.refused) + Number(r.unanswered), count, 'every stream was sent');
  // A connection the server closes for too many resets (GOAWAY) loses at most the one batch in flight.
  t.true(Number(r.opened_and_reset) >= count - 100 * Number(r.connections), `the rest were answered 200 before their reset (${String(r.opened_and_reset)} over ${String(r.connections)} connections)`);
  t.true(r.check_ok === true, `a CONNECT to the echo works after the attack (${String(r.check_seconds)} s)`);
});

// The client's SETTINGS give every stream a zero window and it never opens it, while the upstream app writes without
// end: what the agent reads from the app must stay bounded by flow control, not pile up in its memory.
netnsTest.serial(`window abuse: 200 streams with a zero window from an app that writes without end keep the agent's memory bounded`, async (t) => {
  t.timeout(180_000);
  const s = await scene(t);
  await startUpstream(s.productpage, 'source', 9098);
  const { r, before, peak } = await underAttack(t, s, 'zero-window', () => attack(s.attacker, ['window', ...withCert(s), '--target', `${s.productpage.ip}:9098`,
    '--connections', '2', '--streams', '100', '--hold', '10'], 60_000));
  t.is(r.error, null, JSON.stringify(r));
  t.is(r.answered_200, 200, 'every stream reached the app');
  t.is(r.data_bytes_received, 0, 'no DATA past a zero window');
  t.true(peak.rssMiB < before.rssMiB + 64, `agent RSS bounded while held: ${before.rssMiB} -> peak ${peak.rssMiB} MiB`);
  t.true(r.check_ok === true, 'a new connection works after the attack');
});
