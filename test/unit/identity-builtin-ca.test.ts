// Unit tests for the built-in CA: the root is created once, persisted and shared (also across processes racing on one
// directory); leaves have the exact shape ztunnel expects and verify against the root; bad CSRs are refused.
import test from 'ava';
import { spawn } from 'node:child_process';
import { X509Certificate, createPublicKey } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BuiltinCa, ROOT_CERT_FILE, ROOT_KEY_FILE } from '../../agent/src/identity/builtin-ca.js';
import { CaConfigError, CaRejectedError } from '../../agent/src/identity/errors.js';
import { ECDSA_SHA256, createCsr, generateP256, x509 } from '../../agent/src/identity/x509-util.js';

const TD = 'cluster.local';
const ID = 'spiffe://cluster.local/ns/shop/sa/cart';

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'amb-ca-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function csrWith(names: Array<{ type: 'url' | 'dns'; value: string }>): Promise<string> {
  const { keys } = await generateP256();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys, signingAlgorithm: ECDSA_SHA256,
    extensions: names.length ? [new x509.SubjectAlternativeNameExtension(names, true)] : [],
  });
  return csr.toString('pem');
}

test('open creates the root once (key 0600) and reopening reuses it', async (t) => {
  const dir = tempDir(t);
  const a = await BuiltinCa.open(dir, { trustDomain: TD });
  t.is(statSync(join(dir, ROOT_KEY_FILE)).mode & 0o777, 0o600);
  t.is(readFileSync(join(dir, ROOT_CERT_FILE), 'utf8'), a.rootPem);
  const b = await BuiltinCa.open(dir, { trustDomain: TD });
  t.is(b.rootPem, a.rootPem);
  const root = new X509Certificate(a.rootPem);
  t.true(root.ca);
  t.is(root.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  t.true(root.verify(root.publicKey));
  // A leaf from the reopened CA chains to the root the first one wrote.
  const { keys } = await generateP256();
  const res = await b.sign({ csrPem: await createCsr(ID, keys), identity: ID, ttlSeconds: 3600 });
  t.true(new X509Certificate(res.chainPem[0] ?? '').verify(root.publicKey));
});

test('concurrent opens on one directory end with one root', async (t) => {
  const dir = tempDir(t);
  const cas = await Promise.all(Array.from({ length: 8 }, () => BuiltinCa.open(dir, { trustDomain: TD })));
  const roots = new Set(cas.map((c) => c.rootPem));
  t.is(roots.size, 1);
  t.true(roots.has(readFileSync(join(dir, ROOT_CERT_FILE), 'utf8')));
  t.deepEqual(readdirNames(dir), [ROOT_CERT_FILE, ROOT_KEY_FILE], 'no temporary files left behind');
});

test('separate processes racing on one directory end with one root', async (t) => {
  const dir = tempDir(t);
  const mod = fileURLToPath(new URL('../../agent/src/identity/builtin-ca.ts', import.meta.url));
  const script = `const { BuiltinCa } = await import(${JSON.stringify(mod)});
    const ca = await BuiltinCa.open(${JSON.stringify(dir)}, { trustDomain: 'cluster.local' });
    process.stdout.write(ca.rootPem);`;
  const outs = await Promise.all(Array.from({ length: 3 }, () => new Promise<string>((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`child exited ${code}: ${err}`))));
  })));
  t.is(new Set(outs).size, 1);
  t.is(outs[0], readFileSync(join(dir, ROOT_CERT_FILE), 'utf8'));
});

test('a key left without its certificate (creator died) gets a certificate for that key', async (t) => {
  const dir = tempDir(t);
  const { keyPem } = await generateP256();
  writeFileSync(join(dir, ROOT_KEY_FILE), keyPem, { mode: 0o600 });
  const ca = await BuiltinCa.open(dir, { trustDomain: TD });
  const want = createPublicKey(keyPem).export({ type: 'spki', format: 'der' });
  t.deepEqual(new X509Certificate(ca.rootPem).publicKey.export({ type: 'spki', format: 'der' }), want);
});

test('a certificate that does not belong to the key is refused with a hint', async (t) => {
  const dir = tempDir(t);
  await BuiltinCa.open(dir, { trustDomain: TD });
  writeFileSync(join(dir, ROOT_KEY_FILE), (await generateP256()).keyPem, { mode: 0o600 });
  const err = await t.throwsAsync(BuiltinCa.open(dir, { trustDomain: TD }), { instanceOf: CaConfigError, message: /does not belong.*remove both/ });
  t.is(err?.code, 'AMB_ERR_CA_CONFIG');
});

test('an unusable key file is a config error, not a crash', async (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, ROOT_KEY_FILE), 'not a key', { mode: 0o600 });
  await t.throwsAsync(BuiltinCa.open(dir, { trustDomain: TD }), { instanceOf: CaConfigError, message: /P-256/ });
});

