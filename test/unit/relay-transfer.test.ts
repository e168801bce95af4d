// The relay hand-over over real sockets in one process (no root): a relay between two loopback TCP connections is
// paused, flushed, passed with SCM_RIGHTS through a relay inbox and spliced on while a counter stream and its echo flow;
// a successor that does not acknowledge in time leaves the relay where it was. Byte-exact both ways in every case.
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { RELAY_LIMITS, newHandoverToken, relayInboxPath, type RelayLimits, type RelayMeta } from '../../agent/src/handover/protocol.js';
import { RelayInbox, sendRelays, type OutgoingRelay } from '../../agent/src/handover/relay-transfer.js';
import { pauseRelay } from '../../agent/src/forwarder/relay-pause.js';
import { PodForwarder, relayAdoptable, type MeshContext, type PodSelf } from '../../agent/src/forwarder/pod-forwarder.js';
import type { Netns } from '../../agent/src/platform/netns.js';
import { createRootLogger } from '../../agent/src/log.js';

const log = createRootLogger('silent');

/**
 * Test-side sockets that a reset may hit: a relay that is closed as denied, or whose old copy is destroyed, can leave unread
 * bytes behind, and the kernel then resets the peer. Without a listener that 'error' (ECONNRESET/EPIPE) is an uncaught
 * exception that kills this whole test file. The tests judge the stream at the client (byte-exact echo), not here.
 */
function tolerateReset(...sockets: net.Socket[]): void {
  for (const s of sockets) s.on('error', () => undefined);
}

/** Splice two sockets both ways, as a relay does (resets tolerated, see above). */
function splice(a: net.Socket, b: net.Socket): void {
  tolerateReset(a, b);
  a.pipe(b);
  b.pipe(a);
}

/** An echo server on loopback. */
async function echoServer(t: { teardown: (f: () => void) => void }): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    tolerateReset(s);
    s.pipe(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => server.close());
  return (server.address() as net.AddressInfo).port;
}

/** A relay in this process: a loopback listener whose accepted socket (down) is piped to a connection to `port` (up). */
async function relayTo(port: number): Promise<{ listenPort: number; pair: Promise<{ down: net.Socket; up: net.Socket }>; close: () => void }> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const pair = new Promise<{ down: net.Socket; up: net.Socket }>((resolve) => {
    server.once('connection', (down) => {
      tolerateReset(down);
      const up = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => {
        splice(down, up);
        resolve({ down, up });
      });
      tolerateReset(up);
    });
  });
  return { listenPort: (server.address() as net.AddressInfo).port, pair, close: () => server.close() };
}

/** A client writing a counter stream every ms and checking that the echo is exactly what it wrote. */
function counterClient(port: number, everyMs = 1): { stop: () => Promise<{ sent: number; received: number; exact: boolean }> } {
  const sock = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const sent: Buffer[] = [];
  const got: Buffer[] = [];
  let n = 0;
  const timer = setInterval(() => {
    const b = Buffer.alloc(8 * 512);
    for (let i = 0; i < 512; i++) b.writeBigUInt64BE(BigInt(n++), 8 * i);
    sent.push(b);
    sock.write(b);
  }, everyMs);
  sock.on('data', (d: Buffer) => got.push(d));
  sock.on('error', () => undefined);
  const ended = new Promise<void>((r) => {
    sock.once('end', () => r());
    sock.once('close', () => r());
  });
  return {
    async stop() {
      clearInterval(timer);
      sock.end();
      await ended;
      sock.destroy();
      const a = Buffer.concat(sent);
      const b = Buffer.concat(got);
      return { sent: a.length, received: b.length, exact: a.equals(b) };
    },
  };
}

function movable(down: net.Socket, up: net.Socket, moved: { count: number }, extra: Partial<RelayMeta> = {}): OutgoingRelay {
  return {
    pod: 'pod-1',
    relay: {
      pause: () => pauseRelay(down, up),
      describe: (): Omit<RelayMeta, 'pod'> => ({
        direction: 'outbound', src: { addr: '127.0.0.1:1' }, dst: { addr: '127.0.0.1:2' }, startedAt: 1, bytesSent: down.bytesRead, bytesRecv: down.bytesWritten, ...extra,
      }),
      handedOver: () => {
        moved.count++;
        down.destroy();
        up.destroy();
      },
    },
  };
}

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `check` every 20 ms until it holds; throws after `timeoutMs`. */
async function eventually(check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`not true within ${timeoutMs} ms`);
    await delay(20);
  }
}

