// The native HBONE control plane's lifecycle races (issue 11): certificates renewed while dials and handshakes are in
// flight (no dial fails), and CONNECT streams the peer resets or never answers (every `ready` settles). Client and
// server are one NativeHbone in this process, with real TLS and sockets inside a throwaway network namespace; and an app
// dial given up when its stream goes away; streams refused before they were sent (opened again once, not after close()).
import http2 from 'node:http2';
import net from 'node:net';
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';
import { pino } from 'pino';
import type { AcceptedConnection, HboneInboundRequest, HboneListener } from '../../agent/src/hbone/data-path.js';
import { NativeHbone } from '../../agent/src/hbone/native.js';
import type { NativeLib } from '../../agent/src/hbone/native-lib.js';
import type { HboneTarget } from '../../agent/src/hbone/pool.js';
import { BuiltinCa } from '../../agent/src/identity/builtin-ca.js';
import type { IdentityProvider, TlsMaterial } from '../../agent/src/identity/provider.js';
import { checkLeafIdentity, createCsr, generateP256 } from '../../agent/src/identity/x509-util.js';
import { close } from '../../agent/src/platform/libc.js';
import { Netns } from '../../agent/src/platform/netns.js';
import { DIAL_TIMEOUT_MS, dialFrom, listenFdIn, listenIn, startDial } from '../../agent/src/platform/sockets.js';
import { PodForwarder, type MeshContext, type PodSelf } from '../../agent/src/forwarder/pod-forwarder.js';
import { AGENT_MARK } from '../../agent/src/redirect/constants.js';
import { netnsTest } from '../testbed/ava.js';
import { createNetns, deleteNetns, execInNetns, ipIn, netnsPath } from '../testbed/netns.js';

const TD = 'cluster.local';
const CLIENT_ID = `spiffe://${TD}/ns/app/sa/client`;
const SERVER_ID = `spiffe://${TD}/ns/app/sa/server`;
const ECHO_PORT = 9000;
const APP_PORT = 9001;
/** Bound on every wait of these tests: generous, only there so that a stuck promise fails instead of hanging. */
const WAIT_MS = 15_000;

/** Issues certificates ahead of time so that a renewal is one synchronous step, like CertManager's listeners see it. */
class RotatingIdentities implements IdentityProvider {
  readonly trustDomain = TD;
  renewals = 0;
  /** While set, material() waits for it (a CA that is slow, or fails when it rejects). */
  private gate: Promise<void> | undefined;
  private current = new Map<string, TlsMaterial>();
  private spare = new Map<string, TlsMaterial[]>();
  private listeners: Array<(identity: string) => void> = [];

  private constructor(private readonly ca: BuiltinCa) {}

  static async create(identities: string[], spares: number): Promise<RotatingIdentities> {
    const p = new RotatingIdentities(await BuiltinCa.ephemeral({ trustDomain: TD }));
    for (const id of identities) {
      p.current.set(id, await p.issue(id));
      p.spare.set(id, await Promise.all(Array.from({ length: spares }, () => p.issue(id))));
    }
    return p;
  }

  private async issue(identity: string): Promise<TlsMaterial> {
    const { keys, keyPem } = await generateP256();
    const res = await this.ca.sign({ csrPem: await createCsr(identity, keys), identity, ttlSeconds: 3600 });
    const leaf = checkLeafIdentity(identity, res.chainPem[0]);
    return { identity, keyPem, chainPem: res.chainPem.join(''), rootsPem: res.rootsPem.join(''), serial: leaf.serialNumber, notBefore: leaf.notBefore, notAfter: leaf.notAfter };
  }

  /** Switches to the next certificate and tells the listeners, synchronously. False when no spare is left. */
  renew(identity: string): boolean {
    const next = this.spare.get(identity)?.shift();
    if (!next) return false;
    this.current.set(identity, next);
    this.renewals++;
    for (const l of this.listeners) l(identity);
    return true;
  }

  async material(identity: string): Promise<TlsMaterial> {
    if (this.gate) await this.gate;
    const m = this.current.get(identity);
    if (!m) throw new Error(`no certificate for ${identity}`);
    return m;
  }

  /** Holds every material() call until release(), or fails them with fail(err). */
  hold(): { release: () => void; fail: (err: Error) => void } {
    let release!: () => void;
    let fail!: (err: Error) => void;
    const gate = new Promise<void>((resolve, reject) => {
      release = resolve;
      fail = reject;
    });
    gate.catch(() => undefined);
    this.gate = gate;
    const done = (): void => {
      if (this.gate === gate) this.gate = undefined;
    };
    return { release: () => (done(), release()), fail: (err) => (done(), fail(err)) };
  }

