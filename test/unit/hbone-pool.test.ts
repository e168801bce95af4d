// The HBONE pool core (agent/src/hbone/pool.ts) against a fake transport: one dial per key, the stream limit, retiring
// on certificate rotation and GOAWAY, idle release, closeFrom, the AMB_ERR_HBONE_CONNECT wrap and the counters.
import test from 'ava';
import { pino } from 'pino';
import { DEFAULT_POOL_OPTIONS, type HboneTarget, HbonePool, type PoolOptions, type PoolTransport } from '../../agent/src/hbone/pool.js';
import type { Netns } from '../../agent/src/platform/netns.js';

const ns = {} as Netns;
const target = (srcIp = '10.0.0.1', dstIp = '10.0.1.1'): HboneTarget => ({ ns, srcIp, srcIdentity: 'spiffe://td/ns/a/sa/c', dstIp, dstIdentity: 'spiffe://td/ns/a/sa/s' });

/** A transport whose dials the test completes or fails by hand; records closes. */
class FakeTransport implements PoolTransport<number> {
  serial = 's1';
  notAfter = Date.now() + 3_600_000;
  next = 1;
  readonly dials: Array<{ id: number; target: HboneTarget; up: (peerNotAfter?: number) => void; fail: (err: Error) => void }> = [];
  readonly closes: Array<{ id: number; graceful: boolean }> = [];
  private waiters: Array<() => void> = [];

  async currentSerial(): Promise<string> {
    return this.serial;
  }

  dial(t: HboneTarget, opened: (handle: number, serial: string, notAfter: number) => void): Promise<number> {
    const id = this.next++;
    opened(id, this.serial, this.notAfter);
    return new Promise((resolve, reject) => {
      this.dials.push({ id, target: t, up: (peerNotAfter = 0) => resolve(peerNotAfter), fail: reject });
      for (const w of this.waiters.splice(0)) w();
    });
  }

