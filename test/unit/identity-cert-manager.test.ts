// Unit tests for the certificate manager with a fake CA and a manual clock: issuance, renewal at the scheduled time,
// serving a valid certificate through a CA outage, backoff, expiry, recovery, the concurrency cap, retain and stop.
import test from 'ava';
import { X509Certificate } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import * as tls from 'node:tls';
import { CertManager, type CertManagerOptions } from '../../agent/src/identity/cert-manager.js';
import type { CertificateAuthority, SignRequest } from '../../agent/src/identity/ca.js';
import { BuiltinCa } from '../../agent/src/identity/builtin-ca.js';
import {
  CaBadResponseError, CaUnavailableError, IdentityDroppedError, InvalidSpiffeIdError, NoValidCertError,
} from '../../agent/src/identity/errors.js';
import { FakeCa } from '../../agent/src/identity/fake-ca.js';
import { createCsr, generateP256, x509 } from '../../agent/src/identity/x509-util.js';
import { FakeClock, until } from '../fixtures/fake-clock.js';

const TD = 'cluster.local';
const A = 'spiffe://cluster.local/ns/shop/sa/cart';
const B = 'spiffe://cluster.local/ns/shop/sa/pay';
const S = 1000;

async function setup(t: { teardown(fn: () => Promise<void>): void }, opts: Partial<CertManagerOptions> = {}) {
  const clock = new FakeClock();
  const ca = await FakeCa.create(TD, { now: () => clock.now() });
  const renewed: string[] = [];
  const mgr = new CertManager({ ca, trustDomain: TD, clock, random: () => 0.5, lifetimeSeconds: 100, ...opts });
  mgr.onRenewed((id) => renewed.push(id));
  t.teardown(() => mgr.stop());
  return { clock, ca, mgr, renewed };
}

test('first material() issues a P-256 key and a certificate from a CSR carrying only the URI SAN', async (t) => {
  const { ca, mgr, clock } = await setup(t);
  const m = await mgr.material(A);
  t.is(m.identity, A);
  t.regex(m.keyPem, /^-----BEGIN PRIVATE KEY-----/);
  const leaf = new X509Certificate(m.chainPem);
  t.true(leaf.verify(new X509Certificate(m.rootsPem).publicKey));
  t.is(leaf.subjectAltName, `URI:${A}`);
  t.is(m.notAfter.getTime(), clock.now() + 100 * S);
  t.is(m.serial, new x509.X509Certificate(m.chainPem).serialNumber);
  const csr = new x509.Pkcs10CertificateRequest(ca.requests[0]?.csrPem ?? '');
  t.is(csr.subject, '');
  t.is(csr.extensions.length, 1);
  t.is((csr.publicKey.algorithm as EcKeyAlgorithm).namedCurve, 'P-256');
  t.is(ca.requests[0]?.ttlSeconds, 100);
  t.is(await mgr.material(A), m, 'served from cache');
  t.is(ca.requests.length, 1);
  t.like(mgr.snapshot()[0], { identity: A, state: 'valid', serial: m.serial, failures: 0 });
});

test('renews at the scheduled half-life and fires onRenewed; new material for new handshakes', async (t) => {
  const { clock, ca, mgr, renewed } = await setup(t);
  const first = await mgr.material(A);
  const t0 = clock.now();
  t.is(mgr.snapshot()[0]?.nextRenewal?.getTime(), t0 + 50 * S);
  clock.advance(50 * S - 1);
  t.is(ca.requests.length, 1, 'not yet due');
  clock.advance(1);
  await until(() => renewed.length === 1, 'renewal');
  t.deepEqual(renewed, [A]);
  t.is(ca.requests.length, 2);
  const second = await mgr.material(A);
  t.not(second.serial, first.serial);
  t.not(second.keyPem, first.keyPem, 'a new key per renewal');
  t.is(second.notAfter.getTime(), clock.now() + 100 * S);
  t.is(mgr.counters.renewals, 1);
  t.is(mgr.snapshot()[0]?.nextRenewal?.getTime(), clock.now() + 50 * S);
});

