// One HBONE CONNECT request, both ends: the headers a client sends with it, the server's decision on one that arrived,
// and the error for an answer other than 200. Pure (but for the random trace ids), independent of who carries the bytes.
import { randomBytes } from 'node:crypto';
import { AmbientError } from '../errors.js';
import { formatHostPort } from '../protocol/address.js';
import { AGENT_PORTS } from '../redirect/constants.js';
import { parseAuthority } from './tls.js';

/** The peer answered the CONNECT with something other than 200. */
export class HboneStatusError extends AmbientError<'AMB_ERR_HBONE_STATUS'> {
  constructor(readonly status: number, authority: string) {
    super('AMB_ERR_HBONE_STATUS', `HBONE CONNECT ${authority} answered ${status}`);
  }
}

/** Random bytes drawn in bulk: one syscall per 4 KiB instead of two per CONNECT. */
let entropy = Buffer.alloc(0);
let entropyAt = 0;
function randomHex(bytes: number): string {
  if (entropyAt + bytes > entropy.length) {
    entropy = randomBytes(4096);
    entropyAt = 0;
  }
  const hex = entropy.toString('hex', entropyAt, entropyAt + bytes);
  entropyAt += bytes;
  return hex;
}

/**
 * The headers of one CONNECT besides `:method` and `:authority`: who asked (`forwarded: for=`, plus `host=` the Service
 * host name when the app addressed a Service, as ztunnel sends it), the source's baggage, and a fresh trace id. An IPv6
 * source is `for="[fd00::5]:41000"`, bracketed and quoted as RFC 7239 writes it.
 */
export function connectHeaders(src: { ip: string; port: number }, baggage: string, serviceHost?: string): Record<string, string> {
  return {
    forwarded: `for="${formatHostPort(src.ip, src.port)}"${serviceHost ? `;host=${serviceHost}` : ''}`,
    baggage,
    traceparent: `00-${randomHex(16)}-${randomHex(8)}-00`,
  };
}

/** The `:authority` of a CONNECT to `address:port`: `10.244.1.5:8080`, or `[fd00::5]:8080` for IPv6. */
export function connectAuthority(address: string, port: number): string {
  return formatHostPort(address, port);
}

/** What the server decided for one CONNECT request. Pure. */
export type InboundDecision = { upstream: { host: string; port: number } } | { status: 400 | 503; reason: string };

/** A CONNECT to one of this pod's own IPs (any textual form of it; the upstream host comes back canonical), on a port that is not the agent's; anything else is refused (never an open proxy). */
export function decideInbound(method: string | undefined, authority: string | undefined, podIps: readonly string[]): InboundDecision {
  if (method !== 'CONNECT') return { status: 400, reason: `method ${method ?? '(none)'} is not CONNECT` };
  const target = parseAuthority(authority);
  if (!target) return { status: 400, reason: `bad :authority ${JSON.stringify(authority)}` };
  if (!podIps.includes(target.host)) return { status: 400, reason: `:authority ${target.host} is not this pod (${podIps.join(', ')})` };
  if (AGENT_PORTS.includes(target.port)) return { status: 503, reason: `port ${target.port} is reserved for the agent` };
  return { upstream: target };
}
