// X.509 helpers shared by the CAs and the certificate manager: P-256 keys, SPIFFE CSRs, PEM splitting, chain checks.
// All parsing and signing goes through @peculiar/x509 and node:crypto; nothing here hand-encodes ASN.1.
// @peculiar/x509 resolves its algorithms through tsyringe, which needs the Reflect metadata API loaded first.
import 'reflect-metadata';
import { X509Certificate as NodeX509, randomBytes, webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { CaBadResponseError } from './errors.js';

// @peculiar/x509 signs through WebCrypto; Node's implementation is the only one we use.
x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export { x509 };

export const ECDSA_P256: EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
export const ECDSA_SHA256: EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };

export interface KeyPair {
  keys: CryptoKeyPair;
  /** PKCS#8 PEM ("PRIVATE KEY"), what node:tls takes as `key`. */
  keyPem: string;
}

export async function generateP256(): Promise<KeyPair> {
  const keys = await webcrypto.subtle.generateKey(ECDSA_P256, true, ['sign', 'verify']) as CryptoKeyPair;
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  return { keys, keyPem: x509.PemConverter.encode(pkcs8, 'PRIVATE KEY') };
}

export async function importP256(keyPem: string): Promise<KeyPair> {
  const der = x509.PemConverter.decodeFirst(keyPem);
  const privateKey = await webcrypto.subtle.importKey('pkcs8', der, ECDSA_P256, true, ['sign']);
  // WebCrypto cannot derive the public half of an imported private key; the JWK of an EC private key carries it.
  const jwk = await webcrypto.subtle.exportKey('jwk', privateKey);
  const { d: _d, key_ops: _ops, ...pub } = jwk;
  const publicKey = await webcrypto.subtle.importKey('jwk', pub, ECDSA_P256, true, ['verify']);
  return { keys: { privateKey, publicKey } as CryptoKeyPair, keyPem };
}

/** A CSR in the shape ztunnel sends: empty subject, one critical URI SAN (the identity), ECDSA with SHA-256. */
export async function createCsr(identity: string, keys: CryptoKeyPair): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: identity }], true)],
  });
  return csr.toString('pem');
}

/** Every certificate in a PEM text (several may be concatenated), each normalised to one PEM block with a final newline. */
export function splitPemCertificates(text: string): string[] {
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((b) => `${b}\n`);
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

/** 16 random bytes, positive and without a leading zero byte, as hex (RFC 5280: at most 20 octets, non-negative). */
export function randomSerialHex(): string {
  const b = randomBytes(16);
  b[0] = ((b[0] ?? 0) & 0x7f) | 0x40;
  return b.toString('hex');
}

/**
 * Why `chain` (leaf first) does not lead to one of `roots`, or undefined when every certificate is signed by the next
 * and the last one by a root (or is a root). Signatures and names only: validity dates are the caller's business.
 */
export function chainProblem(chain: readonly string[], roots: readonly string[]): string | undefined {
  let certs: NodeX509[];
  let anchors: NodeX509[];
  try {
    certs = chain.map((p) => new NodeX509(p));
    anchors = roots.map((p) => new NodeX509(p));
  } catch (err) {
    return `unparsable certificate (${err instanceof Error ? err.message : String(err)})`;
  }
  if (certs.length === 0) return 'empty chain';
  if (anchors.length === 0) return 'no root certificates';
  for (let i = 0; i + 1 < certs.length; i++) {
    const [child, parent] = [certs[i], certs[i + 1]];
    if (!child || !parent || !child.checkIssued(parent) || !child.verify(parent.publicKey)) {
      return `certificate ${i} of the chain is not signed by certificate ${i + 1}`;
    }
  }
  const last = certs[certs.length - 1];
  if (!last) return 'empty chain';
  const anchored = anchors.some((r) => r.fingerprint256 === last.fingerprint256 || (last.checkIssued(r) && last.verify(r.publicKey)));
  return anchored ? undefined : 'the chain does not lead to any of the roots the CA returned';
}

/** SubjectPublicKeyInfo DER of a certificate's key, to compare with the key a CSR was made from. */
export function certSpki(pem: string): Buffer {
  return new NodeX509(pem).publicKey.export({ type: 'spki', format: 'der' });
}

export async function keySpki(publicKey: CryptoKey): Promise<Buffer> {
  return Buffer.from(await webcrypto.subtle.exportKey('spki', publicKey));
}