test('an unsubscribed renewal listener is not called again (stopped HBONE servers must not leak)', async (t) => {
  const { clock, mgr, renewed } = await setup(t);
  const late: string[] = [];
  const unsubscribe = mgr.onRenewed((id) => late.push(id));
  await mgr.material(A);
  clock.advance(50 * S);
  await until(() => renewed.length === 1, 'first renewal');
  t.deepEqual(late, [A]);
  unsubscribe();
  clock.advance(50 * S);
  await until(() => renewed.length === 2, 'second renewal');
  t.deepEqual(late, [A], 'not called after unsubscribe');
});

test('keeps serving a valid certificate while the CA fails, backing off 1, 2, 4 s ...', async (t) => {
  const { clock, ca, mgr } = await setup(t);
  const first = await mgr.material(A);
  ca.down();
  clock.advance(50 * S);
  await until(() => mgr.counters.caFailures === 1, 'first failure');
  t.like(mgr.snapshot()[0], { state: 'renewing', failures: 1, lastError: 'fake CA is down' });
  t.is(await mgr.material(A), first, 'still-valid certificate kept');
  const delays: number[] = [];
  for (let i = 1; i <= 4; i++) {
    const next = mgr.snapshot()[0]?.nextRenewal?.getTime() ?? 0;
    delays.push(next - clock.now());
    clock.advance(next - clock.now());
    await until(() => mgr.counters.caFailures === i + 1, `failure ${i + 1}`);
  }
  t.deepEqual(delays, [1 * S, 2 * S, 4 * S, 8 * S]);
  t.is(await mgr.material(A), first);
  t.is(mgr.counters.caRequests, 6);
});

test('after expiry material() rejects with AMB_ERR_NO_VALID_CERT naming the identity and the CA error; recovers when the CA returns', async (t) => {
  const { clock, ca, mgr } = await setup(t);
  const first = await mgr.material(A);
  ca.down('connection refused by fake istiod');
  // Fail through the whole second half of the lifetime; the last retry is pulled in to the expiry time.
  let failures = 0;
  while (clock.now() < first.notAfter.getTime()) {
    const next = mgr.snapshot()[0]?.nextRenewal?.getTime() ?? 0;
    t.true(next <= first.notAfter.getTime(), 'never retries later than expiry while valid');
    clock.advance(next - clock.now());
    failures++;
    await until(() => mgr.counters.caFailures === failures, `failure ${failures}`);
  }
  t.is(clock.now(), first.notAfter.getTime());
  t.like(mgr.snapshot()[0], { state: 'expired' });
  const err = await t.throwsAsync(mgr.material(A), { instanceOf: NoValidCertError });
  t.is(err?.code, 'AMB_ERR_NO_VALID_CERT');
  t.regex(err?.message ?? '', new RegExp(`${A}.*connection refused by fake istiod`));
  t.true(err?.cause instanceof CaUnavailableError);
  const requestsBefore = ca.requests.length;
  ca.up();
  const next = mgr.snapshot()[0]?.nextRenewal?.getTime() ?? 0;
  t.true(next > clock.now() && next - clock.now() <= 150 * S, 'retry stays scheduled with backoff');
  t.is(ca.requests.length, requestsBefore, 'rejecting does not hammer the CA');
  clock.advance(next - clock.now());
  await until(() => mgr.snapshot()[0]?.state === 'valid', 'recovery');
  const fresh = await mgr.material(A);
  t.not(fresh.serial, first.serial);
  t.is(mgr.snapshot()[0]?.failures, 0);
});