  retain(): void {}

  onRenewed(listener: (identity: string) => void): () => void {
    this.listeners.push(listener);
    return () => (this.listeners = this.listeners.filter((l) => l !== listener));
  }

  async stop(): Promise<void> {}
}

/** A promise's outcome within WAIT_MS, or 'pending' (a promise that never settles is the bug under test). */
async function within<T>(p: Promise<T>, ms = WAIT_MS): Promise<{ ok: true; value: T } | { ok: false; error: string } | 'pending'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'pending'>((resolve) => (timer = setTimeout(() => resolve('pending'), ms)));
  try {
    return await Promise.race([p.then((value) => ({ ok: true as const, value }), (err: Error) => ({ ok: false as const, error: err.message })), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface Rig {
  /** The namespace's name (for `ip netns exec`) and its handle. */
  name: string;
  ns: Netns;
  ids: RotatingIdentities;
  hbone: NativeHbone;
  listener: HboneListener;
  /** How the server answers each request (default: 200 with a connection to the echo server). */
  onRequest: (r: HboneInboundRequest) => void;
  refused: string[];
  /** Accepted app connections (fds the native listener handed over, unread), by the port the app connected from. */
  accepted: Map<number, AcceptedConnection>;
  /** The apps' own sockets, destroyed at the end. */
  clients: net.Socket[];
}

/** One namespace with an echo server, an app-side listener (the native outbound listener, as 15001's) and a NativeHbone serving 15008; torn down by t. */
async function rig(t: ExecutionContext, opts: { spares?: number; answerTimeoutMs?: number; onFatal?: (err: Error) => void } = {}): Promise<Rig> {
  const name = `amb-nhl-${process.pid}-${Math.random().toString(36).slice(2, 7)}`;
  await createNetns(name);
  t.teardown(() => deleteNetns(name));
  const ns = Netns.open(netnsPath(name));
  t.teardown(() => ns.close());
  const ids = await RotatingIdentities.create([CLIENT_ID, SERVER_ID], opts.spares ?? 0);
  const hbone = new NativeHbone(ids, pino({ level: 'silent' }), {
    ...(opts.answerTimeoutMs ? { pool: { answerTimeoutMs: opts.answerTimeoutMs } } : {}),
    ...(opts.onFatal ? { onFatal: opts.onFatal } : {}),
  });
  hbone.start();
  t.teardown(() => hbone.stop());
  // Every socket the test's servers accept is destroyed at the end, so that closing the servers cannot wait on them.
  const sockets = new Set<net.Socket>();
  const keep = (s: net.Socket): net.Socket => {
    s.on('error', () => undefined);
    sockets.add(s);
    return s;
  };
  const echo = await listenIn(ns, { address: '127.0.0.1', port: ECHO_PORT }, (s) => keep(s).pipe(s));
  const accepted = new Map<number, AcceptedConnection>();
  const app = hbone.listenOutbound(listenFdIn(ns, { address: '127.0.0.1', port: APP_PORT }), 'ipv4', (c) => accepted.set(c.src.port, c));
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    app.close(false);
    for (const c of accepted.values()) close(c.fd); // accepted, never handed to a test (appConnection takes them off)
    await new Promise<void>((resolve) => echo.close(() => resolve()));
  });
  const base = {
    name, ns, ids, hbone, refused: [] as string[], accepted, clients: [] as net.Socket[],
    onRequest: (req: HboneInboundRequest): void => {
      req.answerConnect(startDial(ns, { host: '127.0.0.1', port: ECHO_PORT, mark: 0 }), DIAL_TIMEOUT_MS);
    },
  };
  const listener = await hbone.listen(ns, SERVER_ID, TD, (req) => r.onRequest(req), (reason) => r.refused.push(reason), { reusePort: true }); // beside otherPeer and a second server (below)
  const r: Rig = Object.assign(base, { listener });
  t.teardown(async () => {
    for (const c of r.clients) c.destroy();
    await listener.close();
  });
  return r;
}

/** An app connection through HBONE: the app's socket (inside the namespace) and the outbound stream carrying it. */
async function open(r: Rig, srcIp: string) {
  const { client, down } = await appConnection(r);
  return { client, stream: r.hbone.connect(target(r, srcIp), down, `127.0.0.1:${ECHO_PORT}`, { forwarded: `for="${srcIp}:1"` }) };
}

const target = (r: Rig, srcIp: string): HboneTarget => ({ ns: r.ns, srcIp, srcIdentity: CLIENT_ID, dstIp: '127.0.0.1', dstIdentity: SERVER_ID });

/** An app's connection inside the namespace: its own socket, and the agent side accepted (paused). */
async function appConnection(r: Rig): Promise<{ client: net.Socket; down: number }> {
  const client = await dialFrom(r.ns, { host: '127.0.0.1', port: APP_PORT, mark: 0 });
  client.on('error', () => undefined);
  r.clients.push(client);
  let down: AcceptedConnection | undefined;
  for (let i = 0; i < 200 && !down; i++) {
    down = r.accepted.get(client.localPort ?? -1);
    if (!down) await new Promise((resolve) => setTimeout(resolve, 5));
  }
  if (!down) throw new Error('the app connection was not accepted');
  r.accepted.delete(down.src.port); // handed on: the test's from here
  return { client, down: down.fd };
}

/** Writes `text` and reads it back from the echo server, within WAIT_MS. */
function echo(client: net.Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const timer = setTimeout(() => reject(new Error(`echo of ${text}: got ${JSON.stringify(got)} within ${WAIT_MS} ms`)), WAIT_MS);
    client.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.length >= text.length) {
        clearTimeout(timer);
        resolve(got);
      }
    });
    client.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    client.write(text);
  });
}