/** A scratch folder for an inbox, removed at the end. */
function scratchDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'relay-inbox-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** One relay to an echo server with a counter stream flowing through it (for 100 ms already), and an inbox path. */
async function streamingRelay(t: ExecutionContext) {
  const dir = scratchDir(t);
  const relay = await relayTo(await echoServer(t));
  t.teardown(relay.close);
  const client = counterClient(relay.listenPort);
  const { down, up } = await relay.pair;
  await delay(100);
  return { dir, inboxPath: relayInboxPath(dir, newHandoverToken()), client, down, up };
}

test.serial('a relay moves to the inbox while a counter stream and its echo flow: byte-exact, the old sockets closed, the new ones carry on', async (t) => {
  const { inboxPath, client, down, up } = await streamingRelay(t);
  const inbox = RelayInbox.open(inboxPath);
  const adopted: { meta: RelayMeta; down: net.Socket; up: net.Socket }[] = [];
  const serving = inbox.serve({
    canAdopt: (m) => m.pod === 'pod-1',
    adopt: (meta, d, u) => {
      const nd = new net.Socket({ fd: d, readable: true, writable: true, allowHalfOpen: true });
      const nu = new net.Socket({ fd: u, readable: true, writable: true, allowHalfOpen: true });
      splice(nd, nu);
      adopted.push({ meta, down: nd, up: nu });
    },
  }, RELAY_LIMITS, log);
  const moved = { count: 0 };
  const t0 = process.hrtime.bigint();
  const tally = await sendRelays(inboxPath, [movable(down, up, moved)], RELAY_LIMITS, log);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const inboxTally = await serving;
  t.log(`moved in ${ms.toFixed(1)} ms: ${JSON.stringify(tally)} / ${JSON.stringify(inboxTally)}`);
  t.deepEqual(tally, { moved: 1, kept: 0, reasons: {} });
  t.deepEqual(inboxTally, { received: 1, adopted: 1, refused: 0 });
  t.is(moved.count, 1, 'handed over: the predecessor side forgot it');
  t.true(down.destroyed && up.destroyed, 'and closed its sockets');
  t.true((adopted[0]?.meta.bytesSent ?? 0) > 0, 'the byte counts so far travelled with the relay');
  await delay(200);
  const r = await client.stop();
  t.log(`counter stream: ${r.sent} bytes sent, ${r.received} echoed`);
  t.true(r.exact, 'the echo is exactly the stream sent, across the move');
  t.true(r.sent > 100_000);
  for (const a of adopted) {
    a.down.destroy();
    a.up.destroy();
  }
});

test.serial('a successor that does not acknowledge in time: the relay stays and carries on byte-exact; the inbox closes its copies', async (t) => {
  const { inboxPath, client, down, up } = await streamingRelay(t);
  const limits: RelayLimits = { ...RELAY_LIMITS, ackMs: 200 };
  const inbox = RelayInbox.open(inboxPath);
  let adopts = 0;
  const serving = inbox.serve({ canAdopt: () => true, adopt: () => void adopts++ }, limits, log, 600);
  const moved = { count: 0 };
  const tally = await sendRelays(inboxPath, [movable(down, up, moved)], limits, log);
  const inboxTally = await serving;
  t.log(`${JSON.stringify(tally)} / ${JSON.stringify(inboxTally)}`);
  t.is(tally.moved, 0);
  t.is(tally.kept, 1);
  t.is(moved.count, 0);
  t.is(adopts, 0, 'the inbox started nothing without a commit');
  t.deepEqual(inboxTally, { received: 1, adopted: 0, refused: 1 });
  await delay(200);
  t.false(down.destroyed, 'the predecessor still carries it');
  const r = await client.stop();
  t.log(`counter stream: ${r.sent} bytes sent, ${r.received} echoed`);
  t.true(r.exact, 'the echo is exactly the stream sent: the relay resumed where it was paused');
});