  close(id: number, graceful: boolean): void {
    this.closes.push({ id, graceful });
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves once `n` dials were started. */
  async dialed(n: number): Promise<void> {
    while (this.dials.length < n) await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  /** Resolves once `n` closes were asked for. */
  async closed(n: number): Promise<void> {
    while (this.closes.length < n) await new Promise<void>((resolve) => this.waiters.push(resolve));
  }
}

function pool(opts: Partial<PoolOptions> = {}): { p: HbonePool<number>; tr: FakeTransport } {
  const tr = new FakeTransport();
  return { p: new HbonePool(tr, { ...DEFAULT_POOL_OPTIONS, ...opts }, pino({ level: 'silent' })), tr };
}

test('concurrent acquires for one key share one dial; another key dials its own', async (t) => {
  const { p, tr } = pool();
  const a = [p.acquire(target()), p.acquire(target()), p.acquire(target())];
  const other = p.acquire(target('10.0.0.2'));
  await tr.dialed(2);
  t.is(tr.dials.length, 2);
  for (const d of tr.dials) d.up();
  const conns = await Promise.all(a);
  t.true(conns.every((c) => c === conns[0]));
  t.not(await other, conns[0]);
  t.like(p.stats, { connectionsOpened: 2, connectionsOpen: 2, connectFailures: 0 });
});

test('a connection takes streams up to the lower of our limit and the peer\'s, then a second one is dialled', async (t) => {
  const { p, tr } = pool({ maxStreamsPerConnection: 3 });
  const first = p.acquire(target());
  await tr.dialed(1);
  p.peerSettings(tr.dials[0]?.id ?? 0, 2); // the peer's SETTINGS may come before the dial resolves
  tr.dials[0]?.up();
  const c = await first;
  t.is(c.limit, 2);
  p.streamOpened(c);
  t.is(await p.acquire(target()), c);
  p.streamOpened(c);
  const next = p.acquire(target());
  await tr.dialed(2);
  tr.dials[1]?.up();
  t.not(await next, c);
  t.is(p.stats.streamsOpened, 2);
});

test('a slot freed on a full connection is used again', async (t) => {
  const { p, tr } = pool({ maxStreamsPerConnection: 1 });
  const first = p.acquire(target());
  await tr.dialed(1);
  tr.dials[0]?.up();
  const c1 = await first;
  p.streamOpened(c1);
  const second = p.acquire(target());
  await tr.dialed(2);
  tr.dials[1]?.up();
  const c2 = await second;
  t.not(c2, c1);
  p.streamClosed(c1);
  t.is(await p.acquire(target()), c1, 'a slot freed on the first is used again');
  t.is(p.stats.streamsOpened, 1);
});

test('after a certificate rotation the old connection is retired (closed gracefully) and a new one dialled', async (t) => {
  const { p, tr } = pool();
  const first = p.acquire(target());
  await tr.dialed(1);
  tr.dials[0]?.up();
  const old = await first;
  tr.serial = 's2';
  const next = p.acquire(target());
  await tr.dialed(2);
  t.deepEqual(tr.closes, [{ id: old.handle, graceful: true }]);
  tr.dials[1]?.up();
  const c = await next;
  t.is(c.serial, 's2');
  t.false(old.open);
});

test('an expired peer certificate retires the connection too', async (t) => {
  const { p, tr } = pool();
  const first = p.acquire(target());
  await tr.dialed(1);
  tr.dials[0]?.up(Date.now() - 1);
  const old = await first;
  const next = p.acquire(target());
  await tr.dialed(2);
  t.deepEqual(tr.closes, [{ id: old.handle, graceful: true }]);
  tr.dials[1]?.up();
  t.not(await next, old);
});

test('GOAWAY takes a connection out of rotation; it closes once its last stream ends', async (t) => {
  const { p, tr } = pool();
  const first = p.acquire(target());
  await tr.dialed(1);
  tr.dials[0]?.up();
  const c = await first;
  p.streamOpened(c);
  p.peerGoaway(c.handle);
  t.deepEqual(tr.closes, [], 'its open stream finishes');
  p.streamClosed(c);
  t.deepEqual(tr.closes, [{ id: c.handle, graceful: true }]);
});

test('an idle connection is closed after idleTimeoutMs, and a new stream cancels that', async (t) => {
  const { p, tr } = pool({ idleTimeoutMs: 0 });
  const first = p.acquire(target());
  await tr.dialed(1);
  tr.dials[0]?.up();
  const c = await first;
  p.streamOpened(c);
  p.streamClosed(c);
  p.streamOpened(c); // before the timer fires: stays
  p.streamClosed(c);
  await tr.closed(1);
  t.deepEqual(tr.closes, [{ id: c.handle, graceful: true }]);
  t.false(c.open);
});

test('a failed dial is AMB_ERR_HBONE_CONNECT naming the peer, shared by its waiters, each counted', async (t) => {
  const { p, tr } = pool();
  const a = p.acquire(target());
  const b = p.acquire(target());
  await tr.dialed(1);
  tr.dials[0]?.fail(new Error('connect ECONNREFUSED'));
  for (const r of [a, b]) {
    const err = await t.throwsAsync(r);
    t.is((err as Error & { code?: string }).code, 'AMB_ERR_HBONE_CONNECT');
    t.regex(err?.message ?? '', /HBONE connection to 10\.0\.1\.1:15008 \(spiffe:\/\/td\/ns\/a\/sa\/s\) failed: connect ECONNREFUSED/);
  }
  t.like(p.stats, { connectFailures: 2, connectionsOpened: 0, connectionsOpen: 0 });
});

test('a connection closed as it came up is not handed out, and the open count stays right', async (t) => {
  const { p, tr } = pool();
  const a = p.acquire(target());
  await tr.dialed(1);
  const d = tr.dials[0];
  if (!d) throw new Error('no dial');
  d.up();
  t.true(p.closed(d.id)); // in the same batch of events, before the dial's continuation runs
  await t.throwsAsync(a, { message: /closed as it came up/ });
  t.like(p.stats, { connectionsOpen: 0, connectFailures: 1 });
  t.false(p.closed(d.id), 'reported once');
});

test('closeFrom closes the connections of one source pod only; the transport closing one updates the counters', async (t) => {
  const { p, tr } = pool();
  const a = p.acquire(target('10.0.0.1'));
  const b = p.acquire(target('10.0.0.2'));
  await tr.dialed(2);
  for (const d of tr.dials) d.up();
  const [ca, cb] = await Promise.all([a, b]);
  p.closeFrom('10.0.0.1');
  t.deepEqual(tr.closes, [{ id: ca.handle, graceful: true }]);
  t.true(p.closed(ca.handle));
  t.is(p.stats.connectionsOpen, 1);
  t.is(await p.acquire(target('10.0.0.2')), cb);
});
