// Interop: an HBONE client nobody here wrote (Python h2 on Debian's python3-h2) against a pod's 15008 on the testbed:
// mutual TLS with certificates from our CA, the server's identity, trust-domain and root checks, and CONNECT's 200/400/503.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { BuiltinCa } from '../../agent/src/identity/builtin-ca.js';
import { x509 } from '../../agent/src/identity/x509-util.js';
import { issueCredential } from '../interop/certs.js';
import { runHboneClient, type HboneClientOptions, type HboneClientResult } from '../interop/hbone-client.js';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { AMBIENT, agentPod, eventually, startEcho } from './helpers.js';

const TD = 'cluster.local';
const CLIENT_ID = `spiffe://${TD}/ns/legacy/sa/interop`;
const FOREIGN_TD_ID = 'spiffe://other.domain/ns/legacy/sa/interop';
const SERVER_ID = `spiffe://${TD}/ns/app/sa/default`;

const show = (r: HboneClientResult): string => JSON.stringify(r);

netnsTest.serial('Python h2 HBONE client: mTLS from our CA reaches the app via 15008; wrong or missing certs and bad targets are refused', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('legacy', {});
  const [productpage, reviews, client] = await tb.addPods([
    { node: 1, namespace: 'app', name: 'productpage' },
    { node: 0, namespace: 'app', name: 'reviews' },
    { node: 0, namespace: 'legacy', name: 'client' },
  ]);
  if (!productpage || !reviews || !client) throw new Error('pods missing');
  await startEcho(productpage, 9080);
  await startEcho(reviews, 9080);

  const dir = join(tb.runDir, 'interop');
  const caPath = join(tb.caDir, 'root-cert.pem');
  const sharedRoot = await BuiltinCa.open(tb.caDir, { trustDomain: TD });
  const good = await issueCredential(sharedRoot, CLIENT_ID, dir, 'good');
  const otherDomainCa = await BuiltinCa.open(tb.caDir, { trustDomain: 'other.domain' });
  const otherDomain = await issueCredential(otherDomainCa, FOREIGN_TD_ID, dir, 'other-domain');
  const foreignRoot = await issueCredential(await BuiltinCa.ephemeral({ trustDomain: TD }), CLIENT_ID, dir, 'foreign-root');
  const root = new x509.X509Certificate(sharedRoot.rootPem);
  t.true(await new x509.X509Certificate(otherDomain.certPem).verify({ publicKey: root.publicKey, signatureOnly: true }), 'the other-domain leaf chains to the shared root');
  t.false(await new x509.X509Certificate(foreignRoot.certPem).verify({ publicKey: root.publicKey, signatureOnly: true }), 'the foreign leaf does not');

  const target = `${productpage.ip}:15008`;
  const hbone = (o: Partial<HboneClientOptions> & Pick<HboneClientOptions, 'authority'>): Promise<HboneClientResult> =>
    runHboneClient(client, { connect: target, caPath, credential: good, ...o });
  const dstStats = async (): Promise<{ hbone: number; refused: number }> => {
    const s = (await agentPod(tb, productpage))?.stats?.inbound;
    return { hbone: s?.hbone ?? 0, refused: s?.refused ?? 0 };
  };
  const dstLogs = () => tb.agent(1).logs({ currentRun: true });

  // 1 + 6. A certificate from the shared root: 200, the app's reply through the tunnel, the server's identity checked.
  const msg = `interop-${randomBytes(4).toString('hex')}`;
  const ok = await hbone({ authority: `${productpage.ip}:9080`, serverIdentity: SERVER_ID, send: `${msg}\n`, expect: `pong:${msg}` });
  t.log('good cert:', show(ok));
  t.is(ok.error, null, show(ok));
  t.is(ok.status, 200, show(ok));
  t.true(ok.received.includes(`pong:${msg}`), `echo reply came back through the tunnel: ${show(ok)}`);
  t.deepEqual(ok.peer_uri_sans, [SERVER_ID], 'the server presents the destination pod\'s SPIFFE identity');
  t.is(ok.tls_version, 'TLSv1.3');
  t.is(ok.alpn, 'h2');
  t.regex(ok.cipher ?? '', /^TLS_AES_(128|256)_GCM_SHA(256|384)$/);
  t.true((await dstStats()).hbone >= 1, 'the destination agent counted an inbound HBONE connection');
  const seen = await eventually(dstLogs, (ls) => ls.some((l) => l.peerIdentity === CLIENT_ID));
  t.true(seen.some((l) => l.peerIdentity === CLIENT_ID), 'the destination agent knows the peer identity');

  const wrongServer = await hbone({ authority: `${productpage.ip}:9080`, serverIdentity: `spiffe://${TD}/ns/app/sa/someone-else` });
  t.is(wrongServer.status, null, 'a client expecting another identity stops before CONNECT');
  t.regex(wrongServer.error ?? '', /server presented/, show(wrongServer));

  // 2. No client certificate: the TLS handshake is refused.
  const before2 = await dstStats();
  const noCert = await hbone({ authority: `${productpage.ip}:9080`, credential: undefined });
  t.log('no cert:', show(noCert));
  t.is(noCert.status, null, show(noCert));
  t.regex(noCert.error ?? '', /CERTIFICATE_REQUIRED|reset by peer/, `TLS alert certificate_required: ${show(noCert)}`);
  t.true((await eventually(dstStats, (st) => st.refused > before2.refused)).refused > before2.refused, 'the refusal is counted (the data plane reports it after the handshake the client saw fail)');

  // 3. Same root, other trust domain: the connection is closed before any stream is served.
  const before3 = await dstStats();
  const foreignTd = await hbone({ authority: `${productpage.ip}:9080`, credential: otherDomain, send: 'x\n', expect: 'pong:x' });
  t.log('other trust domain:', show(foreignTd));
  t.is(foreignTd.status, null, show(foreignTd));
  t.is(foreignTd.received, '');
  t.true(foreignTd.error !== null || foreignTd.goaway_last_stream === 0, `closed with no stream processed: ${show(foreignTd)}`);
  t.true((await eventually(dstStats, (st) => st.refused > before3.refused)).refused > before3.refused, 'the refusal is counted (the data plane reports it after the handshake the client saw fail)');
  t.true((await dstLogs()).some((l) => l.msg === 'hbone client refused' && String(l.reason).includes('other.domain')), 'the agent logs why');

  // 4. Another root: refused at the handshake.
  const before4 = await dstStats();
  const otherRoot = await hbone({ authority: `${productpage.ip}:9080`, credential: foreignRoot });
  t.log('other root:', show(otherRoot));
  t.is(otherRoot.status, null, show(otherRoot));
  t.regex(otherRoot.error ?? '', /EOF|reset by peer|UNKNOWN_CA|BAD_CERTIFICATE/, show(otherRoot));
  t.true((await eventually(dstStats, (st) => st.refused > before4.refused)).refused > before4.refused, 'the refusal is counted (the data plane reports it after the handshake the client saw fail)');

  // 5. Not an open proxy: other addresses get 400, agent ports and closed ports 503; all on one connection, next to a 200.
  const cases: Array<[string, number]> = [
    [`${client.ip}:9080`, 400],
    [`${reviews.ip}:9080`, 400],
    ['127.0.0.1:9080', 400],
    ['productpage:9080', 400],
    [`${productpage.ip}:15006`, 503],
    [`${productpage.ip}:15001`, 503],
    [`${productpage.ip}:15008`, 503],
    [`${productpage.ip}:9999`, 503],
    [`${productpage.ip}:9080`, 200],
  ];
  const multi = await hbone({ authority: cases.map(([a]) => a), send: 'multi\n', expect: 'pong:multi' });
  t.log('targets:', show(multi));
  t.is(multi.error, null, show(multi));
  t.deepEqual(multi.streams.map((s) => [s.authority, s.status]), cases, show(multi));
  t.true(multi.streams.at(-1)?.received.includes('pong:multi'), 'the good stream works beside the refused ones');

  // HBONE is TLS 1.3 and h2 only: a TLS 1.2 client and an http/1.1-only client are refused with TLS alerts.
  const tls12 = await hbone({ authority: `${productpage.ip}:9080`, tlsVersion: '1.2' });
  t.regex(tls12.error ?? '', /PROTOCOL_VERSION/, show(tls12));
  const h11 = await hbone({ authority: `${productpage.ip}:9080`, alpn: 'http/1.1' });
  t.regex(h11.error ?? '', /no application protocol/, show(h11));
});