test('material() waits for a renewal already running when the certificate has expired', async (t) => {
  const { clock, ca, mgr } = await setup(t);
  const first = await mgr.material(A);
  ca.hold();
  clock.advance(50 * S);
  await until(() => ca.waiting === 1, 'renewal at the gate');
  clock.advance(60 * S);
  t.like(mgr.snapshot()[0], { state: 'expired' });
  const p = mgr.material(A);
  ca.release();
  const m = await p;
  t.not(m.serial, first.serial);
});

test('a first issuance that fails rejects the waiting callers, and later ones fail fast until the retry', async (t) => {
  const { ca, mgr } = await setup(t);
  ca.down();
  const [r1, r2] = await Promise.allSettled([mgr.material(A), mgr.material(A)]);
  t.true(r1.status === 'rejected' && r1.reason instanceof NoValidCertError);
  t.true(r2.status === 'rejected' && r2.reason instanceof NoValidCertError);
  t.is(ca.requests.length, 1, 'one request for both callers');
  await t.throwsAsync(mgr.material(A), { instanceOf: NoValidCertError });
  t.is(ca.requests.length, 1);
  t.like(mgr.snapshot()[0], { identity: A, state: 'pending', failures: 1 });
});

test('at most 8 CA requests at once: 20 identities all get certificates', async (t) => {
  const { ca, mgr } = await setup(t);
  ca.hold();
  const ids = Array.from({ length: 20 }, (_, i) => `spiffe://cluster.local/ns/n${i}/sa/s`);
  const all = Promise.all(ids.map((id) => mgr.material(id)));
  await until(() => ca.waiting === 8, '8 requests at the gate');
  await new Promise((r) => setTimeout(r, 50));
  t.is(ca.waiting, 8, 'no ninth request while 8 are in flight');
  t.is(mgr.snapshot().filter((s) => s.state === 'pending').length, 20);
  ca.release();
  const ms = await all;
  t.deepEqual(ms.map((m) => m.identity), ids);
  t.is(ca.maxInflight, 8);
  t.is(ca.requests.length, 20);
});

test('retain drops identities that left (timers cancelled, waiters rejected) and prefetches new ones', async (t) => {
  const { clock, ca, mgr } = await setup(t);
  await mgr.material(A);
  await mgr.material(B);
  t.is(clock.pending, 2);
  mgr.retain(new Set([A]));
  t.deepEqual(mgr.snapshot().map((s) => s.identity), [A]);
  t.is(clock.pending, 1, "B's renewal timer is cancelled");
  clock.advance(60 * S);
  await until(() => ca.requests.length === 3, "A's renewal");
  t.false(ca.requests.some((r, i) => i >= 2 && r.identity === B));

  const C = 'spiffe://cluster.local/ns/shop/sa/ship';
  ca.hold();
  mgr.retain(new Set([A, C, 'spiffe://other.org/ns/x/sa/y', 'garbage']));
  await until(() => ca.waiting === 1, 'prefetch of C');
  t.deepEqual(mgr.snapshot().map((s) => s.identity), [A, C]);
  const waiting = mgr.material(C);
  mgr.retain(new Set([A]));
  await t.throwsAsync(waiting, { instanceOf: IdentityDroppedError, message: /dropped/ });
  ca.release();
  await until(() => ca.inflight === 0, 'dropped request to settle');
  t.deepEqual(mgr.snapshot().map((s) => s.identity), [A], 'a late answer for a dropped identity is discarded');
});

test('identities outside the trust domain or malformed are refused', async (t) => {
  const { mgr, ca } = await setup(t);
  await t.throwsAsync(mgr.material('spiffe://other.org/ns/a/sa/b'), { instanceOf: InvalidSpiffeIdError, message: /trust domain other.org/ });
  await t.throwsAsync(mgr.material('spiffe://cluster.local/ns/a'), { instanceOf: InvalidSpiffeIdError });
  t.is(ca.requests.length, 0);
});