test('the leaf has URI SAN only, no subject, the right usages, a random serial and backdated notBefore', async (t) => {
  const now = Math.floor(Date.now() / 1000) * 1000;
  const ca = await BuiltinCa.ephemeral({ trustDomain: TD, now: () => now });
  const { keys } = await generateP256();
  const csrPem = await createCsr(ID, keys);
  const [r1, r2] = await Promise.all([1, 2].map(() => ca.sign({ csrPem, identity: ID, ttlSeconds: 7200 })));
  const leafPem = r1?.chainPem[0] ?? '';
  t.is(r1?.chainPem.length, 1);
  t.deepEqual(r1?.rootsPem, [ca.rootPem]);
  const leaf = new x509.X509Certificate(leafPem);
  t.is(leaf.subject, '');
  t.is(leaf.notBefore.getTime(), now - 60_000);
  t.is(leaf.notAfter.getTime(), now + 7200_000);
  const san = leaf.getExtension(x509.SubjectAlternativeNameExtension);
  t.true(san?.critical);
  t.deepEqual(san?.names.toJSON(), [{ type: 'url', value: ID }]);
  const ku = leaf.getExtension(x509.KeyUsagesExtension);
  t.is(ku?.usages, x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment);
  t.deepEqual([...(leaf.getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? [])], [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]);
  t.false(leaf.getExtension(x509.BasicConstraintsExtension)?.ca);
  t.not(leaf.serialNumber, new x509.X509Certificate(r2?.chainPem[0] ?? '').serialNumber);
  // Verifies against the root two ways: node:crypto, and @peculiar/x509's chain builder.
  const root = new X509Certificate(ca.rootPem);
  t.true(new X509Certificate(leafPem).verify(root.publicKey));
  t.true(new X509Certificate(leafPem).checkIssued(root));
  const chain = await new x509.X509ChainBuilder({ certificates: [new x509.X509Certificate(ca.rootPem)] }).build(leaf);
  t.is(chain.length, 2);
  t.is(chain[1]?.toString('pem'), new x509.X509Certificate(ca.rootPem).toString('pem'));
});

test('lifetime is shortened to the maximum', async (t) => {
  const now = Math.floor(Date.now() / 1000) * 1000;
  const ca = await BuiltinCa.ephemeral({ trustDomain: TD, now: () => now, maxTtlSeconds: 600 });
  const res = await ca.sign({ csrPem: await csrWith([{ type: 'url', value: ID }]), identity: ID, ttlSeconds: 86_400 });
  t.is(new x509.X509Certificate(res.chainPem[0] ?? '').notAfter.getTime(), now + 600_000);
});

const REFUSED: Array<[string, () => Promise<{ csrPem: string; identity: string; ttlSeconds?: number }>, RegExp]> = [
  ['a CSR for another identity', async () => ({ csrPem: await csrWith([{ type: 'url', value: 'spiffe://cluster.local/ns/shop/sa/other' }]), identity: ID }), /names .*other, not the requested/],
  ['a CSR with an extra DNS SAN', async () => ({ csrPem: await csrWith([{ type: 'url', value: ID }, { type: 'dns', value: 'evil.example' }]), identity: ID }), /exactly one SAN, found 2/],
  ['a CSR with two URI SANs', async () => ({ csrPem: await csrWith([{ type: 'url', value: ID }, { type: 'url', value: `${ID}x` }]), identity: ID }), /exactly one SAN, found 2/],
  ['a CSR with only a DNS SAN', async () => ({ csrPem: await csrWith([{ type: 'dns', value: 'a.example' }]), identity: ID }), /expected a URI SAN/],
  ['a CSR without SANs', async () => ({ csrPem: await csrWith([]), identity: ID }), /exactly one SAN, found 0/],
  ['an identity from another trust domain', async () => {
    const other = 'spiffe://other.org/ns/shop/sa/cart';
    return { csrPem: await csrWith([{ type: 'url', value: other }]), identity: other };
  }, /outside this CA's trust domain/],
  ['an identity that is not a SPIFFE ID', async () => ({ csrPem: await csrWith([{ type: 'url', value: 'https://x' }]), identity: 'https://x' }), /cannot issue/],
  ['a bad signature', async () => ({ csrPem: tamper(await csrWith([{ type: 'url', value: ID }])), identity: ID }), /signature does not verify/],
  ['garbage instead of a CSR', async () => ({ csrPem: 'hello', identity: ID }), /not a PEM PKCS#10/],
  ['a zero lifetime', async () => ({ csrPem: await csrWith([{ type: 'url', value: ID }]), identity: ID, ttlSeconds: 0 }), /positive/],
];

for (const [what, make, message] of REFUSED) {
  test(`refuses ${what}`, async (t) => {
    const ca = await BuiltinCa.ephemeral({ trustDomain: TD });
    const req = await make();
    const err = await t.throwsAsync(ca.sign({ ttlSeconds: 3600, ...req }), { instanceOf: CaRejectedError, message });
    t.is(err?.code, 'AMB_ERR_CA_REJECTED');
  });
}

/** Flips a bit in the last byte of the DER, inside the signature's s value. */
function tamper(pem: string): string {
  const der = Buffer.from(x509.PemConverter.decodeFirst(pem));
  der[der.length - 1] = (der[der.length - 1] ?? 0) ^ 0x01;
  return x509.PemConverter.encode(der, 'CERTIFICATE REQUEST');
}

function readdirNames(dir: string): string[] {
  return readdirSync(dir).sort();
}
