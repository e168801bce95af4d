// X.509 helpers that need @peculiar/x509: SPIFFE CSRs, SAN reading, the issued leaf's check; re-exports pki-node.ts.
// Loaded on first use through x509-lazy.ts (~200 ms of module loading); @peculiar/x509 resolves its algorithms through
// tsyringe, which needs the Reflect metadata API loaded first.
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { CaBadResponseError } from './errors.js';
import { ECDSA_SHA256 } from './pki-node.js';

// @peculiar/x509 signs through WebCrypto; Node's implementation is the only one we use.
x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export { x509 };
export * from './pki-node.js';

/** A CSR in the shape ztunnel sends: empty subject, one critical URI SAN (the identity), ECDSA with SHA-256. */
export async function createCsr(identity: string, keys: CryptoKeyPair): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: identity }], true)],
  });
  return csr.toString('pem');
}

/** The subject alternative names of a certificate or CSR as {type, value}; throws when the extension cannot be parsed. */
export function subjectAltNames(obj: x509.X509Certificate | x509.Pkcs10CertificateRequest): Array<{ type: string; value: string }> {
  const all = obj.extensions.filter((e) => e.type === '2.5.29.17');
  return all.flatMap((e) => new x509.SubjectAlternativeNameExtension(e.rawData).names.items.map((n) => ({ type: n.type, value: n.value })));
}

/** The single URI SAN of a certificate, or a reason why there is not exactly one SAN that is a URI. */
export function soleUriSan(obj: x509.X509Certificate | x509.Pkcs10CertificateRequest): { uri: string } | { reason: string } {
  let sans: Array<{ type: string; value: string }>;
  try {
    sans = subjectAltNames(obj);
  } catch (err) {
    return { reason: `unparsable subject alternative names (${err instanceof Error ? err.message : String(err)})` };
  }
  const [first] = sans;
  if (sans.length !== 1 || first === undefined) return { reason: `expected exactly one SAN, found ${sans.length}` };
  if (first.type !== 'url') return { reason: `expected a URI SAN, found ${first.type}` };
  return { uri: first.value };
}

/** The leaf of an issued chain, parsed, after checking that its one URI SAN is `identity` (CaBadResponseError if not). */
export function checkLeafIdentity(identity: string, leafPem: string | undefined): x509.X509Certificate {
  if (leafPem === undefined) throw new CaBadResponseError(`the CA returned no certificate for ${identity}`);
  let leaf: x509.X509Certificate;
  try {
    leaf = new x509.X509Certificate(leafPem);
  } catch (err) {
    throw new CaBadResponseError(`the CA returned an unparsable certificate for ${identity}`, { cause: err });
  }
  const san = soleUriSan(leaf);
  if ('reason' in san) throw new CaBadResponseError(`the certificate the CA issued for ${identity} is unusable: ${san.reason}`);
  if (san.uri !== identity) {
    throw new CaBadResponseError(`the CA issued a certificate for ${san.uri} when ${identity} was requested (is ImpersonatedIdentity allowed for this node's service account?)`);
  }
  return leaf;
}
