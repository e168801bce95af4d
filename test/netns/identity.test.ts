// Workload certificates under time: rotation under load (20 s certificates, one connection streaming for 60 s while new
// connections present new serials) and a CA outage with Istio's CA API (traffic on valid certs, clear failure, recovery).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeIstioCa } from '../fixtures/fake-istio-ca.js';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import type { Testbed, TestbedPod } from '../testbed/index.js';
import { ask, bookinfo, eventually } from './helpers.js';

interface CertsView {
  identities: { identity: string; state: string; serial?: string }[];
  counters: { caRequests: number; caFailures: number; renewals: number };
  hbone: { connectFailures: number; connectionsOpened: number };
}
const certs = async (tb: Testbed, node: number): Promise<CertsView> => (await tb.agent(node).request('GET', '/v1/certs')).body as CertsView;

/** Streams random bytes from client to ip:port for `seconds`, in 64 KiB chunks every 50 ms; resolves with their sha256. */
function stream(client: TestbedPod, ip: string, port: number, seconds: number): Promise<string> {
  const script = `
    const net = require('net'), crypto = require('crypto');
    const h = crypto.createHash('sha256'), s = net.connect(${port}, '${ip}');
    s.on('error', (e) => { console.error(e.message); process.exit(1); });
    const end = Date.now() + ${seconds * 1000};
    const tick = () => {
      if (Date.now() >= end) return s.end(() => { console.log(h.digest('hex')); });
      const b = crypto.randomBytes(65536); h.update(b); s.write(b); setTimeout(tick, 50);
    };
    s.on('connect', tick);`;
  return client.exec(process.execPath, ['-e', script], { timeout: (seconds + 30) * 1000 }).then((r) => String(r.stdout).trim());
}

netnsTest.serial('rotation under load: a 60 s stream survives several 20 s certificates, new connections use new serials', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, agentArgs: ['--cert-ttl-seconds', '20'] });
  const { sleep, productpage } = await bookinfo(tb);
  const sink = productpage.spawn('sh', ['-c', 'ncat -l 9000 --recv-only | sha256sum'], { timeout: 120_000 });
  await productpage.waitForPort(9000);

  const sent = stream(sleep, productpage.ip, 9000, 60);
  const probes: boolean[] = [];
  for (let i = 0; i < 12; i++) {
    await new Promise((r) => setTimeout(r, 5000));
    probes.push((await ask(sleep, productpage.ip, 9080, `probe${i}`)).ok);
  }
  const sentHash = await sent;
  const gotHash = String((await sink).stdout).split(' ')[0];
  t.is(gotHash, sentHash, 'every byte of the 60 s stream arrived');
  t.true(probes.every(Boolean), `new connections during rotation all worked: ${probes.join(',')}`);

  const c = await certs(tb, 0);
  t.true(c.counters.renewals >= 3, `node 0's certificates were renewed several times (${c.counters.renewals}); sleep's own serials are checked below`);
  const serials = new Set((await tb.agent(1).logs({ currentRun: true }))
    .filter((l) => l.msg === 'hbone client accepted' && l.peerIdentity === 'spiffe://cluster.local/ns/app/sa/sleep')
    .map((l) => String(l.peerSerial)));
  t.true(serials.size >= 3, `the destination saw new client certificates on new connections: ${[...serials].join(' ')}`);
});

netnsTest.serial('CA outage (Istio CA API): traffic goes on while certificates are valid, fails clearly after, resumes when the CA returns', async (t) => {
  // The CA lives outside the cluster (as istiod would), on a Unix socket every node namespace can reach.
  const dir = await mkdtemp(join(tmpdir(), 'amb-istiod-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const socket = join(dir, 'ca.sock');
  const rootFile = join(dir, 'root.pem');
  const tokenFile = join(dir, 'istio-token');
  let ca = await FakeIstioCa.start({ trustDomain: 'cluster.local', bind: `unix:${socket}` });
  t.teardown(() => ca.stop());
  await writeFile(rootFile, ca.serving.rootPem);
  await writeFile(tokenFile, 'test-jwt');
  const tb = await withTestbed(t, {
    nodes: 2,
    agentArgs: ['--ca', 'istio', '--istio-ca-address', `unix:${socket}`, '--istio-ca-root-cert', rootFile,
      '--istio-ca-token-file', tokenFile, '--istio-ca-tls-server-name', 'localhost', '--cert-ttl-seconds', '20'],
  });

  const { sleep, productpage } = await bookinfo(tb);
  t.true((await ask(sleep, productpage.ip, 9080, 'before')).ok);
  t.true(ca.calls.some((c) => c.impersonatedIdentity === 'spiffe://cluster.local/ns/app/sa/sleep' && c.authorization === 'Bearer test-jwt'));

  await ca.stop();
  t.true((await ask(sleep, productpage.ip, 9080, 'outage-valid')).ok, 'traffic continues on the still-valid certificate');

  const expired = await eventually(() => certs(tb, 0), (c) => c.identities.some((i) => i.identity.endsWith('/sa/sleep') && i.state === 'expired'), 45_000);
  t.true(expired.identities.some((i) => i.identity.endsWith('/sa/sleep') && i.state === 'expired'), 'the certificate expired');
  const failed = await ask(sleep, productpage.ip, 9080, 'outage-expired');
  t.false(failed.ok, 'no valid certificate: new connections fail (never in plaintext)');
  const after = await certs(tb, 0);
  t.true(after.counters.caFailures > 0, 'CA failures are counted');
  t.true(after.hbone.connectFailures > 0, 'failed HBONE connections are counted');
  const logs = await tb.agent(0).logs({ currentRun: true });
  t.true(logs.some((l) => l.msg === 'upstream connect failed' && /certificate/i.test(String(l.error))), 'the log says why');

  await rm(socket, { force: true });
  ca = await FakeIstioCa.start({ trustDomain: 'cluster.local', bind: `unix:${socket}`, ca: ca.ca, serving: ca.serving });
  const back = await eventually(() => ask(sleep, productpage.ip, 9080, 'recovered'), (a) => a.ok, 120_000);
  t.true(back.ok, 'traffic resumes without restarting anything');
});