test('a CA answer for another key or another identity is a failure, not a certificate', async (t) => {
  const clock = new FakeClock();
  const inner = await BuiltinCa.ephemeral({ trustDomain: TD, now: () => clock.now() });
  let mode: 'key' | 'identity' = 'key';
  const swapping: CertificateAuthority = {
    async sign(req: SignRequest) {
      const id = mode === 'identity' ? B : req.identity;
      const { keys } = await generateP256();
      return inner.sign({ ...req, identity: id, csrPem: await createCsr(id, keys) });
    },
  };
  const mgr = new CertManager({ ca: swapping, trustDomain: TD, clock, random: () => 0.5 });
  t.teardown(() => mgr.stop());
  const e1 = await t.throwsAsync(mgr.material(A), { instanceOf: NoValidCertError });
  t.true(e1?.cause instanceof CaBadResponseError);
  t.regex(e1?.cause instanceof Error ? e1.cause.message : '', /different public key/);
  mode = 'identity';
  clock.advance((mgr.snapshot()[0]?.nextRenewal?.getTime() ?? 0) - clock.now());
  await until(() => mgr.counters.caFailures === 2, 'second failure');
  t.regex(mgr.snapshot()[0]?.lastError ?? '', /issued a certificate for .*pay when .*cart was requested/);
});

test('stop rejects waiters, cancels timers and refuses new calls', async (t) => {
  const { clock, ca, mgr } = await setup(t);
  await mgr.material(A);
  ca.hold();
  const waiting = mgr.material(B);
  await until(() => ca.waiting === 1, 'B at the gate');
  const stopped = mgr.stop();
  await t.throwsAsync(waiting, { instanceOf: IdentityDroppedError, message: /stopped/ });
  ca.release();
  await stopped;
  t.is(clock.pending, 0);
  t.deepEqual(mgr.snapshot(), []);
  await t.throwsAsync(mgr.material(A), { instanceOf: IdentityDroppedError });
});

test('long lifetimes are scheduled in steps below the setTimeout limit', async (t) => {
  const { clock, ca, mgr } = await setup(t, { lifetimeSeconds: 90 * 86_400 });
  await mgr.material(A);
  const due = mgr.snapshot()[0]?.nextRenewal?.getTime() ?? 0;
  t.is(due - clock.now(), 45 * 86_400 * S);
  clock.advance(2 ** 31 - 1);
  t.is(ca.requests.length, 1, 'woke up early and went back to sleep');
  t.is(clock.pending, 1);
  clock.advance(due - clock.now());
  await until(() => ca.requests.length === 2, 'renewal after 45 days');
  t.pass();
});

test('the material works for mutual TLS 1.3 between two identities with node:tls', async (t) => {
  const { mgr } = await setup(t, { lifetimeSeconds: 3600, clock: undefined });
  const [srv, cli] = await Promise.all([mgr.material(A), mgr.material(B)]);
  const server = tls.createServer({
    key: srv.keyPem, cert: srv.chainPem, ca: srv.rootsPem, requestCert: true, rejectUnauthorized: true,
    minVersion: 'TLSv1.3', ALPNProtocols: ['h2'],
  }, (s) => {
    s.end(s.getPeerCertificate().subjectaltname ?? '');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const { port } = server.address() as AddressInfo;
  const seen = await new Promise<{ peer: string; fromServer: string }>((resolve, reject) => {
    const c = tls.connect({
      host: '127.0.0.1', port, key: cli.keyPem, cert: cli.chainPem, ca: cli.rootsPem, ALPNProtocols: ['h2'],
      minVersion: 'TLSv1.3', checkServerIdentity: () => undefined,
    }, () => {
      let data = '';
      c.on('data', (d: Buffer) => { data += d.toString(); });
      c.on('end', () => resolve({ peer: c.getPeerCertificate().subjectaltname ?? '', fromServer: data }));
    });
    c.on('error', reject);
  });
  t.is(seen.peer, `URI:${A}`);
  t.is(seen.fromServer, `URI:${B}`);
});
