// Client certificates that our CA would never issue (it checks every identity), signed with the testbed's root key as a
// compromised or careless issuer of the same root could: e.g. a URI SAN in our trust domain that is no ns/sa identity.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT_CERT_FILE, ROOT_KEY_FILE } from '../../agent/src/identity/builtin-ca.js';
import { ECDSA_SHA256, generateP256, importP256, randomSerialHex, x509 } from '../../agent/src/identity/x509-util.js';
import type { ClientCredential } from './certs.js';

/** A one-hour leaf with exactly one URI SAN `uri`, signed by the root in `caDir`; written as `<name>-cert.pem` / `-key.pem`. */
export async function issueRogueCredential(caDir: string, uri: string, dir: string, name: string): Promise<ClientCredential> {
  const root = new x509.X509Certificate(await readFile(join(caDir, ROOT_CERT_FILE), 'utf8'));
  const rootKey = await importP256(await readFile(join(caDir, ROOT_KEY_FILE), 'utf8'));
  const kp = await generateP256();
  const now = Date.now();
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerialHex(),
    subject: new x509.Name([]),
    issuer: root.subjectName,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 3600_000),
    signingAlgorithm: ECDSA_SHA256,
    publicKey: kp.keys.publicKey,
    signingKey: rootKey.keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: uri }], true),
    ],
  });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const certPath = join(dir, `${name}-cert.pem`);
  const keyPath = join(dir, `${name}-key.pem`);
  const certPem = leaf.toString('pem') + '\n';
  await writeFile(certPath, certPem, { mode: 0o600 });
  await writeFile(keyPath, kp.keyPem, { mode: 0o600 });
  return { identity: uri, certPath, keyPath, certPem };
}
