// SPIFFE workload identities in Istio's shape, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`: build and parse.
// Pure. The parser is as strict as ztunnel's (exactly 5 path segments, `ns` and `sa` in place) plus the SPIFFE spec's charset.
import { InvalidSpiffeIdError } from './errors.js';

export interface SpiffeId {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

const SCHEME = 'spiffe://';
/** SPIFFE spec: trust domain names are lowercase letters, digits, dots, dashes and underscores. */
const TRUST_DOMAIN = /^[a-z0-9._-]+$/;
/** SPIFFE spec: path segments are letters, digits, dots, dashes and underscores, and not `.` or `..`. */
const SEGMENT = /^[A-Za-z0-9._-]+$/;
const MAX_ID_BYTES = 2048;
const MAX_TRUST_DOMAIN = 255;

/** Parses an identity; throws InvalidSpiffeIdError naming the first rule it breaks. */
export function parseSpiffeId(uri: string): SpiffeId {
  const bad = (reason: string): never => { throw new InvalidSpiffeIdError(uri, reason); };
  if (Buffer.byteLength(uri) > MAX_ID_BYTES) bad(`longer than ${MAX_ID_BYTES} bytes`);
  if (!uri.startsWith(SCHEME)) bad('must start with "spiffe://"');
  const rest = uri.slice(SCHEME.length);
  if (/[?#]/.test(rest)) bad('query and fragment are not allowed');
  const parts = rest.split('/');
  const [td, nsKey, ns, saKey, sa] = parts;
  if (td === undefined || td === '') return bad('missing trust domain');
  if (td.length > MAX_TRUST_DOMAIN) bad(`trust domain longer than ${MAX_TRUST_DOMAIN} characters`);
  if (!TRUST_DOMAIN.test(td)) bad('trust domain may hold only lowercase letters, digits, ".", "-" and "_" (no port or user info)');
  if (parts.length !== 5) bad(`expected 5 path segments <td>/ns/<namespace>/sa/<service-account>, got ${parts.length}`);
  if (nsKey !== 'ns') bad('second segment must be "ns"');
  if (saKey !== 'sa') bad('fourth segment must be "sa"');
  if (ns === undefined || sa === undefined) return bad('missing namespace or service account');
  for (const [what, seg] of [['namespace', ns], ['service account', sa]] as const) {
    if (seg === '') bad(`empty ${what}`);
    if (seg === '.' || seg === '..') bad(`${what} may not be "." or ".."`);
    if (!SEGMENT.test(seg)) bad(`${what} may hold only letters, digits, ".", "-" and "_"`);
  }
  return { trustDomain: td, namespace: ns, serviceAccount: sa };
}

/** Builds an identity; throws InvalidSpiffeIdError when the parts would not parse back to themselves. */
export function spiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  const id = `${SCHEME}${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
  parseSpiffeId(id);
  return id;
}

/** The trust domain of a valid identity. */
export function trustDomainOf(uri: string): string {
  return parseSpiffeId(uri).trustDomain;
}

/** Checks a trust domain name on its own (config values); throws InvalidSpiffeIdError naming the rule it breaks. */
export function checkTrustDomain(td: string): string {
  if (td === '') throw new InvalidSpiffeIdError(td, 'empty trust domain');
  if (td.length > MAX_TRUST_DOMAIN) throw new InvalidSpiffeIdError(td, `trust domain longer than ${MAX_TRUST_DOMAIN} characters`);
  if (!TRUST_DOMAIN.test(td)) throw new InvalidSpiffeIdError(td, 'trust domain may hold only lowercase letters, digits, ".", "-" and "_"');
  return td;
}

/** True when the string is a valid identity; for guards that must not throw. */
export function isSpiffeId(uri: string): boolean {
  try {
    parseSpiffeId(uri);
    return true;
  } catch {
    return false;
  }
}
