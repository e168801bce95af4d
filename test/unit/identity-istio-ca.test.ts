// Tests for the Istio CA client against a local IstioCertificateService over real gRPC + TLS on loopback: headers,
// ImpersonatedIdentity, chain splitting with several roots, identity checks, and errors when the CA refuses or is down.
import test from 'ava';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { BuiltinCa } from '../../agent/src/identity/builtin-ca.js';
import { CertManager } from '../../agent/src/identity/cert-manager.js';
import {
  CaBadResponseError, CaConfigError, CaRejectedError, CaUnavailableError,
} from '../../agent/src/identity/errors.js';
import { IstioCa, splitIstioChain, type IstioCaOptions } from '../../agent/src/identity/istio-ca.js';
import { createCsr, generateP256 } from '../../agent/src/identity/x509-util.js';
import { FakeIstioCa, makeServingCert } from '../fixtures/fake-istio-ca.js';

const TD = 'cluster.local';
const ID = 'spiffe://cluster.local/ns/shop/sa/cart';

interface Env {
  server: FakeIstioCa;
  dir: string;
  client(over?: Partial<IstioCaOptions>): IstioCa;
  csr(identity?: string): Promise<string>;
}

async function setup(t: { teardown(fn: () => unknown): void }): Promise<Env> {
  const server = await FakeIstioCa.start({ trustDomain: TD });
  t.teardown(() => server.stop());
  const dir = mkdtempSync(join(tmpdir(), 'amb-istio-ca-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'root-cert.pem'), server.serving.rootPem);
  writeFileSync(join(dir, 'istio-token'), 'token-1\n');
  return {
    server, dir,
    client(over = {}) {
      const c = new IstioCa({
        address: server.address, rootCertFile: join(dir, 'root-cert.pem'), tokenFile: join(dir, 'istio-token'),
        clusterId: 'Kubernetes', timeoutMs: 5000, tlsServerName: 'localhost', ...over,
      });
      t.teardown(() => c.close());
      return c;
    },
    async csr(identity = ID) {
      return createCsr(identity, (await generateP256()).keys);
    },
  };
}

test('signs over TLS: bearer token, clusterid, ImpersonatedIdentity and validity_duration arrive; leaf chains to the root', async (t) => {
  const { server, client, csr } = await setup(t);
  const res = await client().sign({ csrPem: await csr(), identity: ID, ttlSeconds: 3600 });
  t.like(server.calls[0], { authorization: 'Bearer token-1', clusterId: 'Kubernetes', impersonatedIdentity: ID, validityDuration: 3600 });
  t.is(res.chainPem.length, 1);
  t.deepEqual(res.rootsPem, [server.ca.rootPem]);
  const leaf = new X509Certificate(res.chainPem[0] ?? '');
  t.is(leaf.subjectAltName, `URI:${ID}`);
  t.true(leaf.verify(new X509Certificate(server.ca.rootPem).publicKey));
});

test('the token file is read again on every call', async (t) => {
  const { server, client, csr, dir } = await setup(t);
  const ca = client();
  await ca.sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 });
  writeFileSync(join(dir, 'istio-token'), 'token-2');
  await ca.sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 });
  t.deepEqual(server.calls.map((c) => c.authorization), ['Bearer token-1', 'Bearer token-2']);
});

test('impersonation can be turned off', async (t) => {
  const { server, client, csr } = await setup(t);
  server.respond = async (call, ca) => {
    const r = await ca.sign({ csrPem: call.csr, identity: ID, ttlSeconds: 60 });
    return [...r.chainPem, ...r.rootsPem];
  };
  await client({ impersonate: false }).sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 });
  t.is(server.calls[0]?.impersonatedIdentity, undefined);
});

test('several roots concatenated in the last element, and intermediates, are split apart', async (t) => {
  const { server, client, csr } = await setup(t);
  const other = await BuiltinCa.ephemeral({ trustDomain: TD });
  server.respond = async (call, ca) => {
    const r = await ca.sign({ csrPem: call.csr, identity: call.impersonatedIdentity ?? '', ttlSeconds: 60 });
    return [...r.chainPem, `${other.rootPem}${ca.rootPem}`];
  };
  const res = await client().sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 });
  t.is(res.chainPem.length, 1);
  t.deepEqual(res.rootsPem, [other.rootPem, server.ca.rootPem]);
});

test('the certificate manager works through the Istio CA and serves every root', async (t) => {
  const { server, client } = await setup(t);
  const other = await BuiltinCa.ephemeral({ trustDomain: TD });
  server.respond = async (call, ca) => {
    const r = await ca.sign({ csrPem: call.csr, identity: call.impersonatedIdentity ?? '', ttlSeconds: call.validityDuration });
    return [...r.chainPem, `${ca.rootPem}${other.rootPem}`];
  };
  const mgr = new CertManager({ ca: client(), trustDomain: TD, lifetimeSeconds: 600 });
  t.teardown(() => mgr.stop());
  const m = await mgr.material(ID);
  t.is(m.rootsPem, `${server.ca.rootPem}${other.rootPem}`);
  t.is(server.calls[0]?.validityDuration, 600);
  t.is(m.notAfter.getTime() - m.notBefore.getTime(), 660_000, '600 s plus the 60 s backdating');
});