test.serial('no inbox at the path: every relay stays', async (t) => {
  const dir = scratchDir(t);
  const fake = { pod: 'p', relay: { pause: () => undefined, describe: () => { throw new Error('unused'); }, handedOver: () => undefined } };
  const none = await sendRelays(join(dir, 'absent.sock'), [fake], { ...RELAY_LIMITS, ackMs: 100 }, log);
  t.deepEqual(none, { moved: 0, kept: 1, reasons: { 'no relay inbox': 1 } });
});

test.serial('no relays to move: the predecessor still connects and says done, so the inbox closes at once', async (t) => {
  const inboxPath = relayInboxPath(scratchDir(t), newHandoverToken());
  const inbox = RelayInbox.open(inboxPath);
  // A long idle bound: the inbox must end on the predecessor's "done", not on this.
  const serving = inbox.serve({ canAdopt: () => true, adopt: () => undefined }, { ...RELAY_LIMITS, idleMs: 60_000 }, log);
  const tally = await sendRelays(inboxPath, [], RELAY_LIMITS, log);
  const ended = await Promise.race([serving.then(() => 'done'), delay(10_000).then(() => 'still waiting')]);
  t.deepEqual(tally, { moved: 0, kept: 0, reasons: {} });
  t.is(ended, 'done');
  t.deepEqual(await serving, { received: 0, adopted: 0, refused: 0 });
});

test.serial('an inbox removes the inboxes left beside it (a successor killed mid-take-over), never its own', (t) => {
  const dir = scratchDir(t);
  writeFileSync(join(dir, 'relays.4242.sock'), '');
  writeFileSync(join(dir, 'relays.00112233aabbccdd.sock'), '');
  writeFileSync(join(dir, 'pods.json'), '{}');
  const inboxPath = relayInboxPath(dir, newHandoverToken());
  const inbox = RelayInbox.open(inboxPath);
  t.deepEqual(readdirSync(dir).sort(), ['pods.json', basename(inboxPath)].sort());
  inbox.close();
  t.deepEqual(readdirSync(dir), ['pods.json']);
});

test.serial('256 relays move in 16 batches while each carries a counter stream: all byte-exact (time logged)', async (t) => {
  const dir = scratchDir(t);
  const inboxPath = relayInboxPath(dir, newHandoverToken());
  const echo = await echoServer(t);
  const n = 256;
  const relays = await Promise.all(Array.from({ length: n }, () => relayTo(echo)));
  t.teardown(() => relays.forEach((r) => r.close()));
  const clients = relays.map((r) => counterClient(r.listenPort, 20));
  const pairs = await Promise.all(relays.map((r) => r.pair));
  await delay(200);
  const inbox = RelayInbox.open(inboxPath);
  const adopted: net.Socket[] = [];
  const serving = inbox.serve({
    canAdopt: () => true,
    adopt: (_meta, d, u) => {
      const nd = new net.Socket({ fd: d, readable: true, writable: true, allowHalfOpen: true });
      const nu = new net.Socket({ fd: u, readable: true, writable: true, allowHalfOpen: true });
      splice(nd, nu);
      adopted.push(nd, nu);
    },
  }, RELAY_LIMITS, log);
  const moved = { count: 0 };
  const t0 = process.hrtime.bigint();
  const tally = await sendRelays(inboxPath, pairs.map((p) => movable(p.down, p.up, moved)), RELAY_LIMITS, log);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  t.log(`${n} relays moved in ${ms.toFixed(1)} ms (${(ms / n).toFixed(3)} ms each): ${JSON.stringify(tally)} / ${JSON.stringify(await serving)}`);
  t.is(tally.moved, n);
  await delay(200);
  const results = await Promise.all(clients.map((c) => c.stop()));
  t.true(results.every((r) => r.exact && r.sent > 0), 'every stream byte-exact');
  for (const s of adopted) s.destroy();
});