/** Polls `cond` every 5 ms until it holds or WAIT_MS passed; whether it held. */
async function waitFor(cond: () => boolean): Promise<boolean> {
  for (const end = Date.now() + WAIT_MS; !cond() && Date.now() < end;) await new Promise((resolve) => setTimeout(resolve, 5));
  return cond();
}

/** Whether the app's socket was closed by the other side (EOF or reset) within WAIT_MS. */
function ended(client: net.Socket): Promise<boolean> {
  if (client.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), WAIT_MS);
    client.resume();
    client.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** What another HBONE server does with the n-th CONNECT it gets (from 1): refuse it (REFUSED_STREAM), hold it, serve it. */
type PeerPlan = (n: number) => 'refuse' | 'hold' | 'serve';

/**
 * An HBONE server of another implementation (Node's http2, with the server identity's certificate) on `address`:15008
 * in the rig's namespace (beside the rig's 0.0.0.0 listener: SO_REUSEPORT, the exact address wins); served streams are
 * CONNECTed to the echo server. Closed by t.
 */
async function otherPeer(t: ExecutionContext, r: Rig, address: string, plan: PeerPlan) {
  const m = await r.ids.material(SERVER_ID);
  const h2 = http2.createSecureServer({ key: m.keyPem, cert: m.chainPem, ca: m.rootsPem, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'] });
  const peer = { streams: 0, held: [] as http2.ServerHttp2Stream[] };
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on('session', (sess) => sessions.add(sess.on('error', () => undefined)));
  h2.on('stream', (stream) => {
    stream.on('error', () => undefined);
    const what = plan(++peer.streams);
    if (what === 'refuse') stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
    else if (what === 'hold') peer.held.push(stream);
    else {
      dialFrom(r.ns, { host: '127.0.0.1', port: ECHO_PORT, mark: 0 }).then((up) => {
        up.on('error', () => undefined);
        stream.respond({ ':status': 200 });
        stream.pipe(up).pipe(stream);
      }, () => stream.close(http2.constants.NGHTTP2_CONNECT_ERROR));
    }
  });
  const srv = await listenIn(r.ns, { address, port: 15008, reusePort: true }, (sock) => h2.emit('connection', sock)); // beside the rig's 0.0.0.0 listener
  t.teardown(async () => {
    for (const sess of sessions) sess.destroy();
    await new Promise<void>((resolve) => srv.close(() => resolve()));
  });
  return peer;
}

const PEER_IP = '127.0.0.2';
const peerTarget = (r: Rig): HboneTarget => ({ ...target(r, '10.80.0.1'), dstIp: PEER_IP });

netnsTest.serial('native outbound listener: 300 connections at once are all handed over, each with its own addresses and first bytes', async (t) => {
  const r = await rig(t);
  const N = 300; // well past ACCEPT_CREDITS: only credits granted back let the listener report them all
  const clients = await Promise.all(Array.from({ length: N }, () => dialFrom(r.ns, { host: '127.0.0.1', port: APP_PORT, mark: 0 })));
  for (const c of clients) {
    c.on('error', () => undefined);
    r.clients.push(c);
  }
  t.true(await waitFor(() => r.accepted.size === N), `${r.accepted.size} of ${N} connections handed over`);
  for (const c of clients) {
    const a = r.accepted.get(c.localPort ?? -1);
    t.like(a, { src: { address: '127.0.0.1', port: c.localPort }, dst: { address: '127.0.0.1', port: APP_PORT } });
  }
  // The fd is the app's connection, unread: what the app writes first is still in it.
  const first = clients[N - 1]!;
  first.write('first bytes');
  const { fd } = r.accepted.get(first.localPort ?? -1)!;
  r.accepted.delete(first.localPort ?? -1);
  const sock = new net.Socket({ fd, readable: true, writable: true });
  t.teardown(() => sock.destroy());
  const got = await new Promise<string>((resolve) => sock.once('data', (d: Buffer) => resolve(d.toString())));
  t.is(got, 'first bytes');
});

netnsTest.serial('native: certificates renewed while dials and handshakes are in flight fail no dial (new ones use the new certificate)', async (t) => {
  const DIALS = 40;
  const ROTATIONS = 30;
  const r = await rig(t, { spares: ROTATIONS });
  // Each source IP is its own pool key, so every connection dials its own HBONE connection (all at once).
  const opening = Array.from({ length: DIALS }, (_, i) => open(r, `10.77.0.${i + 1}`));
  // Meanwhile renew both certificates at every turn of the event loop, until the spares run out or every dial settled.
  let settled = 0;
  const streams = opening.map((o) => o.then((c) => c.stream).finally(() => settled++));
  let rotated = 0;
  let inFlight = 0; // renewals made while at least one dial had not settled
  while (settled < DIALS && rotated < ROTATIONS) {
    r.ids.renew(CLIENT_ID);
    r.ids.renew(SERVER_ID);
    rotated++;
    if (settled < DIALS) inFlight++;
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  const results = await Promise.all(streams.map(async (s) => {
    const opened = await within(s);
    if (opened === 'pending' || !opened.ok) return opened === 'pending' ? 'connect never settled' : opened.error;
    const ready = await within(opened.value.ready);
    return ready === 'pending' ? 'ready never settled' : ready.ok ? 'ok' : ready.error;
  }));
  t.log(`${DIALS} dials, ${inFlight} renewals of each certificate while dials were in flight (${settled} dials had settled by the last one)`);
  const failed = results.filter((x) => x !== 'ok');
  t.deepEqual(failed, [], `every dial made during the renewals worked; failures: ${failed.slice(0, 3).join(' | ')}`);
  t.true(inFlight >= 2, 'certificates were renewed while dials were in flight');
  t.deepEqual(r.refused, [], 'the server refused no handshake');
  const clients = await Promise.all(opening);
  const echoed = await Promise.all(clients.map((c, i) => echo(c.client, `hello ${i}`)));
  t.deepEqual(echoed, clients.map((_, i) => `hello ${i}`), 'bytes go both ways on every connection');
  // After the renewals, a new connection on an existing key dials with the newest certificate and works.
  const later = await open(r, '10.77.0.1');
  t.like(await within(later.stream.then((s) => s.ready)), { ok: true });
  t.is(await echo(later.client, 'after'), 'after');
});

netnsTest.serial('native: a CONNECT the peer resets, refuses or never answers settles its ready promise', async (t) => {
  const r = await rig(t, { answerTimeoutMs: 1500 });
  // Warm: a connection up and one stream answered.
  const first = await open(r, '10.78.0.1');
  t.like(await within(first.stream.then((s) => s.ready)), { ok: true });

  // 1. The server resets the stream before answering it.
  r.onRequest = (req) => req.stream.close();
  const reset = await open(r, '10.78.0.1');
  const resetReady = await within(reset.stream.then((s) => s.ready));
  t.not(resetReady, 'pending', 'a stream reset before its answer settles');
  t.like(resetReady, { ok: false });
  t.log(`reset before the answer: ${JSON.stringify(resetReady)}`);

  // 2. Refused with a status.
  r.onRequest = (req) => req.answer(401);
  const refused = await open(r, '10.78.0.1');
  const refusedReady = await within(refused.stream.then((s) => s.ready));
  t.like(refusedReady, { ok: false });
  t.regex(refusedReady === 'pending' || refusedReady.ok ? '' : refusedReady.error, /401/);

  // 3. Never answered: the answer timeout resets the stream.
  const unanswered: HboneInboundRequest[] = [];
  r.onRequest = (req) => unanswered.push(req);
  const silent = await open(r, '10.78.0.1');
  const silentReady = await within(silent.stream.then((s) => s.ready));
  t.like(silentReady, { ok: false });
  t.regex(silentReady === 'pending' || silentReady.ok ? '' : silentReady.error, /not answered within 1500 ms/);
  const silentEnd = await within((await silent.stream).closed);
  t.like(silentEnd, { ok: true, value: { reset: true } }, 'the unanswered stream is reset and closed');
  const serverSide = await within(unanswered[0]?.stream.closed ?? Promise.reject(new Error('no request reached the server')));
  t.like(serverSide, { ok: true }, 'the server saw the stream end');

  // 4. The whole server side goes away while a request waits for its answer.
  r.onRequest = (req) => unanswered.push(req);
  const orphan = await open(r, '10.78.0.1');
  for (let i = 0; i < 200 && unanswered.length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  await r.listener.close();
  const orphanReady = await within(orphan.stream.then((s) => s.ready));
  t.like(orphanReady, { ok: false }, 'a stream whose connection closed before the answer settles');

  // The first stream was on that connection too: it ended, and its app socket with it.
  t.like(await within((await first.stream).closed), { ok: true });
});

netnsTest.serial('native answerConnect: 200 once connected; 503 named in the end when refused or timed out; a reset closes the socket in flight', async (t) => {
  const r = await rig(t);
  const name = r.ns.path.slice(r.ns.path.lastIndexOf('/') + 1);
  // SYNs to 10.79.0.2 leave through a veth whose peer has no address (a fixed neighbour entry, so no ARP failure
  // either): nothing ever answers, and a connect hangs until it is given up. Both ends live in the rig's namespace.
  const ip = (...args: string[]) => execa('ip', ['-n', name, ...args]);
  await ip('link', 'add', 'amb-bh0', 'type', 'veth', 'peer', 'name', 'amb-bh1');
  await ip('addr', 'add', '10.79.0.1/24', 'dev', 'amb-bh0');
  await ip('link', 'set', 'amb-bh0', 'up');
  await ip('link', 'set', 'amb-bh1', 'up');
  await ip('neigh', 'add', '10.79.0.2', 'lladdr', '02:00:00:00:79:02', 'dev', 'amb-bh0', 'nud', 'permanent');
  const toBlackhole = async (): Promise<string> =>
    String((await execa('ip', ['netns', 'exec', name, 'ss', '-Htan', 'dst', '10.79.0.2'])).stdout).trim();
  /** Polls the namespace's sockets toward 10.79.0.2 until `cond` holds, within WAIT_MS. */
  const blackholeUntil = async (cond: (ss: string) => boolean): Promise<boolean> => {
    for (const end = Date.now() + WAIT_MS; Date.now() < end; await new Promise((resolve) => setTimeout(resolve, 20))) {
      if (cond(await toBlackhole())) return true;
    }
    return false;
  };
  const served: HboneInboundRequest[] = [];
  const answerWith = (host: string, port: number, timeoutMs: number) => (req: HboneInboundRequest): void => {
    served.push(req);
    req.answerConnect(startDial(r.ns, { host, port, mark: 0 }), timeoutMs);
  };

  // Connected: answered 200, and the bytes flow.
  r.onRequest = answerWith('127.0.0.1', ECHO_PORT, WAIT_MS);
  const ok = await open(r, '10.78.0.1');
  t.like(await within((await ok.stream).ready), { ok: true });
  t.is(await echo(ok.client, 'through a native connect'), 'through a native connect');

  // Refused: 503, and the server side's end says why.
  r.onRequest = answerWith('127.0.0.1', APP_PORT + 7, WAIT_MS);
  const refused = await open(r, '10.78.0.1');
  t.regex(String((await within((await refused.stream).ready) as { error?: string }).error), /503/);
  t.like(await within(served.at(-1)?.stream.closed ?? Promise.reject(new Error('no request'))), { ok: true, value: { connectFailed: true, error: 'connect ECONNREFUSED (Connection refused)' } });

  // Not connected within its time: 503 at the deadline (the relay's tick is 1 s), named ETIMEDOUT; the socket is gone.
  r.onRequest = answerWith('10.79.0.2', 80, 1000);
  const started = Date.now();
  const silent = await open(r, '10.78.0.1');
  t.regex(String((await within((await silent.stream).ready) as { error?: string }).error), /503/);
  t.true(Date.now() - started < WAIT_MS / 2, 'answered at its deadline, not at the kernel\'s connect timeout');
  t.like(await within(served.at(-1)?.stream.closed ?? Promise.reject(new Error('no request'))), { ok: true, value: { connectFailed: true, error: 'connect ETIMEDOUT (Connection timed out)' } });
  t.true(await blackholeUntil((ss) => ss === ''), 'the timed-out socket is closed');

  // The stream ends while its connect is in flight, reset by the client, then closed by the agent (a policy change):
  // the socket is closed then, long before its connect would time out (60 s).
  for (const who of ['client', 'agent'] as const) {
    r.onRequest = answerWith('10.79.0.2', 80, 60_000);
    const inFlight = await open(r, '10.78.0.1');
    t.true(await waitFor(() => served.length === (who === 'client' ? 4 : 5)), 'the request reached the server');
    t.true(await blackholeUntil((ss) => /SYN-SENT/.test(ss)), 'the connect is in flight (the check below can see its socket)');
    const closedAt = Date.now();
    if (who === 'client') (await inFlight.stream).close();
    else served.at(-1)?.stream.close();
    t.true(await blackholeUntil((ss) => ss === ''), `${who}: no socket is left behind (none in SYN-SENT or any other state)`);
    t.true(Date.now() - closedAt < 3000, `${who}: the socket was closed with the stream, not at its connect's deadline`);
    t.like(await within((await inFlight.stream).ready), { ok: false }, `${who}: never answered 200 (the connect could not end first)`);
    const end = await within(served.at(-1)?.stream.closed ?? Promise.reject(new Error('no request')));
    t.like(end, { ok: true }, `${who}: the server side's stream ended`);
    t.false(end !== 'pending' && end.ok && end.value.connectFailed === true, `${who}: its end does not blame the connect`);
  }
});

netnsTest.serial('native: the library ending its event socket fails every pending stream and reports a fatal AMB_ERR_NATIVE_LIB once', async (t) => {
  const fatal: Error[] = [];
  const r = await rig(t, { onFatal: (err) => fatal.push(err) });
  const unanswered: HboneInboundRequest[] = [];
  r.onRequest = (req) => unanswered.push(req);
  const first = await open(r, '10.78.0.1');
  for (let i = 0; i < 200 && unanswered.length < 1; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  t.is(unanswered.length, 1, 'the request reached the server side and waits for its answer');

  // What the library does when it cannot queue an event (out of memory): its end of the event socket goes away. The
  // agent's side sees the socket close without having called stop().
  const events = (r.hbone as unknown as { events?: net.Socket }).events;
  t.truthy(events, 'the event socket is open');
  events?.destroy();

  const ready = await within((await first.stream).ready);
  t.like(ready, { ok: false }, 'the pending stream settles');
  t.like(await within((await first.stream).closed), { ok: true }, 'and closes');
  for (let i = 0; i < 100 && fatal.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  t.is(fatal.length, 1, 'reported once');
  t.is((fatal[0] as Error & { code?: string }).code, 'AMB_ERR_NATIVE_LIB');
  t.regex(fatal[0]?.message ?? '', /ended its event socket/);
  await t.throwsAsync(r.hbone.listen(r.ns, SERVER_ID, TD, () => undefined, () => undefined), { message: /not started/ }, 'nothing new is taken');
  r.hbone.stop(); // idempotent after the failure (the rig's teardown calls it again)
});

netnsTest.serial('native: a stream that crosses the peer\'s GOAWAY is opened again on a new connection, and the app notices nothing', async (t) => {
  const r = await rig(t);
  // Whether a stream crosses the notice depends on the library's thread taking the GOAWAY in while this thread, held
  // busy, has not read the event telling the pool: tried with longer holds until one attempt crossed. Every attempt must
  // work either way; at least one must have been refused and opened again.
  const ATTEMPTS = 5;
  let current = r.listener;
  let crossed = 0;
  for (let attempt = 0; attempt < ATTEMPTS && crossed === 0; attempt++) {
    // A pooled connection to the listener about to stop (the only one accepting now), with a stream on it.
    const first = await open(r, '10.79.0.1');
    t.like(await within(first.stream.then((s) => s.ready)), { ok: true }, `attempt ${attempt}: the warm stream works`);
    // A second server beside it (SO_REUSEPORT, as an older agent's successor binds beside it).
    const successor = await r.hbone.listen(r.ns, SERVER_ID, TD, (req) => r.onRequest(req), (reason) => r.refused.push(reason), { reusePort: true });
    t.teardown(() => successor.close());
    const { client, down } = await appConnection(r);
    void current.stopAccepting();
    const until = Date.now() + 300 * 2 ** attempt;
    while (Date.now() < until) {
      // busy: no event is read
    }
    const before = r.hbone.stats.streamsRetried;
    const stream = r.hbone.connect(target(r, '10.79.0.1'), down, `127.0.0.1:${ECHO_PORT}`, {});
    const ready = await within(stream.then((s) => s.ready));
    t.like(ready, { ok: true }, `attempt ${attempt}: the stream was answered (${JSON.stringify(ready)})`);
    const retried = r.hbone.stats.streamsRetried - before;
    t.true(retried <= 1, `attempt ${attempt}: opened again at most once (${retried})`);
    crossed += retried;
    t.is(await echo(client, 'crossed'), 'crossed', `attempt ${attempt}: the app's bytes went through, none lost`);
    t.is(await echo(first.client, 'still'), 'still', `attempt ${attempt}: the stream opened before the notice is still served`);
    t.log(`attempt ${attempt}: held ${300 * 2 ** attempt} ms, ${retried ? 'crossed the GOAWAY and was opened again' : 'went to a connection that had not been told'}`);
    current = successor;
  }
  t.is(crossed, 1, 'one attempt crossed the GOAWAY, was refused and opened again');
});

netnsTest.serial('native: a stream the peer refuses again after its one retry fails, and its app connection is reset', async (t) => {
  const r = await rig(t);
  const peer = await otherPeer(t, r, PEER_IP, () => 'refuse');
  const before = r.hbone.stats.streamsRetried;
  const { client, down } = await appConnection(r);
  const out = await r.hbone.connect(peerTarget(r), down, `127.0.0.1:${ECHO_PORT}`, {});
  const ready = await within(out.ready);
  t.like(ready, { ok: false });
  t.regex(ready === 'pending' || ready.ok ? '' : ready.error, /REFUSED_STREAM/);
  t.like(await within(out.closed), { ok: true, value: { reset: true } }, 'the stream ends, reset');
  t.is(peer.streams, 2, 'sent twice: the first try and its one retry');
  t.is(r.hbone.stats.streamsRetried - before, 1, 'counted once');
  t.true(await ended(client), 'the app connection was closed');
});

/**
 * A stream refused by the peer whose retry waits for a connection (the client certificate was renewed and its material
 * is held): `meanwhile` runs once the retry is waiting, then the material is released (or `fail`ed).
 */
async function refusedWhileRetryWaits(t: ExecutionContext, meanwhile: (out: Awaited<ReturnType<NativeHbone['connect']>>) => void, fail?: Error) {
  const r = await rig(t, { spares: 1 });
  const peer = await otherPeer(t, r, PEER_IP, (n) => (n === 1 ? 'hold' : 'serve'));
  const { client, down } = await appConnection(r);
  const out = await r.hbone.connect(peerTarget(r), down, `127.0.0.1:${ECHO_PORT}`, {});
  t.true(await waitFor(() => peer.held.length === 1), 'the CONNECT reached the peer');
  const gate = r.ids.hold();
  r.ids.renew(CLIENT_ID); // the retry's acquire needs the new certificate's material: it waits at the gate
  const before = r.hbone.stats.streamsRetried;
  peer.held[0]?.close(http2.constants.NGHTTP2_REFUSED_STREAM);
  t.true(await waitFor(() => r.hbone.stats.streamsRetried > before), 'the refused stream is being opened again');
  meanwhile(out);
  if (fail) gate.fail(fail);
  else gate.release();
  return { r, peer, client, out };
}

netnsTest.serial('native: close() while a refused stream waits to be opened again ends it: it is not opened again', async (t) => {
  const { peer, client, out } = await refusedWhileRetryWaits(t, (o) => o.close());
  const ready = await within(out.ready);
  t.like(ready, { ok: false }, `the stream does not carry on after close() (${JSON.stringify(ready)})`);
  t.regex(ready === 'pending' || ready.ok ? '' : ready.error, /closed while it was being opened again/);
  t.like(await within(out.closed), { ok: true, value: { reset: true } }, 'it ends, reset');
  t.true(await ended(client), 'the app connection was closed');
  t.is(peer.streams, 1, 'no second CONNECT was sent');
});

netnsTest.serial('native: a connection that cannot be had for the retry of a refused stream fails it and resets its app connection', async (t) => {
  const { peer, client, out } = await refusedWhileRetryWaits(t, () => undefined, new Error('CA unreachable'));
  const ready = await within(out.ready);
  t.like(ready, { ok: false });
  t.regex(ready === 'pending' || ready.ok ? '' : ready.error, /CA unreachable/);
  t.like(await within(out.closed), { ok: true, value: { reset: true } });
  t.true(await ended(client), 'the app connection was closed');
  t.is(peer.streams, 1, 'no second CONNECT was sent');
});

netnsTest.serial('native: stop() resets an app socket handed back in an event it never read', async (t) => {
  const r = await rig(t);
  const { client, down } = await appConnection(r);
  const lib = (r.hbone as unknown as { lib: NativeLib }).lib;
  // A stream on a session that never was: the library hands the app socket back in its "status" event; stop() in the
  // same tick, before that event is read.
  t.true(lib.clientStream(987654321, down, `127.0.0.1:${ECHO_PORT}`, '') > 0);
  r.hbone.stop();
  t.true(await ended(client), 'the app connection was closed, not left open in this process');
});

netnsTest.serial('native connect() owns the app socket: a stream it cannot open, or one its caller gave up on meanwhile, resets it once', async (t) => {
  const r = await rig(t);
  // Headers the library cannot carry: openClientStream throws after the pool gave a connection.
  const bad = await appConnection(r);
  const refused = await within(r.hbone.connect(target(r, '10.79.0.2'), bad.down, `127.0.0.1:${ECHO_PORT}`, { 'x-bad': 'a\nb' }));
  t.like(refused, { ok: false });
  t.true(await ended(bad.client), 'the app connection was reset by connect()');
  // Cancelled while the connection was being had: reset, never tunnelled.
  const gaveUp = await appConnection(r);
  const cancelled = await within(r.hbone.connect(target(r, '10.79.0.2'), gaveUp.down, `127.0.0.1:${ECHO_PORT}`, {}, () => true));
  t.like(cancelled, { ok: false });
  t.regex(cancelled === 'pending' || cancelled.ok ? '' : cancelled.error, /closed before its HBONE stream opened/);
  t.true(await ended(gaveUp.client), 'the app connection was reset');
  // The fds were closed once: a connection made now (which may reuse their numbers) still works end to end.
  const { client, stream } = await open(r, '10.79.0.2');
  const out = await stream;
  t.like(await within(out.ready), { ok: true });
  t.is(await echo(client, 'after'), 'after');
});

netnsTest.serial('a pod forwarder restarted (stop, then start, as a repair does) relays outbound connections again', async (t) => {
  const r = await rig(t);
  // A destination outside the mesh, reached through REDIRECT to 15001 as an enrolled pod's traffic is (the agent's own
  // dial carries the agent mark, which the rule exempts).
  await ipIn(r.name, 'addr', 'add', '10.99.0.2/32', 'dev', 'lo');
  await execInNetns(r.name, 'iptables', ['-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-d', '10.99.0.2', '-m', 'mark', '!', '--mark', String(AGENT_MARK), '-j', 'REDIRECT', '--to-ports', '15001']);
  const sockets: net.Socket[] = [];
  const dest = await listenIn(r.ns, { address: '10.99.0.2', port: 9100 }, (s) => {
    sockets.push(s);
    s.on('error', () => undefined).pipe(s);
  });
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => dest.close(() => resolve()));
  });
  const self: PodSelf = {
    ns: r.ns, ips: ['127.0.0.1'], identity: CLIENT_ID, name: 'app', namespace: 'app', mtlsMode: () => 'PERMISSIVE', baggage: '',
    authorize: () => ({ allowed: true, reason: 'test', dryRun: [] }),
  };
  const mesh: MeshContext = { lookup: () => undefined, identities: r.ids, hbone: r.hbone, trustDomain: TD, preserveSource: false, appMark: 0, captureFamilies: ['ipv4'] };
  const fwd = new PodForwarder(self, mesh, pino({ level: 'silent' }));
  t.teardown(() => fwd.stop());
  const roundTrip = async (text: string): Promise<string> => {
    const c = await dialFrom(r.ns, { host: '10.99.0.2', port: 9100, mark: 0 });
    c.on('error', () => undefined);
    r.clients.push(c);
    return echo(c, text);
  };
  await fwd.start({}, true); // SO_REUSEPORT: beside the rig's own 15008
  t.is(await roundTrip('first'), 'first');
  await fwd.stop();
  await fwd.start({}, true);
  t.true(fwd.listening);
  t.is(await roundTrip('again'), 'again', 'relayed after the restart, not reset');
  t.is(fwd.stats.outbound.opened, 2);
});