test('a leaf for another identity is rejected', async (t) => {
  const { server, client, csr } = await setup(t);
  const OTHER = 'spiffe://cluster.local/ns/shop/sa/other';
  server.respond = async (_call, ca) => {
    const r = await ca.sign({ csrPem: await createCsr(OTHER, (await generateP256()).keys), identity: OTHER, ttlSeconds: 60 });
    return [...r.chainPem, ...r.rootsPem];
  };
  const err = await t.throwsAsync(client().sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 }), { instanceOf: CaBadResponseError });
  t.is(err?.code, 'AMB_ERR_CA_BAD_RESPONSE');
  t.regex(err?.message ?? '', /issued a certificate for .*other when .*cart was requested/);
});

test('a chain without a root, or without certificates, is a bad response', async (t) => {
  const { server, client, csr } = await setup(t);
  server.respond = async (call, ca) => (await ca.sign({ csrPem: call.csr, identity: ID, ttlSeconds: 60 })).chainPem;
  await t.throwsAsync(client().sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 }), { instanceOf: CaBadResponseError, message: /expected the leaf and at least one root/ });
  server.respond = async () => ['not a pem', 'nor this'];
  await t.throwsAsync(client().sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 }), { instanceOf: CaBadResponseError });
});

test('refusals map to CaRejectedError, server trouble to CaUnavailableError', async (t) => {
  const { server, client, csr } = await setup(t);
  server.failWith = { code: grpc.status.UNAUTHENTICATED, details: 'request authenticate failure' };
  const e1 = await t.throwsAsync(client().sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 }), { instanceOf: CaRejectedError });
  t.regex(e1?.message ?? '', /UNAUTHENTICATED: request authenticate failure.*CA_TRUSTED_NODE_ACCOUNTS/);
  server.failWith = { code: grpc.status.INTERNAL, details: 'signing failed' };
  await t.throwsAsync(client().sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 }), { instanceOf: CaUnavailableError });
});

test('a CA that is down gives CaUnavailableError', async (t) => {
  const { server, client, csr } = await setup(t);
  const ca = client({ timeoutMs: 3000 });
  await server.stop();
  const err = await t.throwsAsync(ca.sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 }), { instanceOf: CaUnavailableError });
  t.is(err?.code, 'AMB_ERR_CA_UNAVAILABLE');
  t.regex(err?.message ?? '', new RegExp(`CA ${server.address.replace(/\./g, '\\.')} is unavailable`));
});

test('a serving certificate not signed by the configured root is refused (CaUnavailableError with a hint)', async (t) => {
  const { client, csr, dir } = await setup(t);
  writeFileSync(join(dir, 'wrong-root.pem'), (await makeServingCert()).rootPem);
  const err = await t.throwsAsync(client({ rootCertFile: join(dir, 'wrong-root.pem') }).sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 }),
    { instanceOf: CaUnavailableError });
  t.regex(err?.message ?? '', /wrong-root\.pem sign its serving certificate/);
});

test('missing token or root files are config errors naming the file', async (t) => {
  const { client, csr, dir } = await setup(t);
  await t.throwsAsync(client({ tokenFile: join(dir, 'nope') }).sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 }),
    { instanceOf: CaConfigError, message: /nope/ });
  writeFileSync(join(dir, 'empty'), '  \n');
  await t.throwsAsync(client({ tokenFile: join(dir, 'empty') }).sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 }),
    { instanceOf: CaConfigError, message: /empty/ });
  await t.throwsAsync(client({ rootCertFile: join(dir, 'missing-root.pem') }).sign({ csrPem: await csr(), identity: ID, ttlSeconds: 60 }),
    { instanceOf: CaConfigError, message: /missing-root\.pem/ });
});

test('splitIstioChain: intermediates before the last element, every PEM in the last element is a root', async (t) => {
  const [a, b, c, d] = await Promise.all([1, 2, 3, 4].map(async () => (await BuiltinCa.ephemeral({ trustDomain: TD })).rootPem));
  t.deepEqual(splitIstioChain([`${a}`, `${b}${c}`, `${d}`]), { chainPem: [a, b, c], rootsPem: [d] });
  t.deepEqual(splitIstioChain([`${a}`, `${c}\n${d}`]), { chainPem: [a], rootsPem: [c, d] });
  t.throws(() => splitIstioChain([`${a}${b}`]), { instanceOf: CaBadResponseError });
  t.throws(() => splitIstioChain([]), { instanceOf: CaBadResponseError });
  t.throws(() => splitIstioChain(['', `${a}`]), { instanceOf: CaBadResponseError, message: /no leaf/ });
});
