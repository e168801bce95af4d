// Key and certificate helpers that need only node:crypto: P-256 keys as PEM, PEM splitting, serials, chain and key
// checks. What the agent's start needs (opening the built-in CA's root); @peculiar/x509 stays unloaded until a CSR.
import { X509Certificate as NodeX509, KeyObject, createPrivateKey, randomBytes, webcrypto } from 'node:crypto';

export const ECDSA_P256: EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
export const ECDSA_SHA256: EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };

export interface KeyPair {
  keys: CryptoKeyPair;
  /** PKCS#8 PEM ("PRIVATE KEY"), what node:tls takes as `key`. */
  keyPem: string;
}

export async function generateP256(): Promise<KeyPair> {
  const keys = await webcrypto.subtle.generateKey(ECDSA_P256, true, ['sign', 'verify']) as CryptoKeyPair;
  const keyPem = KeyObject.from(keys.privateKey).export({ type: 'pkcs8', format: 'pem' }).toString();
  return { keys, keyPem };
}

export async function importP256(keyPem: string): Promise<KeyPair> {
  const der = createPrivateKey({ key: keyPem, format: 'pem' }).export({ type: 'pkcs8', format: 'der' });
  const privateKey = await webcrypto.subtle.importKey('pkcs8', der, ECDSA_P256, true, ['sign']);
  // WebCrypto cannot derive the public half of an imported private key; the JWK of an EC private key carries it.
  const jwk = await webcrypto.subtle.exportKey('jwk', privateKey);
  const { d: _d, key_ops: _ops, ...pub } = jwk;
  const publicKey = await webcrypto.subtle.importKey('jwk', pub, ECDSA_P256, true, ['verify']);
  return { keys: { privateKey, publicKey } as CryptoKeyPair, keyPem };
}

/** Every certificate in a PEM text (several may be concatenated), each normalised to one PEM block with a final newline. */
export function splitPemCertificates(text: string): string[] {
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((b) => `${b}\n`);
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
