// The relay hand-over over real sockets in one process (no root): a relay between two loopback TCP connections is
// paused, flushed, passed with SCM_RIGHTS through a relay inbox and spliced on while a counter stream and its echo flow;
// a successor that does not acknowledge in time leaves the relay where it was. Byte-exact both ways in every case.
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { RELAY_LIMITS, relayInboxPath, type RelayLimits, type RelayMeta } from '../../agent/src/handover/protocol.js';
import { RelayInbox, sendRelays, type OutgoingRelay } from '../../agent/src/handover/relay-transfer.js';
import { pauseRelay } from '../../agent/src/forwarder/relay-pause.js';
import { createRootLogger } from '../../agent/src/log.js';

const log = createRootLogger('silent');

/** An echo server on loopback. */
async function echoServer(t: { teardown: (f: () => void) => void }): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
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
      const up = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => {
        down.pipe(up);
        up.pipe(down);
        resolve({ down, up });
      });
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
  const ended = new Promise<void>((r) => sock.once('end', () => r()));
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

function movable(down: net.Socket, up: net.Socket, moved: { count: number }): OutgoingRelay {
  return {
    pod: 'pod-1',
    relay: {
      pause: () => pauseRelay(down, up),
      describe: (): Omit<RelayMeta, 'pod'> => ({
        direction: 'outbound', src: { addr: '127.0.0.1:1' }, dst: { addr: '127.0.0.1:2' }, startedAt: 1, bytesSent: down.bytesRead, bytesRecv: down.bytesWritten,
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

/** A scratch folder for an inbox, removed at the end. */
function scratchDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'relay-inbox-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** One relay to an echo server with a counter stream flowing through it (for 100 ms already), and a scratch folder. */
async function streamingRelay(t: ExecutionContext) {
  const dir = scratchDir(t);
  const relay = await relayTo(await echoServer(t));
  t.teardown(relay.close);
  const client = counterClient(relay.listenPort);
  const { down, up } = await relay.pair;
  await delay(100);
  return { dir, client, down, up };
}

test.serial('a relay moves to the inbox while a counter stream and its echo flow: byte-exact, the old sockets closed, the new ones carry on', async (t) => {
  const { dir, client, down, up } = await streamingRelay(t);
  const inbox = RelayInbox.open(relayInboxPath(dir, process.pid));
  const adopted: { meta: RelayMeta; down: net.Socket; up: net.Socket }[] = [];
  const serving = inbox.serve(process.pid, {
    canAdopt: (m) => m.pod === 'pod-1',
    adopt: (meta, d, u) => {
      const nd = new net.Socket({ fd: d, readable: true, writable: true, allowHalfOpen: true });
      const nu = new net.Socket({ fd: u, readable: true, writable: true, allowHalfOpen: true });
      nd.pipe(nu);
      nu.pipe(nd);
      adopted.push({ meta, down: nd, up: nu });
    },
  }, RELAY_LIMITS, log);
  const moved = { count: 0 };
  const t0 = process.hrtime.bigint();
  const tally = await sendRelays(relayInboxPath(dir, process.pid), process.pid, [movable(down, up, moved)], RELAY_LIMITS, log);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const inboxTally = await serving;
  t.log(`moved in ${ms.toFixed(1)} ms: ${JSON.stringify(tally)} / ${JSON.stringify(inboxTally)}`);
  t.deepEqual(tally, { moved: 1, kept: 0, reasons: {} });
  t.deepEqual(inboxTally, { received: 1, adopted: 1, refused: 0 });
  t.true(down.destroyed && up.destroyed, 'the predecessor side closed its sockets');
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
  const { dir, client, down, up } = await streamingRelay(t);
  const limits: RelayLimits = { ...RELAY_LIMITS, ackMs: 200 };
  const inbox = RelayInbox.open(relayInboxPath(dir, process.pid));
  let adopts = 0;
  const serving = inbox.serve(process.pid, { canAdopt: () => true, adopt: () => void adopts++ }, limits, log, 600);
  const moved = { count: 0 };
  const tally = await sendRelays(relayInboxPath(dir, process.pid), process.pid, [movable(down, up, moved)], limits, log);
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

test.serial('no inbox at the path, or one owned by another pid: every relay stays', async (t) => {
  const dir = scratchDir(t);
  const fake = { pod: 'p', relay: { pause: () => undefined, describe: () => { throw new Error('unused'); }, handedOver: () => undefined } };
  const none = await sendRelays(join(dir, 'absent.sock'), process.pid, [fake], { ...RELAY_LIMITS, ackMs: 100 }, log);
  t.deepEqual(none, { moved: 0, kept: 1, reasons: { 'no relay inbox': 1 } });
  const inbox = RelayInbox.open(relayInboxPath(dir, process.pid));
  const serving = inbox.serve(process.pid, { canAdopt: () => true, adopt: () => undefined }, { ...RELAY_LIMITS, idleMs: 300 }, log);
  const wrongPid = await sendRelays(relayInboxPath(dir, process.pid), process.pid + 1, [fake], RELAY_LIMITS, log);
  t.deepEqual(wrongPid, { moved: 0, kept: 1, reasons: { 'relay inbox refused': 1 } });
  t.deepEqual(await serving, { received: 0, adopted: 0, refused: 0 });
});

test.serial('256 relays move in 16 batches while each carries a counter stream: all byte-exact (time logged)', async (t) => {
  const dir = scratchDir(t);
  const echo = await echoServer(t);
  const n = 256;
  const relays = await Promise.all(Array.from({ length: n }, () => relayTo(echo)));
  t.teardown(() => relays.forEach((r) => r.close()));
  const clients = relays.map((r) => counterClient(r.listenPort, 20));
  const pairs = await Promise.all(relays.map((r) => r.pair));
  await delay(200);
  const inbox = RelayInbox.open(relayInboxPath(dir, process.pid));
  const adopted: net.Socket[] = [];
  const serving = inbox.serve(process.pid, {
    canAdopt: () => true,
    adopt: (_meta, d, u) => {
      const nd = new net.Socket({ fd: d, readable: true, writable: true, allowHalfOpen: true });
      const nu = new net.Socket({ fd: u, readable: true, writable: true, allowHalfOpen: true });
      nd.pipe(nu);
      nu.pipe(nd);
      adopted.push(nd, nu);
    },
  }, RELAY_LIMITS, log);
  const moved = { count: 0 };
  const t0 = process.hrtime.bigint();
  const tally = await sendRelays(relayInboxPath(dir, process.pid), process.pid, pairs.map((p) => movable(p.down, p.up, moved)), RELAY_LIMITS, log);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  t.log(`${n} relays moved in ${ms.toFixed(1)} ms (${(ms / n).toFixed(3)} ms each): ${JSON.stringify(tally)} / ${JSON.stringify(await serving)}`);
  t.is(tally.moved, n);
  await delay(200);
  const results = await Promise.all(clients.map((c) => c.stop()));
  t.true(results.every((r) => r.exact && r.sent > 0), 'every stream byte-exact');
  for (const s of adopted) s.destroy();
});
