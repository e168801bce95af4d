// TLS policy of HBONE, in one place: TLS 1.3 only, AES-GCM suites, ALPN h2, no SNI (the native relay applies it; the
// suites and ALPN reach it through settings.ts). Also the TypeScript side of the one SPIFFE rule, and :authority parsing.
import { parseSpiffeId } from '../identity/spiffe.js';
import { parseIpPort } from '../protocol/address.js';

/** TLS 1.3 suites, OpenSSL names joined by ':' (the relay is TLS 1.3 only). */
export const HBONE_CIPHERSUITES = 'TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256';
/** The one ALPN protocol of HBONE: HTTP/2 over TLS. */
export const HBONE_ALPN = 'h2';

/**
 * The rule a client's identity must meet on 15008: a valid SPIFFE ID (parseSpiffeId) in `trustDomain`. The relay applies
 * the same rule in C (agent/native/hbone-relay/tls.c spiffe_check); test/unit/hbone-spiffe-rule.test.ts runs one table
 * of cases against both. Returns the rule broken, or undefined when `id` is accepted. Pure.
 */
export function spiffeRuleBroken(id: string, trustDomain: string): string | undefined {
  let td: string;
  try {
    td = parseSpiffeId(id).trustDomain;
  } catch (err) {
    return (err as Error).message;
  }
  return td === trustDomain ? undefined : `client identity ${id} is not in trust domain ${trustDomain}`;
}

/** Parses an HBONE :authority "ip:port" (IPv4 or [IPv6]:port; the host canonical): the shared parser. */
export function parseAuthority(authority: string | undefined): { host: string; port: number } | undefined {
  return parseIpPort(authority);
}
