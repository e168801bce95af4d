// TLS policy of HBONE, in one place: TLS 1.3 only, AES-GCM suites, ALPN h2, no SNI, SPIFFE URI SAN checks both ways.
// Pure helpers that read identities off peer certificates and parse a CONNECT's :authority.
import type { PeerCertificate } from 'node:tls';
import { parseSpiffeId } from '../identity/spiffe.js';

export const HBONE_CIPHERSUITES = 'TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256';
export const HBONE_ALPN = ['h2'];

/** URI SANs of a certificate, from Node's `subjectaltname` string ("URI:spiffe://..., DNS:x"). */
export function uriSans(subjectaltname: string | undefined): string[] {
  if (!subjectaltname) return [];
  return subjectaltname
    .split(/,\s*/)
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4));
}

/** The SPIFFE identity a peer presented (its single spiffe:// URI SAN), or undefined. */
export function peerIdentity(cert: Pick<PeerCertificate, 'subjectaltname'> | undefined): string | undefined {
  const ids = uriSans(cert?.subjectaltname).filter((u) => u.startsWith('spiffe://'));
  return ids.length === 1 ? ids[0] : undefined;
}

/**
 * Client-side check that replaces Node's hostname check: the server must present exactly the expected SPIFFE identity.
 * Returns an Error (as checkServerIdentity must) or undefined.
 */
export function checkServerSpiffe(expected: string, cert: Pick<PeerCertificate, 'subjectaltname'>): Error | undefined {
  const got = peerIdentity(cert);
  if (got === expected) return undefined;
  return Object.assign(new Error(`HBONE peer presented identity ${got ?? '(none)'} but ${expected} was expected`), { code: 'AMB_ERR_PEER_IDENTITY' });
}

/** Server-side check: the client's identity must be a SPIFFE ID in our own trust domain. */
export function checkClientSpiffe(trustDomain: string, cert: Pick<PeerCertificate, 'subjectaltname'> | undefined): string | Error {
  const id = peerIdentity(cert);
  if (!id) return new Error('client certificate has no single SPIFFE URI SAN');
  let td: string;
  try {
    td = parseSpiffeId(id).trustDomain;
  } catch (err) {
    return err as Error;
  }
  if (td !== trustDomain) return new Error(`client identity ${id} is not in trust domain ${trustDomain}`);
  return id;
}

/** Parses an HBONE :authority "ip:port" (IPv4 or [IPv6]:port). */
export function parseAuthority(authority: string | undefined): { host: string; port: number } | undefined {
  if (!authority) return undefined;
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(authority);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: (m[1] ?? m[2]) as string, port };
}