test('a relay is adoptable only by a listening pod, and an inbound one only with the policy inputs it was admitted on', (t) => {
  const policy = { source: { ip: '10.0.0.1' }, destination: { ip: '10.0.0.2', port: 80 } };
  t.true(relayAdoptable({ direction: 'outbound' }, true));
  t.true(relayAdoptable({ direction: 'inbound', policy }, true));
  t.false(relayAdoptable({ direction: 'inbound' }, true), 'an inbound relay without policy could never be checked here');
  t.false(relayAdoptable({ direction: 'outbound' }, false));
  t.false(relayAdoptable({ direction: 'inbound', policy }, false));
});

test.serial('an inbound relay that this agent\'s policy denies is authorised on arrival and closed as denied', async (t) => {
  const { inboxPath, client, down, up } = await streamingRelay(t);
  const asked: string[] = [];
  // A forwarder for a pod whose policy denies everything: its sockets come from the inbox; it never enters the netns.
  const self: PodSelf = {
    ns: {} as Netns, ips: ['127.0.0.1'], identity: 'spiffe://cluster.local/ns/app/sa/web', name: 'web', namespace: 'app',
    mtlsMode: () => 'PERMISSIVE', baggage: '',
    authorize: (source) => {
      asked.push(source.ip);
      return { allowed: false, reason: 'denied by a test policy', dryRun: [] };
    },
  };
  const mesh = { lookup: () => undefined, trustDomain: 'cluster.local', captureFamilies: ['ipv4'], preserveSource: false } as unknown as MeshContext;
  const fwd = new PodForwarder(self, mesh, log);
  const inbox = RelayInbox.open(inboxPath);
  const serving = inbox.serve({ canAdopt: () => true, adopt: (meta, d, u) => fwd.adoptRelay(meta, d, u) }, RELAY_LIMITS, log);
  const policy = { source: { ip: '127.0.0.9' }, destination: { ip: '127.0.0.1', port: 80 } };
  const tally = await sendRelays(inboxPath, [movable(down, up, { count: 0 }, { direction: 'inbound', policy })], RELAY_LIMITS, log);
  t.deepEqual(await serving, { received: 1, adopted: 1, refused: 0 });
  t.is(tally.moved, 1);
  t.deepEqual(asked, ['127.0.0.9'], 'the policy inputs that travelled with the relay were authorised once, on arrival');
  await eventually(() => fwd.stats.active === 0, 5000);
  t.is(fwd.stats.inbound.denied, 1, 'counted as denied');
  t.is(fwd.stats.movedIn, 1);
  const r = await client.stop();
  t.log(`client after the denial: ${JSON.stringify(r)}`);
});

test.serial('a paused relay whose far end does not read: flushed() gives up at its bound, sleeping, not spinning (CPU logged)', async (t) => {
  // A server that accepts and never reads: the relay's writes toward it pile up in Node once the kernel buffers are full.
  const stuck: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    tolerateReset(s);
    s.pause();
    stuck.push(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    for (const s of stuck) s.destroy();
    server.close();
  });
  const relay = await relayTo((server.address() as net.AddressInfo).port);
  t.teardown(relay.close);
  const client = net.connect({ port: relay.listenPort, host: '127.0.0.1' });
  client.on('error', () => undefined);
  t.teardown(() => client.destroy());
  const { down, up } = await relay.pair;
  const chunk = Buffer.alloc(1 << 20, 7);
  for (let i = 0; i < 64 && up.writableLength === 0; i++) {
    client.write(chunk);
    await delay(20);
  }
  t.true(up.writableLength > 0, 'writes toward the far end are pending');
  const paused = pauseRelay(down, up);
  if (!paused) return t.fail('the relay could not be paused');
  const cpu0 = process.cpuUsage();
  const t0 = Date.now();
  const flushed = await paused.flushed(1000);
  const cpu = process.cpuUsage(cpu0);
  t.log(`flushed() -> ${flushed} after ${Date.now() - t0} ms wall, ${((cpu.user + cpu.system) / 1000).toFixed(1)} ms CPU`);
  t.false(flushed, 'not flushed: the far end reads nothing');
  paused.resume();
  down.destroy();
  up.destroy();
});
